"""SIP requests and responses: datagram parsing, serialization, lazy typed accessors, semantic checks.

Sans-IO: bytes in, objects out (and back). No sockets, no clock, no logging; stream framing is framing.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import sipfilter.sip.grammar as g
from sipfilter.sip.errors import ParseError
from sipfilter.sip.header_values import (
    CSeq,
)
from sipfilter.sip.headers import Headers, canonical_name
from sipfilter.sip.status import REASON_PHRASES
from sipfilter.sip.typed_headers import (
    CONTENT_LENGTH,
    TypedHeaders,
    _call_id,
    _contacts,
    _cseq,
    _from,
    _max_forwards,
    _to,
    _vias,
)
from sipfilter.sip.uri import SipUri, TelUri, Uri, parse_uri

__all__ = [
    "DEFAULT_LIMITS",
    "KNOWN_METHODS",
    "Limits",
    "Message",
    "Request",
    "Response",
    "parse",
    "validate_request",
    "validate_response",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits applied while parsing (oversize → 513 for the message, 400 for lines/headers)."""

    max_message_bytes: int = 65536
    max_headers: int = 256
    max_line_bytes: int = 8192


DEFAULT_LIMITS: Final = Limits()

KNOWN_METHODS: Final = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH",
     "INFO", "REFER", "MESSAGE", "UPDATE"}
)  # fmt: skip

_CL: Final = CONTENT_LENGTH


class Message(TypedHeaders):
    """What requests and responses share: headers, body and the lazily parsed, cached typed accessors.

    Accessors parse on first use and raise ParseError on malformed values; the cache lives in `headers`
    and is dropped whenever a header is changed.
    """

    __slots__ = ("body",)

    def __init__(self, headers: Headers | Iterable[tuple[str, str]] | None, body: bytes) -> None:
        if headers is None:
            headers = Headers()
        elif not isinstance(headers, Headers):
            headers = Headers(headers)
        self.headers: Headers = headers
        self.body: bytes = bytes(body)

    # --- serialization -------------------------------------------------------------------------------
    def _start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        """Wire bytes; Content-Length is always written fresh from the body (one line, first position)."""
        body = self.body
        h = self.headers
        lines = [self._start_line()]
        written = False
        for key, (name, value) in zip(h._keys, h._all(), strict=True):
            if key == _CL:
                if written:
                    continue
                value = str(len(body))
                written = True
            lines.append(f"{name}: {value}")
        if not written:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body

    def __bytes__(self) -> bytes:
        return self.serialize()

    def _headers_key(self) -> list[tuple[str, str]]:
        # Content-Length is framing, recomputed on output: equality ignores it.
        h = self.headers
        return [item for k, item in zip(h._keys, h._all(), strict=True) if k != _CL]


class Request(Message):
    """A SIP request. `uri` is the Request-URI text; `request_uri` its parsed (cached) form."""

    __slots__ = ("_ruri", "_uri", "method")

    def __init__(
        self,
        method: str,
        uri: str | Uri,
        headers: Headers | Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        Message.__init__(self, headers, body)
        self.method: str = method
        self._uri: str = uri if isinstance(uri, str) else str(uri)
        self._ruri: Uri | None = None if isinstance(uri, str) else uri

    @property
    def uri(self) -> str:
        return self._uri

    @uri.setter
    def uri(self, value: str | Uri) -> None:
        self._uri = value if isinstance(value, str) else str(value)
        self._ruri = None if isinstance(value, str) else value

    @property
    def request_uri(self) -> Uri:
        """The parsed Request-URI (ParseError if malformed)."""
        ruri = self._ruri
        if ruri is None:
            ruri = self._ruri = parse_uri(self._uri)
        return ruri

    @property
    def is_request(self) -> bool:
        return True

    def _start_line(self) -> str:
        if not g.TOKEN_RE.fullmatch(self.method) or not _URI_TEXT(self._uri):
            raise ValueError(f"invalid request line: {self.method!r} {self._uri!r}")
        return f"{self.method} {self._uri} SIP/2.0"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (
            self.method == other.method
            and self._uri == other._uri
            and self.body == other.body
            and self._headers_key() == other._headers_key()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Request({self.method!r}, {self._uri!r}, {self.headers!r}, {self.body!r})"

    def copy(self) -> Request:
        """An independent copy (headers list copied; typed caches not shared)."""
        return Request(self.method, self._uri, self.headers.copy(), self.body)

    def validate(self) -> Request:
        """Raise ParseError unless a B2BUA can trust this request (see validate_request)."""
        validate_request(self)
        return self


class Response(Message):
    """A SIP response."""

    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        Message.__init__(self, headers, body)
        self.status: int = status
        self.reason: str = REASON_PHRASES.get(status, "") if reason is None else reason

    @property
    def is_request(self) -> bool:
        return False

    @property
    def method(self) -> str:
        """The method of the request this answers (from CSeq)."""
        return self.cseq.method

    def _start_line(self) -> str:
        if not 100 <= self.status <= 699 or "\r" in self.reason or "\n" in self.reason:
            raise ValueError(f"invalid status line: {self.status!r} {self.reason!r}")
        return f"SIP/2.0 {self.status} {self.reason}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (
            self.status == other.status
            and self.reason == other.reason
            and self.body == other.body
            and self._headers_key() == other._headers_key()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Response({self.status!r}, {self.reason!r}, {self.headers!r}, {self.body!r})"

    def copy(self) -> Response:
        return Response(self.status, self.reason, self.headers.copy(), self.body)

    def validate(self) -> Response:
        validate_response(self)
        return self


def _new_request(method: str, uri: str, headers: Headers, body: bytes) -> Request:
    # The parser's constructor (inputs already checked). Not Request.__new__ plus stores, which mypyc cannot
    # compile: as plain Python that costs more a message than this call (bench/parse.py).
    return Request(method, uri, headers, body)


_URI_TEXT_RE: Final = re.compile(r"[^\s\x00-\x1f\x7f]+")  # the uri group of REQUEST_LINE_RE
_URI_TEXT: Final = _URI_TEXT_RE.fullmatch


# --- semantic validation ---------------------------------------------------------------------------------
def validate_request(req: Request) -> None:
    """What a B2BUA must be able to trust before acting on a request (RFC 3261 §8.2, §16.3).

    Raises ParseError: 400 (missing/duplicated Call-ID, From, To, CSeq, Max-Forwards, Via; malformed
    values; CSeq method mismatch; headers in the Request-URI), 501 (unknown method whose CSeq mismatches),
    416 (Request-URI scheme other than sip, sips, tel). RFC 2543 leftovers (no branch, no tag) pass.
    """
    ruri = req.request_uri
    if isinstance(ruri, SipUri):
        if ruri.headers:
            raise ParseError("Headers not allowed in Request-URI")
    elif not isinstance(ruri, TelUri):
        raise ParseError("Unsupported URI Scheme", 416)
    _validate_common(req)
    h = req.headers
    cache = h._cache
    cseq: CSeq = cache["cseq"]  # parsed by _validate_common
    if cseq.method != req.method:
        if req.method not in KNOWN_METHODS:
            raise ParseError("Not Implemented", 501)
        raise ParseError("CSeq method does not match request method")
    if cseq.seq > 2**31 - 1:
        raise ParseError("CSeq number too large")
    # The accessors' work, done here without their call overhead (same cache keys, same order).
    if "max-forwards" not in cache:
        cache["max-forwards"] = _max_forwards(h)
    if "contact" not in cache:
        cache["contact"] = _contacts(h)  # also rejects '*' mixed with addresses


def validate_response(resp: Response) -> None:
    """What a B2BUA must trust before matching a response: one From/To/Call-ID/CSeq, parseable Vias."""
    _validate_common(resp)


def _validate_common(msg: Message) -> None:
    # What the vias/from_/to/call_id/cseq accessors do, in this order, filling the same cache.
    h = msg.headers
    cache = h._cache
    vias = cache.get("via")
    if vias is None:
        vias = cache["via"] = _vias(h)
    if not vias:
        raise ParseError("Missing Via header")
    if "from" not in cache:
        cache["from"] = _from(h)
    if "to" not in cache:
        cache["to"] = _to(h)
    if "call-id" not in cache:
        cache["call-id"] = _call_id(h)
    if "cseq" not in cache:
        cache["cseq"] = _cseq(h)


# --- parsing ---------------------------------------------------------------------------------------------
def parse(data: bytes, limits: Limits | None = None, *, validate: bool = True) -> Request | Response:
    """Parse one message from a datagram (or one framed stream message).

    Octets after Content-Length are discarded; without Content-Length the body is the rest of the data.
    With `validate` (default) the B2BUA's semantic checks run too (validate_request/validate_response).
    Raises ParseError; its `is_request` says whether to answer (request) or drop (response/unknown).
    """
    lim = DEFAULT_LIMITS if limits is None else limits
    data = bytes(data)
    n = len(data)
    is_req: bool | None = None if n < 4 else data[:4] != b"SIP/"
    if n > lim.max_message_bytes:
        raise ParseError("Message Too Large", 513, is_request=is_req)
    start = 0
    # RFC 3261 §7.5: CRLFs before the start line are ignored.
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        # A datagram may end without the empty line (RFC 4475 baddn): the headers run to the end.
        body_start = n
        end = n - 2 if data.endswith(b"\r\n") else n
    else:
        body_start = end + 4
    if start >= end:
        raise ParseError("Empty message", is_request=None)
    text = data[start:end].decode("utf-8", "surrogateescape")
    first, _, block = text.partition("\r\n")
    if block[:1] in (" ", "\t"):
        raise ParseError("Malformed header line", is_request=not first.startswith("SIP/"))
    method: str | None = None
    ruri_text = ""
    status = 0
    reason = ""
    if first[:4].upper() == "SIP/":
        is_req = False
        code = first[8:11]
        # The usual "SIP/2.0 NNN phrase": exactly what STATUS_LINE_RE would capture, without it.
        if (
            first.startswith("SIP/2.0 ")
            and code.isascii()
            and code.isdigit()
            and len(code) == 3
            and (len(first) == 11 or (first[11] == " " and "\r" not in first and "\n" not in first))
        ):
            reason = first[12:]
        else:
            sm = g.STATUS_LINE_RE.fullmatch(first)
            if sm is None:
                raise ParseError("Malformed status line", is_request=False)
            if sm.group("version") != "2.0":
                raise ParseError("Version Not Supported", 505, is_request=False)
            code = sm.group("status")
            reason = sm.group("reason") or ""
        if len(code) != 3 or not 100 <= int(code) <= 699:
            raise ParseError("Invalid status code", is_request=False)
        status = int(code)
    else:
        is_req = True
        parts = first.split(" ")
        # The usual "METHOD uri SIP/2.0": exactly what REQUEST_LINE_RE would capture, without it.
        if len(parts) == 3 and parts[2] == "SIP/2.0" and parts[0] in KNOWN_METHODS and _URI_TEXT(parts[1]):
            method, ruri_text = parts[0], parts[1]
        else:
            rm = g.REQUEST_LINE_RE.fullmatch(first)
            if rm is None:
                word = first.partition(" ")[0]
                method = word if g.TOKEN_RE.fullmatch(word) else None
                raise ParseError("Malformed request line", is_request=True, method=method)
            method, ruri_text, version = rm.groups()
            if version != "2.0":
                raise ParseError("Version Not Supported", 505, is_request=True, method=method)
    # Header lines are split with C-level str methods only; values keep their surrounding white space
    # until asked for (Headers._lazy). Every line must be `token SWS ":" ...` with no bare CR or LF.
    names: tuple[str, ...] = ()
    raws: tuple[str, ...] = ()
    keys: list[str] = []
    nlines = 0
    if block:
        split = _split_lines(block)
        if split is None and ("\r\n " in block or "\r\n\t" in block):
            # Folded lines (rare): a continuation line never passes as a header line, so unfolding
            # is only tried once splitting failed.
            block = g.FOLD_RE.sub("", block)
            split = _split_lines(block)
        if split is None:
            raise ParseError(_bad_line(block), is_request=is_req, method=method)
        names, raws, keys = split
        nlines = len(keys)
    if nlines > lim.max_headers:
        raise ParseError("Too Many Headers", is_request=is_req, method=method)
    if len(first) > lim.max_line_bytes or (
        len(block) > lim.max_line_bytes and max(len(v.strip(" \t")) for v in raws) > lim.max_line_bytes - 2
    ):
        raise ParseError("Header Line Too Long", is_request=is_req, method=method)
    ncl = keys.count(_CL)
    if ncl == 0:
        body = data[body_start:]
    else:
        if ncl > 1:
            raise ParseError("Multiple Content-Length headers", is_request=is_req, method=method)
        cl_text = raws[keys.index(_CL)].strip(" \t")
        if cl_text.startswith("-"):
            raise ParseError("Negative Content-Length", is_request=is_req, method=method)
        if not (cl_text.isdigit() and cl_text.isascii()) or len(cl_text.lstrip("0")) > 10:
            raise ParseError("Malformed Content-Length", is_request=is_req, method=method)
        cl = int(cl_text)
        if body_start + cl > n:
            raise ParseError("Content-Length larger than message", is_request=is_req, method=method)
        body = data[body_start : body_start + cl]
    headers = Headers._lazy(names, raws, keys)
    msg: Request | Response
    if is_req:
        assert method is not None
        msg = _new_request(method, ruri_text, headers, body)
    else:
        msg = Response(status, reason, headers, body)
    if validate:
        try:
            if isinstance(msg, Request):
                validate_request(msg)
            else:
                validate_response(msg)
        except ParseError as exc:
            exc.is_request = is_req
            exc.method = method
            raise
    return msg


def _bad_line(block: str) -> str:
    for line in block.split("\r\n"):
        if "\r" in line or "\n" in line:
            return "Bare CR or LF in header"
        if not g.HEADER_LINE_RE.fullmatch(line):
            return "Malformed header line"
    return "Malformed header line"


# Canonical keys of header names as spelled on the wire; filled for the usual spellings, other
# spellings are computed per message (no unbounded global cache).
_KEYS: Final[dict[str, str]] = {}
for _low in (
    "via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "content-length", "content-type",
    "route", "record-route", "allow", "supported", "require", "proxy-require", "user-agent", "server",
    "expires", "p-asserted-identity", "p-preferred-identity", "privacy", "reason", "warning",
    "identity", "retry-after", "session-expires", "min-se", "accept", "allow-events", "event",
    "subscription-state", "refer-to", "referred-by", "rseq", "rack", "authorization",
    "proxy-authorization", "www-authenticate", "proxy-authenticate", "date", "timestamp",
    "diversion", "history-info", "p-charging-vector", "x-campaign-id", "organization", "subject",
    "content-disposition", "mime-version", "unsupported", "accept-encoding", "accept-language",
):  # fmt: skip
    for _spelling in (_low, _low.upper(), "-".join(p.capitalize() for p in _low.split("-"))):
        _KEYS[_spelling] = _low
_KEYS.update({"Call-ID": "call-id", "CSeq": "cseq", "WWW-Authenticate": "www-authenticate"})
_KEYS.update({"P-Asserted-Identity": "p-asserted-identity", "P-Preferred-Identity": "p-preferred-identity"})
_KEYS.update({"MIME-Version": "mime-version", "RSeq": "rseq", "RAck": "rack", "Min-SE": "min-se"})
for _c in "vftimlcksoeruxyabdj":
    _KEYS[_c] = _KEYS[_c.upper()] = canonical_name(_c)


def _split_lines(block: str) -> tuple[tuple[str, ...], tuple[str, ...], list[str]] | None:
    """(names, raw values, keys) of a header block, or None unless every line is `token SWS ":" ...`
    without bare CR or LF. A known spelling costs one find, two slices and one dict lookup a line."""
    lines = block.split("\r\n")
    names: list[str] = []
    raws: list[str] = []
    keys: list[str] = []
    for line in lines:
        colon = line.find(":")
        if colon < 0:
            return None
        name = line[:colon]
        key = _KEYS.get(name)
        if key is None:
            learnt = _learn_name(name)
            if learnt is None:
                return None
            name, key = learnt
        raw = line[colon + 1 :]
        if "\r" in raw or "\n" in raw:  # a known or learnt name has neither: only the value may
            return None
        names.append(name)
        raws.append(raw)
        keys.append(key)
    return tuple(names), tuple(raws), keys


# Other spellings (X- headers, odd capitalisation) are learnt once validated, up to a bound.
_KEYS_MAX: Final = len(_KEYS) + 1024
_NAME_RE: Final = re.compile(rf"({g.TOKEN})[ \t]*")


def _learn_name(name: str) -> tuple[str, str] | None:
    """(token, key) of a header name that is not a known spelling (white space before the colon dropped);
    None if it is not a token."""
    m = _NAME_RE.fullmatch(name)
    if m is None:
        return None
    token: str = m.group(1)
    key = _KEYS.get(token) or canonical_name(token)
    if token == name and len(_KEYS) < _KEYS_MAX:
        _KEYS[token] = key
    return token, key
