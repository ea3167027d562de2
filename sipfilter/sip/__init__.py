"""Sans-IO SIP core: parse and serialize messages, URIs and headers; stream framing; transactions.

Pure functions and objects over bytes: nothing here opens sockets, reads clocks or uses asyncio.
"""

from __future__ import annotations

from sipfilter.sip.errors import ParseError
from sipfilter.sip.headers import (
    BRANCH_COOKIE,
    CSeq,
    Headers,
    MediaType,
    NameAddr,
    Reason,
    RetryAfter,
    Via,
    WarningValue,
)
from sipfilter.sip.message import (
    DEFAULT_LIMITS,
    KNOWN_METHODS,
    REASON_PHRASES,
    Limits,
    Message,
    Request,
    Response,
    parse,
    validate_request,
    validate_response,
)
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
