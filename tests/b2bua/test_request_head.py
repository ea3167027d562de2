"""The one request head the B2BUA builds (wire.request_head), the ACK of a non-2xx answer built from the
INVITE it sent (wire.ack_for_non2xx), and its client transactions being the machines of sip.transaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from b2bua_rig import answer, invite, make_rig, requests_named

from sipfilter.b2bua import wire
from sipfilter.sip import Request, Response, parse
from sipfilter.sip.transaction import (
    InviteClientTransaction,
    MessageReceived,
    NonInviteClientTransaction,
    Send,
    StartTimer,
    TransactionError,
    TxState,
)


def _invite(routes: tuple[str, ...] = ()) -> bytes:
    lines = wire.request_head("INVITE", 7, "udp", "192.0.2.1:5060", "z9hG4bKabc", "<sip:a@x>;tag=1",
                              "<sip:b@y>", "cid@x", routes, 69)  # fmt: skip
    lines.append("Contact: <sip:x@192.0.2.1:5060;transport=udp>")
    return wire.build_request("INVITE", "sip:b@y", lines, b"v=0\r\n")


def test_request_head_order_and_values() -> None:
    head = wire.request_head("BYE", 3, "tls", "h:5061", "z9hG4bKb", "<sip:f>;tag=f", "<sip:t>;tag=t", "c@h",
                             ("<sip:p1;lr>", "<sip:p2;lr>"))  # fmt: skip
    assert head == [
        "Via: SIP/2.0/TLS h:5061;branch=z9hG4bKb;rport",
        "Max-Forwards: 70",
        "Route: <sip:p1;lr>",
        "Route: <sip:p2;lr>",
        "From: <sip:f>;tag=f",
        "To: <sip:t>;tag=t",
        "Call-ID: c@h",
        "CSeq: 3 BYE",
    ]


def test_request_head_parses_back() -> None:
    msg = parse(_invite(("<sip:edge;lr>",)))
    assert isinstance(msg, Request)
    assert msg.method == "INVITE" and msg.cseq.seq == 7 and msg.max_forwards == 69
    assert msg.vias[0].branch == "z9hG4bKabc" and msg.headers.get_all("Route") == ["<sip:edge;lr>"]


def test_ack_for_non2xx_follows_17_1_1_3() -> None:
    ack = parse(wire.ack_for_non2xx(_invite(("<sip:edge;lr>",)), "<sip:b@y>;tag=callee"))
    assert isinstance(ack, Request)
    assert ack.method == "ACK" and str(ack.uri) == "sip:b@y"
    assert [str(v.branch) for v in ack.vias] == ["z9hG4bKabc"]  # the INVITE's top Via: same transaction
    assert ack.headers.get_all("Route") == ["<sip:edge;lr>"]
    assert ack.headers.get("From") == "<sip:a@x>;tag=1" and ack.headers.get("To") == "<sip:b@y>;tag=callee"
    assert ack.call_id == "cid@x" and ack.cseq.seq == 7 and ack.cseq.method == "ACK"
    assert ack.max_forwards == 70 and not ack.body and ack.headers.get("Contact") is None


def test_machine_sends_bytes_and_acks_a_non2xx_with_the_builder() -> None:
    data = _invite()
    def ack(resp: Response) -> bytes:
        return wire.ack_for_non2xx(data, str(resp.headers.get("To")))

    tx = InviteClientTransaction(data, key=("z9hG4bKabc", "INVITE"), ack=ack)
    out = tx.start()
    assert out[0] == Send(data) and StartTimer("A", 0.5) in out and StartTimer("B", 32.0) in out
    busy = parse(
        b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport\r\n"
        b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=z\r\nCall-ID: cid@x\r\nCSeq: 7 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    sent = [a.msg for a in tx.handle(MessageReceived(busy)) if isinstance(a, Send)]
    assert sent == [wire.ack_for_non2xx(data, "<sip:b@y>;tag=z")]
    assert tx.handle(MessageReceived(busy)) == [Send(sent[0])]  # a retransmitted 486: the same ACK again
    assert tx.ack is None and tx.ack_sent == sent[0]


def test_machine_sending_bytes_needs_its_key() -> None:
    with pytest.raises(TransactionError):
        NonInviteClientTransaction(b"BYE sip:x SIP/2.0\r\n\r\n")
    with pytest.raises(TransactionError):
        InviteClientTransaction(b"INVITE sip:x SIP/2.0\r\n\r\n", key=("z9hG4bKx", "INVITE"))  # no ACK builder


def test_the_b2bua_runs_the_sip_client_machines(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.from_dialer(invite())
    (b_inv,) = requests_named(rig.outside.take(), "INVITE")
    ctx = rig.b2b.client_tx[str(b_inv.vias[0].branch)]
    assert isinstance(ctx.machine, InviteClientTransaction) and ctx.machine.state is TxState.CALLING
    assert ctx.machine.armed_timers == {"A", "B"} and ctx.retransmitting
    rig.clock.advance(0.5)  # Timer A: the machine's retransmission goes out
    assert [bytes(m) for m in requests_named(rig.outside.take(), "INVITE")] == [bytes(b_inv)]
    rig.from_carrier(answer(b_inv, 180))
    assert ctx.machine.state is TxState.PROCEEDING and not ctx.retransmitting
    rig.from_carrier(answer(b_inv, 486))
    (ack,) = requests_named(rig.outside.take(), "ACK")
    assert ack.vias[0].branch == b_inv.vias[0].branch and ctx.machine.state is TxState.COMPLETED
    rig.clock.advance(64 * 0.5)  # Timer D: the transaction is gone
    assert rig.b2b.client_tx == {}
