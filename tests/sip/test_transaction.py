"""The four §17 machines (with RFC 6026) driven through every state and timer, time advanced by hand."""

from __future__ import annotations

import pytest

from sipfilter.sip import Request, Response, parse
from sipfilter.sip.timers import TimerConfig
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
    TransactionError,
    TransportError,
    TransportFailed,
    TxState,
)

BRANCH = "z9hG4bK776asdhds"


def invite(branch: str = BRANCH) -> Request:
    msg = parse(
        b"INVITE sip:+33612345678@carrier.example.net;user=phone SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=" + branch.encode() + b";rport\r\n"
        b"Via: SIP/2.0/UDP dialer.example.com;branch=z9hG4bKdialer\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:edge1.carrier.example.net;lr>\r\n"
        b"Route: <sip:edge2.carrier.example.net;lr>\r\n"
        b"From: <sip:+33188776655@dialer.example.com>;tag=1928301774\r\n"
        b"To: <sip:+33612345678@carrier.example.net>\r\n"
        b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Timestamp: 54\r\n"
        b"Contact: <sip:dialer@192.0.2.10:5060>\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: 4\r\n"
        b"\r\n"
        b"v=0\r\n"
    )
    assert isinstance(msg, Request)
    return msg


def options(branch: str = "z9hG4bKopt1") -> Request:
    msg = parse(
        b"OPTIONS sip:carrier.example.net SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=" + branch.encode() + b"\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:probe@sipfilter.example.com>;tag=98765\r\n"
        b"To: <sip:carrier.example.net>\r\n"
        b"Call-ID: opt-1@sipfilter\r\n"
        b"CSeq: 7 OPTIONS\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    assert isinstance(msg, Request)
    return msg


def response(req: Request, status: int, tag: str | None = "as83kd9bs") -> Response:
    via = b"".join(b"Via: " + v.encode() + b"\r\n" for v in req.headers.get_lines("via"))
    to = (req.headers.get("to") or "") + (f";tag={tag}" if tag and status > 100 else "")
    msg = parse(
        f"SIP/2.0 {status} Whatever\r\n".encode()
        + via
        + f"From: {req.headers.get('from')}\r\nTo: {to}\r\nCall-ID: {req.call_id}\r\n".encode()
        + f"CSeq: {req.cseq.seq} {req.method}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(msg, Response)
    return msg


def ack_2xx(req: Request) -> Request:
    """An ACK for a 2xx as a dialog would send it: new branch, so it never matches by §17 keys."""
    msg = parse(
        b"ACK sip:+33612345678@carrier.example.net;user=phone SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnewack\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:+33188776655@dialer.example.com>;tag=1928301774\r\n"
        b"To: <sip:+33612345678@carrier.example.net>;tag=as83kd9bs\r\n"
        b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
        b"CSeq: 314159 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(msg, Request)
    return msg


class Harness:
    """Plays the caller: keeps the pending timers, advances a virtual clock, logs (time, action)."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self.now = 0.0
        self.due: dict[str, float] = {}
        self.log: list[tuple[float, Action]] = []
        self.done = False

    def apply(self, actions: list[Action]) -> list[Action]:
        for i, a in enumerate(actions):
            assert not self.done, f"action after Terminated: {a}"
            self.log.append((self.now, a))
            if isinstance(a, StartTimer):
                assert a.seconds > 0
                self.due[a.name] = self.now + a.seconds
            elif isinstance(a, CancelTimer):
                assert a.name in self.due, f"cancel of a timer that is not pending: {a.name}"
                del self.due[a.name]
            elif isinstance(a, Terminated):
                assert i == len(actions) - 1, "Terminated must be the last action"
                assert not self.due, f"terminated with timers still pending: {self.due}"
                self.done = True
        assert set(self.due) == set(self.tx.armed_timers)
        return actions

    def start(self) -> list[Action]:
        return self.apply(self.tx.start())

    def feed(self, event: Event) -> list[Action]:
        return self.apply(self.tx.handle(event))

    def recv(self, msg: Request | Response) -> list[Action]:
        return self.feed(MessageReceived(msg))

    def advance(self, until: float) -> None:
        while self.due:
            name, when = min(self.due.items(), key=lambda item: item[1])
            if when > until + 1e-9:
                break
            del self.due[name]
            self.now = when
            self.apply(self.tx.handle(TimerFired(name)))
        self.now = until

    def sends(self, since: float = -1.0) -> list[tuple[float, Request | Response]]:
        return [(t, a.msg) for t, a in self.log if isinstance(a, Send) and t > since]

    def send_times(self, since: float = -1.0) -> list[float]:
        return [t for t, _ in self.sends(since)]

    def terminated(self) -> tuple[float, str] | None:
        for t, a in self.log:
            if isinstance(a, Terminated):
                return t, a.reason
        return None


# --- INVITE client (Figure 5 + RFC 6026) ----------------------------------------------------------------
def test_invite_client_start_unreliable() -> None:
    req = invite()
    tx = InviteClientTransaction(req)
    assert tx.start() == [Send(req), StartTimer("A", 0.5), StartTimer("B", 32.0)]
    assert tx.state is TxState.CALLING


def test_invite_client_timer_a_doubles_until_b() -> None:
    h = Harness(InviteClientTransaction(invite()))
    h.start()
    h.advance(40.0)
    # A fires at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 (intervals 0.5, 1, 2, 4, 8, 16): no T2 cap for INVITE.
    assert h.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert [s.msg.method for _, s in h.log if isinstance(s, Send)] == ["INVITE"] * 7  # type: ignore[union-attr]
    flags = [a.retransmission for _, a in h.log if isinstance(a, Send)]
    assert flags == [False] + [True] * 6
    assert h.terminated() == (32.0, "timeout")
    assert h.log[-2:] == [(32.0, CancelTimer("A")), (32.0, Terminated("timeout"))]
    assert Terminated("timeout").status == 408
    assert h.tx.state is TxState.TERMINATED


def test_invite_client_custom_t1_scales_every_timer() -> None:
    h = Harness(InviteClientTransaction(invite(), timers=TimerConfig(t1=0.1, t2=4.0)))
    h.start()
    h.advance(10.0)
    assert h.send_times() == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3])
    assert h.terminated() == (pytest.approx(6.4), "timeout")


def test_invite_client_provisional_stops_retransmission_and_timer_b() -> None:
    req = invite()
    h = Harness(InviteClientTransaction(req))
    h.start()
    h.advance(0.7)
    ringing = response(req, 180)
    assert isinstance(h.tx, InviteClientTransaction) and not h.tx.cancellable  # §9.1: not before a 1xx
    assert h.recv(ringing) == [CancelTimer("A"), CancelTimer("B"), Deliver(ringing)]
    assert h.tx.state is TxState.PROCEEDING and h.tx.cancellable
    h.advance(500.0)  # the TU's ring timeout governs from here, not the transaction
    assert h.send_times() == [0.0, 0.5]
    assert h.terminated() is None
    assert h.recv(response(req, 183)) == [Deliver(response(req, 183))]
    assert h.feed(TimerFired("B")) == []  # a late B (cancelled) does nothing


def test_invite_client_non2xx_acks_and_absorbs_with_timer_d() -> None:
    req = invite()
    h = Harness(InviteClientTransaction(req))
    h.start()
    h.advance(0.2)
    h.recv(response(req, 180))
    h.advance(2.0)
    busy = response(req, 486)
    out = h.recv(busy)
    assert h.tx.state is TxState.COMPLETED
    assert isinstance(out[0], Send) and out[0].msg.method == "ACK"  # type: ignore[union-attr]
    assert out[1:] == [Deliver(busy), StartTimer("D", 32.0)]
    ack_send = out[0]
    # The retransmitted 486 is ACKed again with the very same ACK and not passed to the TU.
    h.advance(3.0)
    assert h.recv(response(req, 486)) == [ack_send]
    assert h.recv(response(req, 180)) == []
    assert h.recv(response(req, 200)) == []
    h.advance(33.9)
    assert h.terminated() is None
    h.advance(34.0)
    assert h.terminated() == (34.0, "normal")
    assert Terminated("normal").status is None
    assert h.recv(response(req, 486)) == []


def test_invite_client_ack_contents() -> None:
    req = invite()
    tx = InviteClientTransaction(req)
    tx.start()
    tx.handle(MessageReceived(response(req, 603, tag="decline7")))
    ack = tx.ack
    assert ack is not None
    wire = parse(ack.serialize())  # valid on the wire, not only as an object
    assert isinstance(wire, Request)
    assert wire.method == "ACK" and wire.uri == req.uri
    assert wire.call_id == req.call_id
    assert wire.headers.get("from") == req.headers.get("from")
    assert wire.to.tag == "decline7" and wire.to.uri == req.to.uri
    assert (wire.cseq.seq, wire.cseq.method) == (314159, "ACK")
    assert wire.headers.get_lines("via") == [req.headers.get_lines("via")[0]]  # top Via only, same branch
    assert wire.vias[0].branch == BRANCH
    assert wire.headers.get_lines("route") == req.headers.get_lines("route")
    assert wire.body == b"" and "contact" not in wire.headers and "content-type" not in wire.headers
    assert wire.max_forwards == 70


def test_invite_client_2xx_accepted_passes_retransmissions_to_tu() -> None:
    req = invite()
    h = Harness(InviteClientTransaction(req))
    h.start()
    h.advance(1.0)
    ok = response(req, 200)
    assert h.recv(ok) == [CancelTimer("A"), CancelTimer("B"), Deliver(ok), StartTimer("M", 32.0)]
    assert h.tx.state is TxState.ACCEPTED
    h.advance(1.6)
    assert h.recv(ok) == [Deliver(ok)]  # the dialog re-sends its ACK
    assert h.recv(response(req, 486)) == []
    assert h.recv(response(req, 180)) == []
    h.advance(40.0)
    assert h.terminated() == (33.0, "normal")
    assert h.send_times() == [0.0, 0.5]  # the transaction itself never ACKs a 2xx
    assert isinstance(h.tx, InviteClientTransaction) and h.tx.ack is None


def test_invite_client_2xx_after_provisional() -> None:
    req = invite()
    h = Harness(InviteClientTransaction(req))
    h.start()
    h.recv(response(req, 180))
    assert h.recv(response(req, 200)) == [Deliver(response(req, 200)), StartTimer("M", 32.0)]
    assert h.tx.state is TxState.ACCEPTED


def test_invite_client_reliable() -> None:
    req = invite()
    h = Harness(InviteClientTransaction(req, reliable=True))
    assert h.start() == [Send(req), StartTimer("B", 32.0)]
    h.advance(31.0)
    assert h.send_times() == [0.0]  # no Timer A over TCP/TLS
    out = h.recv(response(req, 500))
    assert [type(a) for a in out] == [CancelTimer, Send, Deliver, Terminated]
    assert out[-1] == Terminated("normal")  # Timer D is zero: no absorption window
    h2 = Harness(InviteClientTransaction(req, reliable=True))
    h2.start()
    h2.advance(40.0)
    assert h2.terminated() == (32.0, "timeout")


def test_invite_client_transport_error() -> None:
    h = Harness(InviteClientTransaction(invite()))
    h.start()
    out = h.feed(TransportError("ICMP port unreachable"))
    assert out == [CancelTimer("A"), CancelTimer("B"), Terminated("transport-error")]
    assert Terminated("transport-error").status == 503
    assert h.feed(TransportError()) == []
    assert h.feed(TimerFired("A")) == []


def test_client_transport_error_after_final_does_not_contradict_it() -> None:
    req = invite()
    h = Harness(InviteClientTransaction(req))
    h.start()
    h.recv(response(req, 486))
    assert h.feed(TransportError("ACK not sent")) == [TransportFailed("ACK not sent")]
    assert h.tx.state is TxState.COMPLETED
    assert len(h.recv(response(req, 486))) == 1  # 486 again: still ACKed
    h2 = Harness(InviteClientTransaction(req))
    h2.start()
    h2.recv(response(req, 200))
    assert h2.feed(TransportError()) == [TransportFailed()]
    h2.advance(40.0)
    assert h2.terminated() == (32.0, "normal")
    h3 = Harness(NonInviteClientTransaction(options()))
    h3.start()
    h3.recv(response(options(), 200))
    assert h3.feed(TransportError()) == [TransportFailed()]
    assert h3.tx.state is TxState.COMPLETED


def test_invite_client_misuse() -> None:
    with pytest.raises(TransactionError):
        InviteClientTransaction(options())
    tx = InviteClientTransaction(invite())
    assert tx.state is TxState.CALLING and not tx.terminated
    with pytest.raises(TransactionError):
        tx.handle(TimerFired("A"))  # events before start() are a caller bug
    tx.start()
    with pytest.raises(TransactionError):
        tx.start()
    with pytest.raises(TransactionError):
        tx.handle(SendResponse(response(invite(), 200)))
    assert tx.handle(MessageReceived(invite())) == []  # a request is not for a client transaction


# --- non-INVITE client (Figure 6) ------------------------------------------------------------------------
def test_non_invite_client_timer_e_capped_at_t2_until_f() -> None:
    req = options()
    h = Harness(NonInviteClientTransaction(req))
    assert h.start() == [Send(req), StartTimer("E", 0.5), StartTimer("F", 32.0)]
    assert h.tx.state is TxState.TRYING
    h.advance(40.0)
    # Intervals 0.5, 1, 2, 4, then capped at T2 = 4.
    assert h.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert h.terminated() == (32.0, "timeout")


def test_non_invite_client_small_t2_cap() -> None:
    h = Harness(NonInviteClientTransaction(options(), timers=TimerConfig(t1=0.5, t2=1.0)))
    h.start()
    h.advance(5.0)
    assert h.send_times() == [0.0, 0.5, 1.5, 2.5, 3.5, 4.5]


def test_non_invite_client_proceeding_retransmits_at_t2() -> None:
    req = options()
    h = Harness(NonInviteClientTransaction(req))
    h.start()
    h.advance(1.0)
    trying = response(req, 100)
    assert h.recv(trying) == [Deliver(trying)]
    assert h.tx.state is TxState.PROCEEDING
    h.advance(40.0)
    # E armed at 0.5 with 1 s fires at 1.5, then every T2 while Proceeding; F still ends it at 32.
    assert h.send_times() == [0.0, 0.5, 1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert h.terminated() == (32.0, "timeout")


def test_non_invite_client_final_then_timer_k() -> None:
    req = options()
    h = Harness(NonInviteClientTransaction(req))
    h.start()
    h.advance(0.6)
    h.recv(response(req, 100))
    ok = response(req, 200)
    assert h.recv(ok) == [CancelTimer("E"), CancelTimer("F"), Deliver(ok), StartTimer("K", 5.0)]
    assert h.tx.state is TxState.COMPLETED
    assert h.recv(ok) == []  # retransmitted final absorbed
    assert h.recv(response(req, 404)) == []
    h.advance(5.5)
    assert h.terminated() is None
    h.advance(5.6)
    assert h.terminated() == (pytest.approx(5.6), "normal")
    assert h.send_times() == [0.0, 0.5]


def test_non_invite_client_reliable() -> None:
    req = options()
    h = Harness(NonInviteClientTransaction(req, reliable=True))
    assert h.start() == [Send(req), StartTimer("F", 32.0)]
    h.advance(10.0)
    assert h.send_times() == [0.0]
    out = h.recv(response(req, 404))
    assert out == [CancelTimer("F"), Deliver(response(req, 404)), Terminated("normal")]


def test_non_invite_client_transport_error_and_misuse() -> None:
    h = Harness(NonInviteClientTransaction(options()))
    h.start()
    h.recv(response(options(), 100))
    assert h.feed(TransportError()) == [CancelTimer("E"), CancelTimer("F"), Terminated("transport-error")]
    for req in (invite(), ack_2xx(invite())):
        with pytest.raises(TransactionError):
            NonInviteClientTransaction(req)
    fresh = NonInviteClientTransaction(options())
    assert fresh.state is TxState.TRYING
    with pytest.raises(TransactionError):
        fresh.handle(MessageReceived(response(options(), 200)))


# --- INVITE server (Figure 7 + RFC 6026) ----------------------------------------------------------------
def test_invite_server_sends_100_trying_after_200ms() -> None:
    req = invite()
    h = Harness(InviteServerTransaction(req))
    assert h.start() == [Deliver(req), StartTimer("100", 0.2)]
    assert h.tx.state is TxState.PROCEEDING
    assert h.recv(invite()) == []  # retransmission before anything was sent: nothing to repeat
    h.advance(0.2)
    ((t, trying),) = h.sends()
    assert t == pytest.approx(0.2)
    assert isinstance(trying, Response) and trying.status == 100
    wire = parse(trying.serialize())
    assert isinstance(wire, Response)
    assert wire.headers.get_lines("via") == req.headers.get_lines("via")
    assert wire.to.tag is None and wire.headers.get("from") == req.headers.get("from")
    assert wire.call_id == req.call_id and wire.headers.get("cseq") == "314159 INVITE"
    assert wire.headers.get("timestamp") == "54"
    # An INVITE retransmission now gets the 100 again.
    out = h.recv(invite())
    assert len(out) == 1 and isinstance(out[0], Send) and out[0].msg is trying and out[0].retransmission


def test_invite_server_tu_answer_cancels_trying_timer() -> None:
    req = invite()
    h = Harness(InviteServerTransaction(req))
    h.start()
    h.advance(0.1)
    ringing = response(req, 180)
    assert h.feed(SendResponse(ringing)) == [CancelTimer("100"), Send(ringing)]
    h.advance(5.0)
    assert [m for _, m in h.sends()] == [ringing]  # no automatic 100 after the TU spoke
    assert h.recv(invite()) == [Send(ringing, True)]
    progress = response(req, 183)
    assert h.feed(SendResponse(progress)) == [Send(progress)]
    assert h.recv(invite()) == [Send(progress, True)]  # the most recent provisional


def test_invite_server_non2xx_timer_g_until_h() -> None:
    req = invite()
    h = Harness(InviteServerTransaction(req))
    h.start()
    busy = response(req, 486)
    assert h.feed(SendResponse(busy)) == [
        CancelTimer("100"), Send(busy), StartTimer("G", 0.5), StartTimer("H", 32.0),
    ]  # fmt: skip
    assert h.tx.state is TxState.COMPLETED
    h.advance(40.0)
    # G: 0.5, 1, 2, 4, 4, ... (capped at T2) until H at 64*T1 with no ACK.
    assert h.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(m is busy for _, m in h.sends())
    assert h.terminated() == (32.0, "timeout")


def test_invite_server_retransmitted_invite_in_completed_and_late_tu_responses() -> None:
    req = invite()
    h = Harness(InviteServerTransaction(req))
    h.start()
    forbidden = response(req, 403)
    h.feed(SendResponse(forbidden))
    assert h.recv(invite()) == [Send(forbidden, True)]
    assert h.feed(SendResponse(response(req, 180))) == []  # discarded after a final response
    assert h.feed(SendResponse(response(req, 200))) == []
    assert h.recv(response(req, 200)) == []  # responses are not for a server transaction


def test_invite_server_ack_confirms_then_timer_i() -> None:
    req = invite()
    h = Harness(InviteServerTransaction(req))
    h.start()
    h.feed(SendResponse(response(req, 603)))
    h.advance(2.0)
    ack = InviteClientTransaction(req)  # the peer's ACK, built as its client transaction would
    ack.start()
    ack.handle(MessageReceived(response(req, 603)))
    assert ack.ack is not None
    assert h.recv(ack.ack) == [CancelTimer("G"), CancelTimer("H"), StartTimer("I", 5.0)]
    assert h.tx.state is TxState.CONFIRMED
    assert h.recv(ack.ack) == []  # ACK retransmissions absorbed
    assert h.recv(invite()) == []
    h.advance(6.9)
    assert h.terminated() is None
    h.advance(7.0)
    assert h.terminated() == (7.0, "normal")
    assert h.send_times() == [0.0, 0.5, 1.5]


def test_invite_server_2xx_accepted_state() -> None:
    req = invite()
    h = Harness(InviteServerTransaction(req))
    h.start()
    ok = response(req, 200)
    assert h.feed(SendResponse(ok)) == [CancelTimer("100"), Send(ok), StartTimer("L", 32.0)]
    assert h.tx.state is TxState.ACCEPTED
    h.advance(0.5)
    assert h.feed(SendResponse(ok)) == [Send(ok, True)]  # the dialog's 2xx retransmission goes out
    assert h.recv(invite()) == []  # retransmitted INVITE absorbed (the dialog resends the 2xx)
    ack = ack_2xx(req)
    assert h.recv(ack) == [Deliver(ack)]
    assert h.feed(SendResponse(response(req, 486))) == []
    h.advance(40.0)
    assert h.terminated() == (32.0, "normal")


def test_invite_server_reliable() -> None:
    req = invite()
    h = Harness(InviteServerTransaction(req, reliable=True))
    h.start()
    busy = response(req, 486)
    assert h.feed(SendResponse(busy)) == [CancelTimer("100"), Send(busy), StartTimer("H", 32.0)]
    h.advance(10.0)
    assert h.send_times() == [0.0]  # no Timer G over TCP/TLS
    ack = ack_2xx(req)  # any ACK handed to the transaction counts as the ACK for the non-2xx here
    assert h.recv(ack) == [CancelTimer("H"), Terminated("normal")]  # Timer I is zero
    h2 = Harness(InviteServerTransaction(req, reliable=True))
    h2.start()
    h2.feed(SendResponse(busy))
    h2.advance(40.0)
    assert h2.terminated() == (32.0, "timeout")


def test_invite_server_transport_error_and_misuse() -> None:
    req = invite()
    h = Harness(InviteServerTransaction(req))
    h.start()
    h.feed(SendResponse(response(req, 480)))
    assert h.feed(TransportError()) == [
        CancelTimer("G"), CancelTimer("H"), Terminated("transport-error"),
    ]  # fmt: skip
    assert h.feed(SendResponse(response(req, 480))) == []
    with pytest.raises(TransactionError):
        InviteServerTransaction(options())
    tx = InviteServerTransaction(req)
    bad = response(req, 200)
    bad.status = 99
    with pytest.raises(TransactionError):
        tx.handle(SendResponse(bad))


def test_invite_server_transport_error_keeps_proceeding_and_accepted() -> None:
    req = invite()
    h = Harness(InviteServerTransaction(req))
    h.start()
    ringing = response(req, 180)
    h.feed(SendResponse(ringing))
    assert h.feed(TransportError("EHOSTUNREACH")) == [TransportFailed("EHOSTUNREACH")]
    assert h.tx.state is TxState.PROCEEDING
    assert h.recv(invite()) == [Send(ringing, True)]  # still absorbing (RFC 6026 §7.1)
    ok = response(req, 200)
    h.feed(SendResponse(ok))
    assert h.feed(TransportError()) == [TransportFailed()]
    assert h.tx.state is TxState.ACCEPTED
    assert h.recv(invite()) == []
    h.advance(40.0)
    assert h.terminated() == (32.0, "normal")  # Timer L still ends it


# --- non-INVITE server (Figure 8) ------------------------------------------------------------------------
def test_non_invite_server_full_walk() -> None:
    req = options()
    h = Harness(NonInviteServerTransaction(req))
    assert h.start() == [Deliver(req)]
    assert h.tx.state is TxState.TRYING
    assert h.recv(options()) == []  # Trying absorbs retransmissions
    trying = response(req, 100)
    assert h.feed(SendResponse(trying)) == [Send(trying)]
    assert h.tx.state is TxState.PROCEEDING
    assert h.recv(options()) == [Send(trying, True)]
    h.advance(1.0)
    ok = response(req, 200)
    assert h.feed(SendResponse(ok)) == [Send(ok), StartTimer("J", 32.0)]
    assert h.tx.state is TxState.COMPLETED
    assert h.recv(options()) == [Send(ok, True)]
    assert h.feed(SendResponse(response(req, 500))) == []  # second final discarded
    h.advance(32.9)
    assert h.terminated() is None
    h.advance(33.0)
    assert h.terminated() == (33.0, "normal")
    assert h.recv(options()) == []


def test_non_invite_server_final_from_trying_and_reliable() -> None:
    req = options()
    h = Harness(NonInviteServerTransaction(req))
    h.start()
    h.feed(SendResponse(response(req, 404)))
    assert h.tx.state is TxState.COMPLETED
    r = Harness(NonInviteServerTransaction(req, reliable=True))
    r.start()
    ok = response(req, 200)
    assert r.feed(SendResponse(ok)) == [Send(ok), Terminated("normal")]  # Timer J is zero


def test_non_invite_server_transport_error_and_misuse() -> None:
    h = Harness(NonInviteServerTransaction(options()))
    h.start()
    assert h.feed(TransportError()) == [Terminated("transport-error")]
    for req in (invite(), ack_2xx(invite())):
        with pytest.raises(TransactionError):
            NonInviteServerTransaction(req)
