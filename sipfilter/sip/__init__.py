"""Sans-IO SIP core: parse and serialize messages, URIs and headers; stream framing; transactions.

Pure functions and objects over bytes: nothing here opens sockets, reads clocks or uses asyncio.

Usage (datagram):
    try:
        msg = parse(datagram, limits)          # Request | Response, validated for a B2BUA
    except ParseError as err:                  # err.status / err.reason for a stateless answer,
        if err.should_answer: ...              # err.is_request False/None: drop silently
    msg.vias[0].branch, msg.from_.uri, msg.from_.tag, msg.to, msg.call_id, msg.cseq.seq,
    msg.max_forwards, msg.p_asserted_identities, msg.request_uri (requests)   # lazy, cached
    msg.headers.get("X-Campaign"), msg.headers.insert(0, "Via", "..."), bytes(msg)
Streams: framing.StreamFramer(limits).feed(chunk) -> [Request | Response | ParseError | KeepAlive];
a ParseError with .fatal means: close the connection.
"""

from __future__ import annotations

from sipfilter.sip.errors import ParseError
from sipfilter.sip.header_values import (
    BRANCH_COOKIE,
    CSeq,
    MediaType,
    NameAddr,
    Reason,
    RetryAfter,
    Via,
    WarningValue,
)
from sipfilter.sip.headers import Headers
from sipfilter.sip.message import (
    DEFAULT_LIMITS,
    KNOWN_METHODS,
    Limits,
    Message,
    Request,
    Response,
    parse,
    validate_request,
    validate_response,
)
from sipfilter.sip.status import REASON_PHRASES
from sipfilter.sip.uri import AbsoluteUri, SipUri, TelUri, Uri, parse_uri, uri_equal

__all__ = [
    "BRANCH_COOKIE",
    "DEFAULT_LIMITS",
    "KNOWN_METHODS",
    "REASON_PHRASES",
    "AbsoluteUri",
    "CSeq",
    "Headers",
    "Limits",
    "MediaType",
    "Message",
    "NameAddr",
    "ParseError",
    "Reason",
    "Request",
    "Response",
    "RetryAfter",
    "SipUri",
    "TelUri",
    "Uri",
    "Via",
    "WarningValue",
    "parse",
    "parse_uri",
    "uri_equal",
    "validate_request",
    "validate_response",
]
