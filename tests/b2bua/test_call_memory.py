"""A finished call is freed by reference counting alone, once its transactions are forgotten: no call
object waits for the cyclic GC (whose passes over live calls cost CPU and pause the loop under load)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from b2bua_rig import CARRIER1, DIALER, FakeEndpoint, StubPolicy, answer, invite, write_config
from test_wheel import FakeLoop

from sipfilter.b2bua.calls import Call, ClientTx, ServerTx
from sipfilter.b2bua.core import B2BUA, compile_runtime
from sipfilter.b2bua.wheel import TimerWheel
from sipfilter.configure import load_config
from sipfilter.sip import ParseError, parse


def _alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


@pytest.fixture(name="no_gc")
def _no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_ended_calls_leave_no_cycles_behind(tmp_path: Path, no_gc: None) -> None:
    loop = FakeLoop()
    wheel = TimerWheel(loop)  # type: ignore[arg-type]  # the production scheduler, on a manual clock
    policy = StubPolicy()
    policy.reject.add("+33612000009")
    inside, outside = FakeEndpoint("inside", 5060), FakeEndpoint("outside", 5080)
    b2b = B2BUA(compile_runtime(load_config(write_config(tmp_path)), policy, store=None), parse=parse,
                parse_error=ParseError, endpoints={"inside": [inside], "outside": [outside]},
                scheduler=wheel.call_later, clock=loop.time)  # fmt: skip
    before = (_alive(Call), _alive(ClientTx), _alive(ServerTx))
    for i in range(5):
        # A relayed call: INVITE, 180, 200, ACK, BYE from the dialer, the carrier's 200.
        raw = invite(call_id=f"full-{i}", body=b"v=0\r\n")
        b2b.on_datagram(inside, raw, DIALER)
        b_inv = next(parse(d) for d, _ in outside.sent if d.startswith(b"INVITE"))
        outside.sent.clear()
        b2b.on_datagram(outside, answer(b_inv, 180), CARRIER1)
        b2b.on_datagram(outside, answer(b_inv, 200, body=b"v=0\r\n"), CARRIER1)
        ok = parse(inside.sent[-1][0])
        inside.sent.clear()
        a_inv = parse(raw)
        dialog = (f"sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5999;branch=z9hG4bK{i}{{b}}\r\n"
                  f"Max-Forwards: 70\r\nFrom: {a_inv.headers.get('From')}\r\nTo: {ok.headers.get('To')}\r\n"
                  f"Call-ID: full-{i}\r\n")  # fmt: skip
        end = "\r\nContent-Length: 0\r\n\r\n"
        b2b.on_datagram(inside, f"ACK {dialog.format(b='a')}CSeq: 10 ACK{end}".encode(), DIALER)
        b2b.on_datagram(inside, f"BYE {dialog.format(b='b')}CSeq: 11 BYE{end}".encode(), DIALER)
        b_bye = next(parse(d) for d, _ in outside.sent if d.startswith(b"BYE"))
        b2b.on_datagram(outside, answer(b_bye, 200), CARRIER1)
        # A rejected call and its ACK.
        rejected = invite("+33612000009", call_id=f"rejected-{i}")
        b2b.on_datagram(inside, rejected, DIALER)
        final = parse(inside.sent[-1][0])
        assert final.status == 603
        ack = rejected.replace(b"INVITE sip", b"ACK sip").replace(b"10 INVITE", b"10 ACK")
        ack = ack.replace(b"To: <sip:+33612000009@10.0.0.5>", f"To: {final.headers.get('To')}".encode())
        b2b.on_datagram(inside, ack, DIALER)
        inside.sent.clear()
        outside.sent.clear()
    assert _alive(Call) - before[0] == 10  # all still remembered (transactions answer retransmissions)
    loop.run_until(loop.now + 300)  # every transaction timer (64*T1, T4) fires
    assert b2b.active_calls == 0 and not b2b.server_tx and not b2b.client_tx
    # With the cyclic GC off, only reference counting could have freed them.
    assert (_alive(Call), _alive(ClientTx), _alive(ServerTx)) == before
