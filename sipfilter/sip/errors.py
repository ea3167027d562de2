"""Typed errors of the SIP message core: what went wrong, the status to answer with, and what to do next.

Pure data: no logging and no I/O here; the transport decides whether to answer, drop or close.
"""

from __future__ import annotations

__all__ = ["ParseError"]

_MAX_REASON = 120


def _clean(reason: str) -> str:
    # The reason may become a response reason phrase: never let CR/LF or control bytes through.
    text = "".join(ch if " " <= ch <= "~" or ch > "\x9f" else " " for ch in reason)
    text = " ".join(text.split())
    return text[:_MAX_REASON] or "Bad Request"


class ParseError(ValueError):
    """A message (or a header of it) that cannot be trusted.

    `reason` is short text usable as a reason phrase (no CR/LF); `status` is the response code a UAS
    should send (400 unless a more precise one applies: 505, 416, 501, 513); `is_request` is True when
    the message was a request (answer it), False for a response (drop it), None if unknown (drop it);
    `method` is the request method when the request line was readable (never answer an ACK);
    `fatal` is True on a stream when framing is lost: the connection must be closed.
    """

    __slots__ = ("fatal", "is_request", "method", "reason", "status")

    def __init__(
        self,
        reason: str,
        status: int = 400,
        *,
        is_request: bool | None = None,
        fatal: bool = False,
        method: str | None = None,
    ) -> None:
        self.reason: str = _clean(reason)
        self.status: int = status
        self.is_request: bool | None = is_request
        self.fatal: bool = fatal
        self.method: str | None = method
        super().__init__(self.reason)

    def __repr__(self) -> str:
        return (
            f"ParseError({self.reason!r}, status={self.status}, is_request={self.is_request}, "
            f"fatal={self.fatal})"
        )

    @property
    def should_answer(self) -> bool:
        """True when a stateless error response should be sent (requests only; never ACK)."""
        return self.is_request is True and self.method != "ACK"
