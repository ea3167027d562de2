"""Stream framing (TCP/TLS): cut a byte stream into SIP messages by Content-Length, and spot keep-alives.

Sans-IO: the transport feeds bytes and acts on what comes out; no sockets, no timers here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from sipfilter.sip.errors import ParseError
from sipfilter.sip.message import DEFAULT_LIMITS, Limits, Request, Response, parse

__all__ = ["FramerClosed", "KeepAlive", "StreamEvent", "StreamFramer"]

# Content-Length lines in a raw header block (folded values are not supported for this one header).
_CL_RE: Final = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.I | re.M)
_FOLD_RE: Final = re.compile(rb"\r\n(?=[ \t])")
_HEADER_END: Final = b"\r\n\r\n"
_PING: Final = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """RFC 5626 §3.5.1 keep-alive: `ping` (CRLFCRLF; answer with a CRLF pong) or a lone CRLF pong."""

    ping: bool


StreamEvent = Request | Response | ParseError | KeepAlive


class FramerClosed(RuntimeError):
    """feed() after a fatal framing error: the connection should already have been closed."""


class StreamFramer:
    """Incremental framer for one stream connection.

    `feed(data)` returns, in order, every complete item: a parsed Request/Response, a KeepAlive, or a
    ParseError. A ParseError with `fatal=False` concerns one well-framed message (answer or drop it and
    carry on); with `fatal=True` (no/negative/duplicate/oversize Content-Length, oversize header block)
    framing is lost: it is always the last item, `failed` becomes True, and the connection must be
    closed. Content-Length is mandatory on streams (RFC 3261 §18.3).
    """

    __slots__ = ("_buf", "_failed", "_limits", "_scan", "_validate")

    def __init__(self, limits: Limits | None = None, *, validate: bool = True) -> None:
        self._limits = DEFAULT_LIMITS if limits is None else limits
        self._validate = validate
        self._buf = bytearray()
        self._scan = 0  # where the next search for the header end starts (no quadratic rescans)
        self._failed = False

    @property
    def failed(self) -> bool:
        """True once a fatal framing error was returned: close the connection."""
        return self._failed

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[StreamEvent]:
        if self._failed:
            raise FramerClosed("framer failed earlier; the connection must be closed")
        buf = self._buf
        buf += data
        out: list[StreamEvent] = []
        limits = self._limits
        while buf:
            if buf[:2] == b"\r\n":
                if buf[:4] == _PING:
                    out.append(KeepAlive(ping=True))
                    del buf[:4]
                    self._scan = 0
                    continue
                if len(buf) < 4 and _PING.startswith(bytes(buf)):
                    break  # maybe the start of a ping: wait for more
                out.append(KeepAlive(ping=False))
                del buf[:2]
                self._scan = 0
                continue
            end = buf.find(_HEADER_END, self._scan)
            if end < 0:
                self._scan = max(0, len(buf) - 3)
                if len(buf) > limits.max_message_bytes:
                    # The header lines received so far (up to the last whole one) still name the Via,
                    # Call-ID and CSeq that a 513 needs.
                    head_part = bytes(buf[: buf.rfind(b"\r\n", 0, limits.max_message_bytes) + 1])
                    out.append(self._fatal("Message Too Large", 513, head_part))
                break
            head = bytes(buf[:end])
            if b"\r\n " in head or b"\r\n\t" in head:
                head = _FOLD_RE.sub(b"", head)  # a folded Content-Length still frames
            body_start = end + 4
            cls = _CL_RE.findall(head)
            if not cls:
                out.append(self._fatal("Missing Content-Length on stream", head=head))
                break
            if len(cls) > 1:
                out.append(self._fatal("Multiple Content-Length headers", head=head))
                break
            cl_text: bytes = cls[0]
            if not cl_text.isdigit() or len(cl_text.lstrip(b"0")) > 10:
                out.append(self._fatal("Invalid Content-Length", head=head))
                break
            total = body_start + int(cl_text)
            if total > limits.max_message_bytes:
                out.append(self._fatal("Message Too Large", 513, head))
                break
            if len(buf) < total:
                self._scan = end  # header end already known; wait for the body
                break
            raw = bytes(buf[:total])
            del buf[:total]
            self._scan = 0
            try:
                out.append(parse(raw, limits, validate=self._validate))
            except ParseError as exc:
                setattr(exc, "raw", raw)  # noqa: B010 (the transport answers 400 from the raw header lines)
                out.append(exc)
        return out

    def _fatal(self, reason: str, status: int = 400, head: bytes = b"") -> ParseError:
        """Framing is lost. The error carries the header lines read (`raw`), so that the transport's handler
        can answer a request 400 or 513 (RFC 3261 §18.3, §21.5.14) before the connection is closed."""
        self._failed = True
        self._buf.clear()
        exc = ParseError(reason, status, is_request=_is_req(head) if head else None, fatal=True)
        if head:
            setattr(exc, "raw", head + _HEADER_END)  # noqa: B010 (as for a message that failed to parse)
        return exc


def _is_req(head: bytes) -> bool:
    return not head.startswith(b"SIP/")
