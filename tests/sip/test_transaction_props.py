"""Property tests: any event sequence keeps the four machines' promises (timers, termination, finals)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sipfilter.sip import Request, Response, parse
from sipfilter.sip.timers import ALL_TIMERS
from sipfilter.sip.transaction import (
    Action,
    CancelTimer,
    Deliver,
    Event,
    InviteClientTransaction,
    InviteServerTransaction,
    MessageReceived,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Send,
    SendResponse,
    StartTimer,
    Terminated,
    TimerFired,
    Transaction,
    TransportError,
    TxState,
    ack_for_non2xx,
    response_for,
)


def _request(method: str) -> Request:
    msg = parse(
        f"{method} sip:bob@biloxi.example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK74bf9\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
        "To: <sip:bob@biloxi.example.com>\r\n"
        "Call-ID: prop@atlanta.example.com\r\n"
        f"CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(msg, Request)
    return msg


INVITE = _request("INVITE")
BYE = _request("BYE")
STATUSES = [100, 180, 183, 200, 202, 302, 404, 486, 500, 603]
INVITE_RESPONSES = {s: response_for(INVITE, s, to_tag=None if s == 100 else "t1") for s in STATUSES}
BYE_RESPONSES = {s: response_for(BYE, s, to_tag="t1") for s in STATUSES}
ACK = ack_for_non2xx(INVITE, INVITE_RESPONSES[486])
TIMERS = [*sorted(ALL_TIMERS), "Z"]


def _events(request: Request, responses: dict[int, Response], server: bool) -> st.SearchStrategy[Event]:
    parts: list[st.SearchStrategy[Event]] = [
        st.sampled_from(TIMERS).map(TimerFired),
        st.just(TransportError("x")),
        st.sampled_from(STATUSES).map(lambda s: MessageReceived(responses[s])),
        st.just(MessageReceived(request)),
    ]
    if server:
        parts.append(st.sampled_from(STATUSES).map(lambda s: SendResponse(responses[s])))
        parts.append(st.just(MessageReceived(ACK)))
    # Timers weigh most: they are what moves a machine through its later states.
    return st.one_of(*parts, st.sampled_from(TIMERS).map(TimerFired))


def _run(tx: Transaction, events: list[Event]) -> list[Action]:
    pending: set[str] = set()
    log: list[Action] = []
    first = tx.start()
    for event in [None, *events]:
        if isinstance(event, TimerFired):
            pending.discard(event.name)  # a firing timer is no longer pending (or was stale all along)
        actions = first if event is None else tx.handle(event)
        for i, a in enumerate(actions):
            assert not any(isinstance(x, Terminated) for x in log), f"{a} after Terminated"
            if isinstance(a, StartTimer):
                assert a.name not in pending and a.seconds > 0
                pending.add(a.name)
            elif isinstance(a, CancelTimer):
                assert a.name in pending
                pending.remove(a.name)
            elif isinstance(a, Terminated):
                assert i == len(actions) - 1 and not pending
            log.append(a)
        assert pending == tx.armed_timers
        assert (tx.state is TxState.TERMINATED) == any(isinstance(x, Terminated) for x in log)
    return log


def _check_client_end(log: list[Action]) -> None:
    """A client reports timeout/transport-error (408/503 for the TU) only if no final was delivered."""
    end = next((a for a in log if isinstance(a, Terminated)), None)
    if end is not None and end.status is not None:
        assert not _finals(log)


def _finals(log: list[Action]) -> list[int]:
    return [
        a.msg.status
        for a in log
        if isinstance(a, Deliver) and isinstance(a.msg, Response) and a.msg.status >= 200
    ]


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.lists(_events(INVITE, INVITE_RESPONSES, server=False), max_size=25))
def test_invite_client_properties(reliable: bool, events: list[Event]) -> None:
    tx = InviteClientTransaction(INVITE, reliable=reliable)
    log = _run(tx, events)
    _check_client_end(log)
    finals = _finals(log)
    # The TU hears one non-2xx final at most, never mixed with 2xx; 2xx (forks, retransmissions) may repeat.
    assert sum(s >= 300 for s in finals) <= 1
    assert not (any(s >= 300 for s in finals) and any(s < 300 for s in finals))
    sent = [a.msg for a in log if isinstance(a, Send)]
    assert all(isinstance(m, Request) for m in sent)
    acks = [m for m in sent if isinstance(m, Request) and m.method == "ACK"]
    assert all(m is acks[0] for m in acks)  # always the one ACK, only after a non-2xx final
    assert not acks or any(s >= 300 for s in finals)
    if reliable:
        assert sum(isinstance(m, Request) and m.method == "INVITE" for m in sent) == 1


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.lists(_events(BYE, BYE_RESPONSES, server=False), max_size=25))
def test_non_invite_client_properties(reliable: bool, events: list[Event]) -> None:
    tx = NonInviteClientTransaction(BYE, reliable=reliable)
    log = _run(tx, events)
    _check_client_end(log)
    assert len(_finals(log)) <= 1
    if reliable:
        assert sum(isinstance(a, Send) for a in log) == 1


def _server_sends(log: list[Action]) -> list[Response]:
    out = [a.msg for a in log if isinstance(a, Send)]
    assert all(isinstance(m, Response) for m in out)
    return out  # type: ignore[return-value]


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.lists(_events(INVITE, INVITE_RESPONSES, server=True), max_size=25))
def test_invite_server_properties(reliable: bool, events: list[Event]) -> None:
    tx = InviteServerTransaction(INVITE, reliable=reliable)
    log = _run(tx, events)
    sent = _server_sends(log)
    finals = {m.status for m in sent if m.status >= 200}
    # One non-2xx final however often repeated, or 2xx only (the TU may send several in Accepted).
    assert len(finals) <= 1 or all(200 <= f < 300 for f in finals)
    first_final = next((i for i, m in enumerate(sent) if m.status >= 200), len(sent))
    assert all(m.status >= 200 for m in sent[first_final:])  # nothing provisional after it
    delivered = [a.msg for a in log if isinstance(a, Deliver)]
    assert delivered[0] is INVITE and all(m is ACK for m in delivered[1:])
    if len(delivered) > 1:
        assert finals and min(finals) < 300  # ACKs reach the TU only in Accepted


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.lists(_events(BYE, BYE_RESPONSES, server=True), max_size=25))
def test_non_invite_server_properties(reliable: bool, events: list[Event]) -> None:
    tx = NonInviteServerTransaction(BYE, reliable=reliable)
    log = _run(tx, events)
    sent = _server_sends(log)
    assert len({m.status for m in sent if m.status >= 200}) <= 1
    assert [a.msg for a in log if isinstance(a, Deliver)] == [BYE]
