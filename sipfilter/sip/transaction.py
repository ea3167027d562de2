"""RFC 3261 §17 transaction state machines (with the RFC 6026 Accepted state), matching keys and table.

Sans-IO: events in, actions out. No sockets, no clock, no asyncio: the caller sends, schedules the timers
it is handed (a StartTimer replaces any pending timer of that name) and feeds back TimerFired.

The B2BUA drives all four machines (b2bua/transactions.py). A client machine sends the bytes the B2BUA built
as the request: the B2BUA then files the transaction under its own key and hands the INVITE machine the
builder of its ACK for non-2xx answers; responses it receives are parsed messages. A server machine gets the
parsed request it answers (filed under the B2BUA's key when it gives one) and sends the responses the B2BUA
built as bytes, each with its status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from typing import Final, TypeAlias

from sipfilter.sip.headers import Headers
from sipfilter.sip.matching import (
    TransactionError,
    TransactionKey,
    ack_for_non2xx,
    cancel_for,
    cancel_target_key,
    client_key,
    client_key_for_request,
    response_for,
    server_key,
    trying_for,
)
from sipfilter.sip.message import Request, Response
from sipfilter.sip.timers import (
    ALL_TIMERS,
    DEFAULT_TIMERS,
    TIMER_A,
    TIMER_B,
    TIMER_D,
    TIMER_E,
    TIMER_F,
    TIMER_G,
    TIMER_H,
    TIMER_I,
    TIMER_J,
    TIMER_K,
    TIMER_L,
    TIMER_M,
    TIMER_TRYING,
    TimerConfig,
)
from sipfilter.sip.transaction_events import (
    REASON_NORMAL,
    REASON_TIMEOUT,
    REASON_TRANSPORT,
    Action,
    CancelTimer,
    Deliver,
    Event,
    MessageReceived,
    Send,
    SendResponse,
    StartTimer,
    Terminated,
    TimerFired,
    TransportError,
    TransportFailed,
)

__all__ = [
    "REASON_NORMAL",
    "REASON_TIMEOUT",
    "REASON_TRANSPORT",
    "Action",
    "CancelTimer",
    "ClientTransaction",
    "Deliver",
    "Event",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "MessageReceived",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "Send",
    "SendResponse",
    "ServerTransaction",
    "StartTimer",
    "Terminated",
    "TimerFired",
    "Transaction",
    "TransactionError",
    "TransactionKey",
    "TransactionTable",
    "TransportError",
    "TransportFailed",
    "TxState",
    "ack_for_non2xx",
    "cancel_for",
    "cancel_target_key",
    "client_key",
    "client_key_for_request",
    "is_reliable",
    "response_for",
    "server_key",
    "trying_for",
]


class TxState(StrEnum):
    """States of Figures 5-8 of RFC 3261, plus Accepted (RFC 6026 §7)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    ACCEPTED = "Accepted"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


_CALLING: Final = TxState.CALLING
_TRYING: Final = TxState.TRYING
_PROCEEDING: Final = TxState.PROCEEDING
_COMPLETED: Final = TxState.COMPLETED
_ACCEPTED: Final = TxState.ACCEPTED
_CONFIRMED: Final = TxState.CONFIRMED
_TERMINATED: Final = TxState.TERMINATED

# What a client transaction sends: a Request, or the bytes its transaction user serialised (then the TU gives
# the key, and for an INVITE the builder of the ACK of a non-2xx answer).
Outgoing: TypeAlias = Request | bytes
AckBuilder: TypeAlias = Callable[[Response], Outgoing]

# Hot path: actions are immutable, so the common ones are built once and shared.
_CANCEL: Final[Mapping[str, CancelTimer]] = {name: CancelTimer(name) for name in ALL_TIMERS}


def _fixed_starts(timers: TimerConfig) -> Mapping[str, StartTimer]:
    # A process runs on one configuration: the last one's starts, by identity (hashing the dataclass on every
    # transaction would cost more than the whole lookup).
    last_timers, last_starts = _LAST_STARTS[0]
    if timers is last_timers:
        return last_starts
    starts = _starts_for(timers)
    _LAST_STARTS[0] = (timers, starts)  # one assignment: a reader sees a consistent pair
    return starts


def _starts_for(timers: TimerConfig) -> Mapping[str, StartTimer]:
    """The StartTimer of every timer at its first (or only) duration under this configuration."""
    t = timers
    first = {
        TIMER_A: t.t1, TIMER_B: t.timeout, TIMER_D: t.timer_d, TIMER_E: t.t1, TIMER_F: t.timeout,
        TIMER_G: t.t1, TIMER_H: t.timeout, TIMER_I: t.t4, TIMER_J: t.timeout, TIMER_K: t.t4,
        TIMER_L: t.timeout, TIMER_M: t.timeout, TIMER_TRYING: t.trying,
    }  # fmt: skip
    return {name: StartTimer(name, seconds) for name, seconds in first.items()}


_LAST_STARTS: Final[list[tuple[TimerConfig, Mapping[str, StartTimer]]]] = [
    (DEFAULT_TIMERS, _starts_for(DEFAULT_TIMERS))
]
_ENDS: Final[Mapping[str, Terminated]] = {
    r: Terminated(r) for r in (REASON_NORMAL, REASON_TIMEOUT, REASON_TRANSPORT)
}


# --- the four machines -----------------------------------------------------------------------------------
# Caller contract: build the transaction, run start()'s actions, then feed handle() every message matched
# to it (TransactionTable), every TimerFired and every transport failure, running the returned actions in
# order. StartTimer(name) replaces a pending timer of that name; after CancelTimer it must not fire (a late
# one is ignored anyway). On Terminated, remove the transaction from the table.


class _Transaction:
    """What all four machines share: the request, the armed timers and how termination cancels them."""

    __slots__ = ("_armed", "_starts", "key", "method", "reliable", "request", "state", "timers")

    def __init__(self, request: Request, reliable: bool, timers: TimerConfig, key: TransactionKey,
                 method: str) -> None:  # fmt: skip
        self.request: Request = request
        self.method: str = method
        self.reliable: bool = reliable
        self.timers: TimerConfig = timers
        self.key: TransactionKey = key
        self.state: TxState = _TERMINATED
        self._armed: set[str] = set()
        self._starts: Mapping[str, StartTimer] = _fixed_starts(timers)

    @property
    def terminated(self) -> bool:
        return self.state is _TERMINATED

    @property
    def armed_timers(self) -> frozenset[str]:
        """Names of the timers this transaction is waiting for (for introspection and tests)."""
        return frozenset(self._armed)

    def _start(self, out: list[Action], name: str, seconds: float) -> None:
        self._armed.add(name)
        start = self._starts[name]
        out.append(start if start.seconds == seconds else StartTimer(name, seconds))

    def _cancel(self, out: list[Action], name: str) -> None:
        if name in self._armed:
            self._armed.discard(name)
            out.append(_CANCEL[name])

    def _terminate(self, out: list[Action], reason: str) -> list[Action]:
        armed = self._armed
        if armed:
            out.extend(_CANCEL[name] for name in sorted(armed))
            armed.clear()
        self.state = _TERMINATED
        out.append(_ENDS[reason])
        return out

    def _fired(self, name: str) -> bool:
        # A stale or foreign timer (cancelled, or from before a reset) must not move the machine.
        if name in self._armed:
            self._armed.discard(name)
            return True
        return False

    def _transport_error(self) -> list[Action]:
        if self.state is _TERMINATED:
            return []
        return self._terminate([], REASON_TRANSPORT)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.method} {self.key!r}, state={self.state.value})"


class _ClientTransaction(_Transaction):
    __slots__ = ("_interval", "_resend", "_send", "_started", "outgoing")

    def __init__(self, request: Outgoing, reliable: bool, timers: TimerConfig,
                 key: TransactionKey | None) -> None:  # fmt: skip
        if type(request) is bytes:
            if key is None:
                raise TransactionError("a client transaction sending bytes needs its key")
            method = key[-1]
        else:
            assert isinstance(request, Request)
            method = request.method
            if key is None:
                key = client_key_for_request(request)
        # `request` is the parsed request when there is one; `outgoing` is what goes on the wire.
        parsed = request if isinstance(request, Request) else _NO_REQUEST
        _Transaction.__init__(self, parsed, reliable, timers, key, method)
        self.outgoing: Outgoing = request
        self._send: Send = Send(request, False)
        self._resend: Send = Send(request, True)
        self._interval: float = timers.t1
        self._started: bool = False

    # Timer names of the subclass: request retransmission (unreliable only) and transaction timeout.
    _RETRANSMIT_TIMER: str
    _TIMEOUT_TIMER: str

    def start(self) -> list[Action]:
        """Send the request; arm retransmission (A or E, unreliable only) and timeout (B or F)."""
        self._check_start()
        out: list[Action] = [self._send]
        if not self.reliable:
            self._start(out, self._RETRANSMIT_TIMER, self._interval)
        self._start(out, self._TIMEOUT_TIMER, self.timers.timeout)
        return out

    def handle(self, event: Event) -> list[Action]:
        if not self._started:
            raise TransactionError("start() the client transaction before feeding it events")
        if type(event) is MessageReceived:
            msg = event.msg
            return self._on_response(msg) if type(msg) is Response else []
        if type(event) is TimerFired:
            return self._on_timer(event.name)
        if type(event) is TransportError:
            return self._client_transport_error(event)
        raise TransactionError("a client transaction does not send responses")

    def _on_response(self, resp: Response) -> list[Action]:
        raise NotImplementedError

    def _on_timer(self, name: str) -> list[Action]:
        raise NotImplementedError

    def _client_transport_error(self, event: TransportError) -> list[Action]:
        state = self.state
        if state is _COMPLETED or state is _ACCEPTED:
            # The TU already has its final response: a 503 now would contradict it. Timers end the state.
            return [TransportFailed(event.detail)]
        return self._transport_error()

    def _check_start(self) -> None:
        if self._started:
            raise TransactionError("start() called twice on a client transaction")
        self._started = True


class InviteClientTransaction(_ClientTransaction):
    """§17.1.1 (Figure 5) with RFC 6026: Calling → Proceeding → Completed | Accepted → Terminated."""

    __slots__ = ("_ack", "_ack_builder")
    _RETRANSMIT_TIMER = TIMER_A
    _TIMEOUT_TIMER = TIMER_B

    def __init__(
        self,
        request: Outgoing,
        *,
        reliable: bool = False,
        timers: TimerConfig = DEFAULT_TIMERS,
        key: TransactionKey | None = None,
        ack: AckBuilder | None = None,
    ) -> None:
        _ClientTransaction.__init__(self, request, reliable, timers, key)
        if self.method != "INVITE":
            raise TransactionError(f"InviteClientTransaction needs an INVITE, not {self.method}")
        if ack is None and type(request) is bytes:
            raise TransactionError("an INVITE sent as bytes needs the builder of its ACK")
        self.state = _CALLING
        self._ack: Send | None = None
        self._ack_builder: AckBuilder | None = ack

    @property
    def cancellable(self) -> bool:
        """True once a provisional response came and no final one yet: §9.1 allows a CANCEL only then."""
        return self.state is _PROCEEDING

    @property
    def ack(self) -> Request | None:
        """The ACK generated for a non-2xx final response, once there is one (as a Request)."""
        msg = None if self._ack is None else self._ack.msg
        return msg if isinstance(msg, Request) else None

    @property
    def ack_sent(self) -> Outgoing | None:
        """The ACK generated for a non-2xx final response as it was sent (Request or bytes)."""
        msg = None if self._ack is None else self._ack.msg
        return None if msg is None or isinstance(msg, Response) else msg

    def _on_response(self, resp: Response) -> list[Action]:
        state = self.state
        status = resp.status
        out: list[Action]
        if state is _CALLING or state is _PROCEEDING:
            out = []
            if status < 200:
                if state is _CALLING:
                    # No INVITE retransmission once something answered; Timer B only guards Calling.
                    self.state = _PROCEEDING
                    self._cancel(out, TIMER_A)
                    self._cancel(out, TIMER_B)
                out.append(Deliver(resp))
                return out
            self._cancel(out, TIMER_A)
            self._cancel(out, TIMER_B)
            if status < 300:
                # RFC 6026: stay around so 2xx retransmissions reach the TU (which ACKs them), not a new tx.
                self.state = _ACCEPTED
                out.append(Deliver(resp))
                self._start(out, TIMER_M, self.timers.timeout)
                return out
            builder = self._ack_builder
            ack_msg = builder(resp) if builder is not None else ack_for_non2xx(self.request, resp)
            ack = self._ack = Send(ack_msg)
            out.append(ack)
            out.append(Deliver(resp))
            if self.reliable:
                return self._terminate(out, REASON_NORMAL)  # Timer D is zero
            self.state = _COMPLETED
            self._start(out, TIMER_D, self.timers.timer_d)
            return out
        if state is _COMPLETED:
            if status >= 300 and self._ack is not None:
                return [self._ack]  # retransmitted final: ACK again, TU already has it
            return []
        if state is _ACCEPTED and 200 <= status < 300:
            return [Deliver(resp)]
        return []

    def _on_timer(self, name: str) -> list[Action]:
        if not self._fired(name):
            return []
        state = self.state
        if name == TIMER_A and state is _CALLING:
            self._interval *= 2
            out: list[Action] = [self._resend]
            self._start(out, TIMER_A, self._interval)
            return out
        if name == TIMER_B and state is _CALLING:
            return self._terminate([], REASON_TIMEOUT)
        if (name == TIMER_D and state is _COMPLETED) or (name == TIMER_M and state is _ACCEPTED):
            return self._terminate([], REASON_NORMAL)
        return []


class NonInviteClientTransaction(_ClientTransaction):
    """§17.1.2 (Figure 6): Trying → Proceeding → Completed → Terminated."""

    __slots__ = ()
    _RETRANSMIT_TIMER = TIMER_E
    _TIMEOUT_TIMER = TIMER_F

    def __init__(
        self,
        request: Outgoing,
        *,
        reliable: bool = False,
        timers: TimerConfig = DEFAULT_TIMERS,
        key: TransactionKey | None = None,
    ) -> None:
        _ClientTransaction.__init__(self, request, reliable, timers, key)
        if self.method in ("INVITE", "ACK"):
            raise TransactionError(f"NonInviteClientTransaction cannot carry {self.method}")
        self.state = _TRYING

    def _on_response(self, resp: Response) -> list[Action]:
        state = self.state
        if state is not _TRYING and state is not _PROCEEDING:
            return []  # Completed absorbs retransmitted finals; Terminated ignores everything
        out: list[Action] = []
        if resp.status < 200:
            self.state = _PROCEEDING  # Timer E keeps running, at T2 from its next firing
            out.append(Deliver(resp))
            return out
        self._cancel(out, TIMER_E)
        self._cancel(out, TIMER_F)
        out.append(Deliver(resp))
        if self.reliable:
            return self._terminate(out, REASON_NORMAL)  # Timer K is zero
        self.state = _COMPLETED
        self._start(out, TIMER_K, self.timers.t4)
        return out

    def _on_timer(self, name: str) -> list[Action]:
        if not self._fired(name):
            return []
        state = self.state
        if name == TIMER_E and (state is _TRYING or state is _PROCEEDING):
            t2 = self.timers.t2
            if state is _PROCEEDING:
                self._interval = t2
            else:
                interval = self._interval * 2
                self._interval = interval if interval < t2 else t2
            out: list[Action] = [self._resend]
            self._start(out, TIMER_E, self._interval)
            return out
        if name == TIMER_F and (state is _TRYING or state is _PROCEEDING):
            return self._terminate([], REASON_TIMEOUT)
        if name == TIMER_K and state is _COMPLETED:
            return self._terminate([], REASON_NORMAL)
        return []


class _ServerTransaction(_Transaction):
    __slots__ = ("_last", "final")

    def __init__(self, request: Request, reliable: bool, timers: TimerConfig,
                 key: TransactionKey | None) -> None:  # fmt: skip
        method = request.method
        _Transaction.__init__(self, request, reliable, timers, server_key(request) if key is None else key,
                              method)  # fmt: skip
        self._last: Send | None = None
        self.final: int = 0  # status of the final response sent (0: none yet)

    @property
    def last_response(self) -> Response | bytes | None:
        """The last response sent (what a retransmitted request gets again)."""
        return None if self._last is None else self._last.msg  # type: ignore[return-value]

    def _remember(self, resp: Response | bytes) -> Send:
        # One Send object per response: retransmissions reuse it (flagged), the first send is unflagged.
        # Answered, the machine never reads its request again (only a 100 Trying of its own would): it lets
        # the parsed request go rather than hold it for as long as Timer J or L.
        self._last = Send(resp, True)
        self.request = _NO_REQUEST
        return Send(resp, False)


def _status_of(event: SendResponse) -> int:
    resp = event.response
    status = resp.status if type(resp) is Response else event.status
    if not 100 <= status <= 699:
        raise TransactionError(f"cannot send a response with status {status}")
    return status


class InviteServerTransaction(_ServerTransaction):
    """§17.2.1 (Figure 7) with RFC 6026: Proceeding → Completed → Confirmed | Accepted → Terminated."""

    __slots__ = ("_interval",)

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool = False,
        timers: TimerConfig = DEFAULT_TIMERS,
        key: TransactionKey | None = None,
    ) -> None:
        if request.method != "INVITE":
            raise TransactionError(f"InviteServerTransaction needs an INVITE, not {request.method}")
        _ServerTransaction.__init__(self, request, reliable, timers, key)
        self.state = _PROCEEDING
        self._interval: float = timers.t1

    def start(self) -> list[Action]:
        """Hand the INVITE to the TU; arm the 100 Trying timer (cancelled by any response from the TU)."""
        out: list[Action] = [Deliver(self.request)]
        self._start(out, TIMER_TRYING, self.timers.trying)
        return out

    def handle(self, event: Event) -> list[Action]:
        if type(event) is SendResponse:
            return self._on_send(event.response, _status_of(event))
        if type(event) is MessageReceived:
            msg = event.msg
            return self._on_request(msg) if type(msg) is Request else []
        if type(event) is TimerFired:
            return self._on_timer(event.name)
        if type(event) is TransportError:
            state = self.state
            if state is _PROCEEDING or state is _ACCEPTED:
                # RFC 6026 §7.1: keep the state (timers or the TU end it) so retransmissions are absorbed.
                return [TransportFailed(event.detail)]
            return self._transport_error()
        raise TransactionError(f"unknown event {event!r}")

    def _on_request(self, req: Request) -> list[Action]:
        state = self.state
        method = req.method
        if method == "INVITE":
            # Retransmission: answer again in Proceeding/Completed; Accepted/Confirmed absorb it.
            if (state is _PROCEEDING or state is _COMPLETED) and self._last is not None:
                return [self._last]
            return []
        if method == "ACK":
            if state is _COMPLETED:
                out: list[Action] = []
                self._cancel(out, TIMER_G)
                self._cancel(out, TIMER_H)
                if self.reliable:
                    return self._terminate(out, REASON_NORMAL)  # Timer I is zero
                self.state = _CONFIRMED
                self._start(out, TIMER_I, self.timers.t4)
                return out
            if state is _ACCEPTED:
                return [Deliver(req)]  # RFC 6026: an ACK matching here belongs to the TU (2xx ACK)
        return []  # Confirmed absorbs ACK retransmissions

    def _on_send(self, resp: Response | bytes, status: int) -> list[Action]:
        state = self.state
        out: list[Action] = []
        if state is _PROCEEDING:
            self._cancel(out, TIMER_TRYING)
            out.append(self._remember(resp))
            if status < 200:
                return out
            self.final = status
            if status < 300:
                self.state = _ACCEPTED
                self._start(out, TIMER_L, self.timers.timeout)
                return out
            self.state = _COMPLETED
            if not self.reliable:
                self._interval = self.timers.t1
                self._start(out, TIMER_G, self._interval)
            self._start(out, TIMER_H, self.timers.timeout)
            return out
        if state is _ACCEPTED and 200 <= status < 300:
            out.append(Send(resp, True))  # the TU (dialog) retransmits its 2xx until the ACK
            return out
        return out  # anything else after a final response is discarded (§17.2.1)

    def _on_timer(self, name: str) -> list[Action]:
        if not self._fired(name):
            return []
        state = self.state
        if name == TIMER_TRYING and state is _PROCEEDING and self._last is None:
            return [self._remember(trying_for(self.request))]
        if name == TIMER_G and state is _COMPLETED and self._last is not None:
            interval = self._interval * 2
            t2 = self.timers.t2
            self._interval = interval if interval < t2 else t2
            out: list[Action] = [self._last]
            self._start(out, TIMER_G, self._interval)
            return out
        if name == TIMER_H and state is _COMPLETED:
            return self._terminate([], REASON_TIMEOUT)  # no ACK: §17.2.1 treats it as a timeout
        if (name == TIMER_I and state is _CONFIRMED) or (name == TIMER_L and state is _ACCEPTED):
            return self._terminate([], REASON_NORMAL)
        return []


class NonInviteServerTransaction(_ServerTransaction):
    """§17.2.2 (Figure 8): Trying → Proceeding → Completed → Terminated."""

    __slots__ = ()

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool = False,
        timers: TimerConfig = DEFAULT_TIMERS,
        key: TransactionKey | None = None,
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise TransactionError(f"NonInviteServerTransaction cannot carry {request.method}")
        _ServerTransaction.__init__(self, request, reliable, timers, key)
        self.state = _TRYING

    def start(self) -> list[Action]:
        """Hand the request to the TU."""
        return [Deliver(self.request)]

    def handle(self, event: Event) -> list[Action]:
        if type(event) is SendResponse:
            return self._on_send(event.response, _status_of(event))
        if type(event) is MessageReceived:
            msg = event.msg
            if type(msg) is Request and self._last is not None and self.state is not _TERMINATED:
                return [self._last]  # retransmission in Proceeding/Completed: answer again
            return []  # Trying absorbs retransmissions until the TU answers
        if type(event) is TimerFired:
            name = event.name
            if self._fired(name) and name == TIMER_J and self.state is _COMPLETED:
                return self._terminate([], REASON_NORMAL)
            return []
        if type(event) is TransportError:
            return self._transport_error()
        raise TransactionError(f"unknown event {event!r}")

    def _on_send(self, resp: Response | bytes, status: int) -> list[Action]:
        state = self.state
        if state is not _TRYING and state is not _PROCEEDING:
            return []  # a second final response is discarded (§17.2.2)
        out: list[Action] = [self._remember(resp)]
        if status < 200:
            self.state = _PROCEEDING
            return out
        self.final = status
        if self.reliable:
            return self._terminate(out, REASON_NORMAL)  # Timer J is zero
        self.state = _COMPLETED
        self._start(out, TIMER_J, self.timers.timeout)
        return out


ClientTransaction: TypeAlias = InviteClientTransaction | NonInviteClientTransaction
ServerTransaction: TypeAlias = InviteServerTransaction | NonInviteServerTransaction
Transaction: TypeAlias = ClientTransaction | ServerTransaction


_RELIABLE: Final = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


def is_reliable(transport: str) -> bool:
    """Whether a Via transport name (UDP, TCP, TLS, SCTP, WS, WSS) is reliable, for `reliable=`."""
    return transport.upper() in _RELIABLE


class TransactionTable:
    """Live transactions by key. Server (3 or 7 items) and client (2 items) keys never collide."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[TransactionKey, Transaction] = {}

    def add(self, tx: Transaction) -> None:
        """File a new transaction; TransactionError if a live one already has its key."""
        old = self._by_key.get(tx.key)
        if old is not None and old is not tx and not old.terminated:
            raise TransactionError(f"a live transaction already has key {tx.key!r}")
        self._by_key[tx.key] = tx

    def get(self, key: TransactionKey) -> Transaction | None:
        return self._by_key.get(key)

    def match_request(self, request: Request) -> ServerTransaction | None:
        """The server transaction for a retransmitted request or an ACK, if any."""
        tx = self._by_key.get(server_key(request))
        return tx if isinstance(tx, InviteServerTransaction | NonInviteServerTransaction) else None

    def match_response(self, response: Response) -> ClientTransaction | None:
        tx = self._by_key.get(client_key(response))
        return tx if isinstance(tx, InviteClientTransaction | NonInviteClientTransaction) else None

    def match_cancel(self, cancel: Request) -> InviteServerTransaction | None:
        """The INVITE server transaction a CANCEL targets (only while it can still be cancelled or not)."""
        tx = self._by_key.get(cancel_target_key(cancel))
        return tx if isinstance(tx, InviteServerTransaction) else None

    def remove(self, tx: Transaction) -> bool:
        """Drop this transaction (not a newer one filed under the same key); True if it was there."""
        if self._by_key.get(tx.key) is tx:
            del self._by_key[tx.key]
            return True
        return False

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[Transaction]:
        return iter(list(self._by_key.values()))


_NO_REQUEST: Final = Request("OPTIONS", "sip:invalid", Headers([]))  # a client sending bytes has none parsed
