"""What goes into an RFC 3261 §17 transaction machine (events) and what comes out of it (actions).

Immutable values: the machines (sip/transaction.py) share the common actions between transactions. Each one
that is built for every message writes out its __init__, so that mypyc compiles it (sipfilter/compiled.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from sipfilter.sip.message import Request, Response

REASON_NORMAL: Final = "normal"
REASON_TIMEOUT: Final = "timeout"  # the TU must act as if it had received a 408 (§8.1.3.1)
REASON_TRANSPORT: Final = "transport-error"  # the TU must act as if it had received a 503 (§8.1.3.1)


# --- events (into a transaction) ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, init=False)
class MessageReceived:
    """A message the transport matched to this transaction (a response, a retransmitted request, an ACK)."""

    msg: Request | Response

    def __init__(self, msg: Request | Response) -> None:
        object.__setattr__(self, "msg", msg)


@dataclass(frozen=True, slots=True, init=False)
class TimerFired:
    """A timer started by a StartTimer action expired. Timers not (or no longer) armed are ignored."""

    name: str

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)


@dataclass(frozen=True, slots=True)
class TransportError:
    """The transport failed to send this transaction's message (ICMP unreachable, TCP reset, TLS error)."""

    detail: str = ""


@dataclass(frozen=True, slots=True, init=False)
class SendResponse:
    """From the TU, server transactions only: send this response to the request. A response the TU
    serialised itself comes as bytes with its `status`."""

    response: Response | bytes
    status: int

    def __init__(self, response: Response | bytes, status: int = 0) -> None:
        object.__setattr__(self, "response", response)
        object.__setattr__(self, "status", status)


Event: TypeAlias = MessageReceived | TimerFired | TransportError | SendResponse


# --- actions (out of a transaction) ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, init=False)
class Send:
    """Pass this message to the transport (the caller knows the destination). The same Send object is
    returned for every retransmission of one message, so callers may cache its bytes by identity."""

    msg: Request | Response | bytes
    retransmission: bool

    def __init__(self, msg: Request | Response | bytes, retransmission: bool = False) -> None:
        object.__setattr__(self, "msg", msg)
        object.__setattr__(self, "retransmission", retransmission)


@dataclass(frozen=True, slots=True, init=False)
class Deliver:
    """Pass this message up to the transaction user."""

    msg: Request | Response

    def __init__(self, msg: Request | Response) -> None:
        object.__setattr__(self, "msg", msg)


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Schedule TimerFired(name) in `seconds`, replacing any pending timer of this name."""

    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Cancel the pending timer of this name (a late TimerFired for it would be ignored anyway)."""

    name: str


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction is over: remove it from the table. Always the last action of its list.

    A client transaction ends with "timeout" or "transport-error" only before any final response reached
    the TU; later transport failures come as TransportFailed.
    """

    reason: str

    @property
    def status(self) -> int | None:
        """The response the TU must act on: 408 for a timeout, 503 for a transport error (§8.1.3.1)."""
        if self.reason == REASON_TIMEOUT:
            return 408
        if self.reason == REASON_TRANSPORT:
            return 503
        return None


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """Tell the TU the transport failed; the transaction lives on until its timers end it. Used where
    terminating would be wrong: an INVITE server transaction in Proceeding/Accepted (RFC 6026 §7.1 keeps
    it to absorb INVITE retransmissions) and a client that already delivered its final response."""

    detail: str = ""


Action: TypeAlias = Send | Deliver | StartTimer | CancelTimer | TransportFailed | Terminated
