"""Builders of the bytes the B2BUA sends: requests and responses of both legs, tags, branches, Call-IDs.

Serialisation only, from strings the call logic hands in; never parses a message (the SIP core does that),
except the byte-level scan of a malformed request needed to answer it 400.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from sipfilter.policy.verdict import Verdict

REASONS: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
    200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 428: "Use Identity Header", 436: "Bad Identity Info", 437: "Unsupported Credential",
    438: "Invalid Identity Header", 480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    483: "Too Many Hops", 486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    491: "Request Pending", 500: "Server Internal Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "Version Not Supported", 513: "Message Too Large", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable", 607: "Unwanted", 608: "Rejected",
}

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_NOT_USER = re.compile(r"[^0-9A-Za-z+*#._\-]")


def reason_phrase(status: int) -> str:
    return REASONS.get(status, "Unknown")


class _RandomPool:
    """Bytes of os.urandom taken a page at a time: tags, branches and Call-IDs stay unpredictable (RFC 3261
    §19.3 asks for cryptographic randomness) without a getrandom() system call for each one."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def hex(self, nbytes: int) -> str:
        pos = self._pos
        end = pos + nbytes
        if end > len(self._buf):
            self._buf = os.urandom(4096)
            pos, end = 0, nbytes
        self._pos = end
        return self._buf[pos:end].hex()


_RANDOM = _RandomPool()  # process-wide by nature: bytes are never handed out twice
# With several worker processes, every tag and branch this one makes starts with its mark (see
# sipfilter/workers/routing.py): the dialog's requests and the responses then find their way back to it.
_mark = ""


def set_worker_mark(mark: str) -> None:
    global _mark
    _mark = mark


def new_tag() -> str:
    return _mark + _RANDOM.hex(6)


def new_branch() -> str:
    return "z9hG4bK" + _mark + _RANDOM.hex(8)


def new_call_id(host: str) -> str:
    return f"{_RANDOM.hex(10)}@{host}"


def with_tag(name_addr: str, tag: str) -> str:
    """A From/To value with `;tag=` appended unless it already carries one."""
    if ";tag=" in name_addr.lower():
        return name_addr
    return f"{name_addr};tag={tag}"


def uri_user(uri: object) -> str:
    """The user (or tel number) of a URI, reduced to characters that cannot change the URI we build."""
    user = getattr(uri, "user", None) or getattr(uri, "number", None) or ""
    return _NOT_USER.sub("", str(user))


def safe(value: str) -> str:
    """A header value that cannot inject a header: control characters (CR, LF, NUL…) become spaces."""
    if value.isascii() and value.isprintable():  # the usual value, checked in C without the regex
        return value
    return _UNSAFE.sub(" ", value) if _UNSAFE.search(value) else value


def _encode(head: str, body: bytes) -> bytes:
    data = head.encode("utf-8", "surrogateescape")
    return data + body if body else data


def build_request(method: str, ruri: str, lines: Iterable[str], body: bytes = b"") -> bytes:
    """`lines` are complete "Name: value" lines; Content-Length is computed here."""
    # One C-level join (the trailing "", "" end the head with an empty line).
    head = "\r\n".join([f"{method} {ruri} SIP/2.0", *lines, f"Content-Length: {len(body)}", "", ""])
    return _encode(head, body)


def build_response(status: int, reason: str, lines: Iterable[str], body: bytes = b"") -> bytes:
    start = f"SIP/2.0 {status} {safe(reason) or reason_phrase(status)}"
    return _encode("\r\n".join([start, *lines, f"Content-Length: {len(body)}", "", ""]), body)


def verdict_lines(verdict: Verdict, host: str) -> list[str]:
    return [f"Reason: {verdict.reason_header()}", f"Warning: {verdict.warning_header(host)}"]


# -- answering what the SIP core could not parse --------------------------------------------------------

_HEADER_LINE = re.compile(rb"^([A-Za-z][A-Za-z0-9\-.!%*_+`'~]*)[ \t]*:[ \t]*(.*)$")
_KEEP = {
    b"via": "Via", b"v": "Via", b"from": "From", b"f": "From", b"to": "To", b"t": "To",
    b"call-id": "Call-ID", b"i": "Call-ID", b"cseq": "CSeq",
}


def stateless_error(data: bytes, status: int, reason: str, tag: str) -> bytes | None:
    """A response to a request that failed to parse, from its raw header lines (those it has of Via,
    From, To, Call-ID, CSeq); None without a Via."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    found: dict[str, list[str]] = {}
    for raw in head.split(b"\n")[1:]:
        line = raw.rstrip(b"\r")
        m = _HEADER_LINE.match(line)
        if m is None:
            continue
        name = _KEEP.get(m.group(1).lower())
        if name is None:
            continue
        value = m.group(2).decode("utf-8", "replace").strip()
        found.setdefault(name, []).append(safe(value))
    if "Via" not in found:
        return None  # §8.2: an answer goes back along the Via; without one it could not be matched
    lines = [f"Via: {v}" for v in found["Via"]]
    if "From" in found:
        lines.append(f"From: {found['From'][0]}")
    if "To" in found:
        lines.append(f"To: {with_tag(found['To'][0], tag)}")
    for name in ("Call-ID", "CSeq"):
        if name in found:
            lines.append(f"{name}: {found[name][0]}")
    return build_response(status, reason, lines)
