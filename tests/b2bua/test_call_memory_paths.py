"""Every way a call ends leaves nothing behind: no call, transaction or timer in the B2BUA's tables, and no
reference cycle for the cyclic GC (which `sipfilter run` rarely runs in full: a cycle per call would hold
RAM until it does). Each scenario runs with the GC off, on the production timer wheel and a manual loop."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from b2bua_rig import CARRIER1, CARRIER2, DIALER, FakeEndpoint, StubPolicy, answer, invite, write_config
from test_wheel import FakeLoop

from sipfilter.b2bua.calls import Call, ClientTx, Leg, ServerTx
from sipfilter.b2bua.core import B2BUA, compile_runtime
from sipfilter.b2bua.wheel import TimerWheel, WheelTimer
from sipfilter.configure import load_config
from sipfilter.sip import ParseError, Request, parse
from sipfilter.stores import open_store

KINDS = (Call, ClientTx, ServerTx, Leg, WheelTimer)


@dataclass
class Run:
    b2b: B2BUA
    inside: FakeEndpoint
    outside: FakeEndpoint
    loop: FakeLoop
    policy: StubPolicy

    def dialer(self, data: bytes) -> None:
        self.b2b.on_datagram(self.inside, data, DIALER)

    def carrier(self, data: bytes, addr: tuple[str, int] = CARRIER1) -> None:
        self.b2b.on_datagram(self.outside, data, addr)

    def to_carrier(self, method: str) -> Request:
        """The last `method` request sent to the carrier (the sent list is cleared)."""
        found = [m for m in (parse(d) for d, _ in self.outside.sent) if m.is_request and m.method == method]
        self.outside.sent.clear()
        assert found, f"no {method} sent to the carrier"
        last = found[-1]
        assert isinstance(last, Request)
        return last

    def to_dialer(self) -> list[Any]:
        out = [parse(d) for d, _ in self.inside.sent]
        self.inside.sent.clear()
        return out

    def wait(self, seconds: float) -> None:
        self.loop.run_until(self.loop.now + seconds)


def _ack(raw_invite: bytes, final: Any) -> bytes:
    """The dialer's ACK of a non-2xx final answer (same branch, the answer's To tag)."""
    req = parse(raw_invite)
    ack = raw_invite.replace(b"INVITE sip", b"ACK sip", 1).replace(b"10 INVITE", b"10 ACK")
    return ack.replace(f"To: {req.headers.get('To')}".encode(), f"To: {final.headers.get('To')}".encode())


def _ack_final(run: Any, raw_invite: bytes, status: int | None = None) -> None:
    """The dialer ACKs the last non-2xx final answer it got: with `status`, or any error (None)."""
    final = [m for m in run.to_dialer() if not m.is_request and (
        m.status == status if status is not None else m.status >= 400)][-1]
    run.dialer(_ack(raw_invite, final))


def _dialog(raw_invite: bytes, ok: Any, method: str, cseq: int, branch: str, body: bytes = b"") -> bytes:
    """An in-dialog request from the dialer on the A-leg that `ok` (our 2xx) established."""
    req = parse(raw_invite)
    return (f"{method} sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5999;branch=z9hG4bK{branch}\r\n"
            f"Max-Forwards: 70\r\nFrom: {req.headers.get('From')}\r\nTo: {ok.headers.get('To')}\r\n"
            f"Call-ID: {req.call_id}\r\nCSeq: {cseq} {method}\r\n"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip


def _from_carrier(b_inv: Any, method: str, cseq: int, branch: str) -> bytes:
    """An in-dialog request from the carrier on the B-leg of `b_inv` (it answered with tag carriertag)."""
    head = (f"{method} sip:sipfilter@127.0.0.1:5080 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CARRIER1[0]}:{CARRIER1[1]};branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\n"
            f"From: {b_inv.headers.get('To')};tag=carriertag\r\nTo: {b_inv.headers.get('From')}\r\n"
            f"Call-ID: {b_inv.call_id}\r\nCSeq: {cseq} {method}\r\n")  # fmt: skip
    return (head + "Content-Length: 0\r\n\r\n").encode()


def _answered(run: Run, raw: bytes) -> tuple[Any, Any]:
    """INVITE relayed, 180 and 200 from the carrier: (the B-leg INVITE, our 2xx to the dialer)."""
    run.dialer(raw)
    b_inv = run.to_carrier("INVITE")
    run.carrier(answer(b_inv, 180))
    run.carrier(answer(b_inv, 200, body=b"v=0\r\n"))
    ok = run.to_dialer()[-1]
    assert ok.status == 200
    return b_inv, ok


def full_call_bye_from_carrier(run: Run) -> None:
    raw = invite(call_id="c-bye-carrier", body=b"v=0\r\n")
    b_inv, ok = _answered(run, raw)
    run.dialer(_dialog(raw, ok, "ACK", 10, "a1"))
    run.carrier(_from_carrier(b_inv, "BYE", 2, "cb1"))
    bye = [m for m in run.to_dialer() if m.is_request and m.method == "BYE"][-1]
    run.dialer(answer(bye, 200, to_tag=""))


def reinvite_and_info(run: Run) -> None:
    raw = invite(call_id="c-reinvite", body=b"v=0\r\n")
    b_inv, ok = _answered(run, raw)
    run.dialer(_dialog(raw, ok, "ACK", 10, "a1"))
    run.dialer(_dialog(raw, ok, "INVITE", 11, "ri1", b"v=0\r\n"))  # re-INVITE from the dialer
    b_re = run.to_carrier("INVITE")
    run.carrier(answer(b_re, 200, body=b"v=0\r\n"))
    run.to_dialer()
    run.dialer(_dialog(raw, ok, "ACK", 11, "ri2"))
    run.carrier(_from_carrier(b_inv, "INFO", 2, "info1"))  # INFO from the carrier, answered by the dialer
    info = [m for m in run.to_dialer() if m.is_request and m.method == "INFO"][-1]
    run.dialer(answer(info, 200, to_tag=""))
    run.dialer(_dialog(raw, ok, "BYE", 12, "b1"))
    run.carrier(answer(run.to_carrier("BYE"), 200))


def cancel_while_ringing(run: Run) -> None:
    raw = invite(call_id="c-cancel")
    run.dialer(raw)
    b_inv = run.to_carrier("INVITE")
    run.carrier(answer(b_inv, 180))
    cancel = raw.replace(b"INVITE sip", b"CANCEL sip", 1).replace(b"10 INVITE", b"10 CANCEL")
    run.dialer(cancel)
    b_cancel = run.to_carrier("CANCEL")
    run.carrier(answer(b_cancel, 200))
    run.carrier(answer(b_inv, 487))
    _ack_final(run, raw, 487)


def cancel_unanswered_by_carrier(run: Run) -> None:
    raw = invite(call_id="c-cancel-lost")
    run.dialer(raw)
    b_inv = run.to_carrier("INVITE")
    run.carrier(answer(b_inv, 180))
    run.dialer(raw.replace(b"INVITE sip", b"CANCEL sip", 1).replace(b"10 INVITE", b"10 CANCEL"))
    _ack_final(run, raw, 487)
    run.wait(100)  # the carrier never answers the CANCEL nor the INVITE: 64*T1 guards give up


def failover_then_answered(run: Run) -> None:
    raw = invite(call_id="c-failover", body=b"v=0\r\n")
    run.dialer(raw)
    run.carrier(answer(run.to_carrier("INVITE"), 503))
    b_inv = run.to_carrier("INVITE")  # to the second target
    run.carrier(answer(b_inv, 200, body=b"v=0\r\n"), CARRIER2)
    ok = run.to_dialer()[-1]
    run.dialer(_dialog(raw, ok, "ACK", 10, "a1"))
    run.dialer(_dialog(raw, ok, "BYE", 11, "b1"))
    run.carrier(answer(run.to_carrier("BYE"), 200), CARRIER2)


def no_answer_timer_b(run: Run) -> None:
    raw = invite(call_id="c-timer-b")
    run.dialer(raw)
    run.wait(70)  # target 1 times out (64*T1), failover to target 2, which times out too: 408
    _ack_final(run, raw)


def ring_timeout(run: Run) -> None:
    raw = invite(call_id="c-ring")
    run.dialer(raw)
    b_inv = run.to_carrier("INVITE")
    run.carrier(answer(b_inv, 180))
    run.wait(61)  # ring_timeout_s: 408 to the dialer, CANCEL to the carrier
    run.carrier(answer(run.to_carrier("CANCEL"), 200))
    run.carrier(answer(b_inv, 487))
    _ack_final(run, raw, 408)


def carrier_rejects(run: Run) -> None:
    raw = invite(call_id="c-486")
    run.dialer(raw)
    run.carrier(answer(run.to_carrier("INVITE"), 486))
    _ack_final(run, raw, 486)


def no_ack_for_2xx(run: Run) -> None:
    raw = invite(call_id="c-no-ack", body=b"v=0\r\n")
    _answered(run, raw)
    run.wait(40)  # Timer H: BYE both legs, nobody answers them
    run.wait(40)


def max_duration(run: Run) -> None:
    raw = invite(call_id="c-max", body=b"v=0\r\n")
    _b_inv, ok = _answered(run, raw)
    run.dialer(_dialog(raw, ok, "ACK", 10, "a1"))
    run.wait(3601)  # max_call_duration_s: BYE both legs
    run.carrier(answer(run.to_carrier("BYE"), 200))
    bye = [m for m in run.to_dialer() if m.is_request and m.method == "BYE"][-1]
    run.dialer(answer(bye, 200, to_tag=""))


def rejected_by_policy(run: Run) -> None:
    run.policy.reject.add("+33612000009")
    raw = invite("+33612000009", call_id="c-rejected")
    run.dialer(raw)
    final = run.to_dialer()[-1]
    assert final.status == 603
    run.dialer(_ack(raw, final))


def malformed_requests(run: Run) -> None:
    run.dialer(invite(call_id="c-bad-mf").replace(b"Max-Forwards: 70", b"Max-Forwards: seventy"))
    run.dialer(invite(call_id="c-bad-cseq").replace(b"CSeq: 10 INVITE", b"CSeq: x INVITE"))
    run.carrier(b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n")
    assert [d.split(b" ", 2)[1] for d, _ in run.inside.sent] == [b"400", b"400"]  # they echo what is bad
    run.inside.sent.clear()


def stateless_answers(run: Run) -> None:
    opts = invite(call_id="c-options").replace(b"INVITE sip", b"OPTIONS sip", 1)
    opts = opts.replace(b"10 INVITE", b"10 OPTIONS")
    run.dialer(opts)
    run.dialer(_dialog(invite(call_id="c-gone"), parse(answer(parse(invite()), 200)), "BYE", 11, "gone"))
    assert [m.status for m in run.to_dialer()] == [200, 481]


SCENARIOS: list[Callable[[Run], None]] = [
    full_call_bye_from_carrier, reinvite_and_info, cancel_while_ringing, cancel_unanswered_by_carrier,
    failover_then_answered, no_answer_timer_b, ring_timeout, carrier_rejects, no_ack_for_2xx, max_duration,
    rejected_by_policy, malformed_requests, stateless_answers,
]  # fmt: skip


class SuspendingPolicy(StubPolicy):
    """Decides after yielding to the event loop once, as with a Redis store: the B2BUA finishes in a Task."""

    async def decide(self, facts: Any, store: Any) -> Any:
        await asyncio.sleep(0)
        return await super().decide(facts, store)


def _rig(tmp_path: Path, policy: StubPolicy, transport: str = "udp") -> Run:
    loop = FakeLoop()
    wheel = TimerWheel(loop)  # type: ignore[arg-type]  # the production scheduler, on a manual clock
    inside, outside = FakeEndpoint("inside", 5060, transport), FakeEndpoint("outside", 5080, transport)
    targets = [{"uri": f"sip:{host}:{port}", "transport": transport, "priority": n, "weight": 1}
               for n, (host, port) in enumerate((CARRIER1, CARRIER2), 1)]  # fmt: skip
    config = load_config(write_config(tmp_path, targets=targets))
    b2b = B2BUA(compile_runtime(config, policy, store=None), parse=parse,
                parse_error=ParseError, endpoints={"inside": [inside], "outside": [outside]},
                scheduler=wheel.call_later, clock=loop.time)  # fmt: skip
    return Run(b2b, inside, outside, loop, policy)


@pytest.fixture(name="run", params=["udp", "tcp"])
def _run(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Run]:
    # TCP: no retransmissions, and Timer I/K are 0 (a loop call_soon handle, not a wheel timer).
    yield _rig(tmp_path, StubPolicy(), request.param)


def _alive() -> dict[str, int]:
    counts = dict.fromkeys((k.__name__ for k in KINDS), 0)
    for o in gc.get_objects():
        if type(o) in KINDS:
            counts[type(o).__name__] += 1
    return counts


def _assert_freed(run: Run, before: dict[str, int], what: str) -> None:
    assert run.b2b.active_calls == 0 and not run.b2b.calls_b
    assert not run.b2b.server_tx and not run.b2b.client_tx
    assert run.b2b.admission.active_dialogs() == 0
    # With the cyclic GC off, whatever is gone was freed by reference counting.
    assert _alive() == before
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        garbage = sorted({type(o).__qualname__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert found == 0, f"reference cycles left by {what}: {garbage}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_every_ending_frees_the_call_by_reference_counting(run: Run, scenario: Callable[[Run], None]) -> None:
    # A first call through the same path warms up what is built once (memos, pools): not per-call memory.
    scenario(run)
    run.wait(5000)
    run.inside.sent.clear()
    run.outside.sent.clear()
    gc.collect()
    before = _alive()
    gc.disable()
    try:
        scenario(run)
        run.wait(5000)  # every timer fires: transaction memory, Timer H/I/K, guards
        _assert_freed(run, before, scenario.__name__)
    finally:
        gc.enable()


async def test_a_decision_that_suspends_frees_the_call_too(tmp_path: Path) -> None:
    run = _rig(tmp_path, SuspendingPolicy())
    run.policy.reject.add("+33612000009")

    async def calls(n: int) -> None:
        for i in range(n):
            raw = invite(call_id=f"s-full-{i}", body=b"v=0\r\n")
            run.dialer(raw)
            for _ in range(3):  # the Task resumes the decision, then its done-callback relays
                await asyncio.sleep(0)
            b_inv = run.to_carrier("INVITE")
            run.carrier(answer(b_inv, 200, body=b"v=0\r\n"))
            ok = run.to_dialer()[-1]
            run.dialer(_dialog(raw, ok, "ACK", 10, f"a{i}"))
            run.dialer(_dialog(raw, ok, "BYE", 11, f"b{i}"))
            run.carrier(answer(run.to_carrier("BYE"), 200))
            rejected = invite("+33612000009", call_id=f"s-rejected-{i}")
            run.dialer(rejected)
            for _ in range(3):
                await asyncio.sleep(0)
            final = run.to_dialer()[-1]
            assert final.status == 603
            run.dialer(_ack(rejected, final))
        run.wait(5000)
        assert not run.b2b._tasks  # every decision Task is forgotten once done

    await calls(1)
    gc.collect()
    before = _alive()
    gc.disable()
    try:
        await calls(3)
        _assert_freed(run, before, "decisions finished in a Task")
    finally:
        gc.enable()


async def test_the_stores_write_behind_of_attempts_leaves_no_cycle(tmp_path: Path) -> None:
    """Every relayed call records an attempt, written behind in batches by a thread: a batch's future must
    not hold itself (its done-callback once closed over it: a cycle per batch, left for a rare full GC)."""
    store = await open_store(load_config(write_config(tmp_path)), watch=False)
    try:
        gc.collect()
        gc.disable()
        try:
            for i in range(3):
                d = await store.check_and_record_attempt("acme", f"+3361200000{i}", 1000.0 + i, 10, 3600, 0)
                assert d.allowed
                for _ in range(200):  # until the batch is written and its future settled on the loop
                    await asyncio.sleep(0.005)
                    if store._write_done is None and not store._pending:  # type: ignore[attr-defined]
                        break
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                gc.collect()
                garbage = sorted({type(o).__qualname__ for o in gc.garbage})
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            assert "Future" not in garbage, garbage
        finally:
            gc.enable()
    finally:
        await store.close()
