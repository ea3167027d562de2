"""Faults with real processes: a carrier that dies (SIPp UAS killed with SIGKILL) during a call.

One `sipfilter run` per module on loopback, short SIP timers (T1 = 25 ms: 64*T1 = 1.6 s; ring timeout 3 s).
What the dialer (SIPp UAC) must see: its BYE answered at once, a re-INVITE answered 408 then a BYE, a call
still ringing answered 408 by the ring timeout, a new call 408 after Timer B or moved to the second target.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sipfilter_provision import Deployment, deploy, provision
from sipp_harness import (
    CallCase,
    Sipfilter,
    SipfilterPorts,
    Sipp,
    SippFactory,
    free_ports,
    metric_sum,
    sipfilter_available,
    sipfilter_config,
    write_calls_csv,
    write_config,
)

_MISSING = sipfilter_available()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(90),
    pytest.mark.skipif(_MISSING is not None, reason=_MISSING or ""),
]

T1_MS = 25
TIMER_F_S = 64 * T1_MS / 1000  # also Timer B: how long sipfilter waits for a dead carrier
RING_TIMEOUT_S = 3
SIP = {"timers": {"t1_ms": T1_MS, "t2_ms": 400, "t4_ms": 500}, "ring_timeout_s": RING_TIMEOUT_S}
RELAY = CallCase("+33162000001", "+33612000001", "relay")


def poll(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    """Bounded wait: `check` every 50 ms until true, else fail saying `what` (no timing is asserted)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"never true within {timeout_s}s: {what}")
        time.sleep(0.05)


def kill(carrier: Sipp) -> None:
    """The carrier host dies: SIGKILL, no goodbye on the wire."""
    assert carrier.proc is not None and carrier.proc.poll() is None, "carrier already gone"
    os.kill(carrier.proc.pid, signal.SIGKILL)
    carrier.proc.wait(timeout=5)


def counter(dep: Deployment, name: str, **labels: str) -> float:
    return metric_sum(dep.sipfilter.metrics(), name, **labels) or 0.0


def dialer(sipp: SippFactory, dep: Deployment, tmp_path: Path, scenario: str, case: CallCase,
           pause_ms: int) -> Sipp:  # fmt: skip
    return sipp(scenario, local_port=free_ports(1)[0], remote=dep.inside, calls=1, pause_ms=pause_ms,
                csv_file=write_calls_csv(tmp_path / f"{Path(scenario).stem}.csv", [case]), timeout_s=25)


@pytest.fixture(scope="module")
def one_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    dep = deploy(tmp_path_factory.mktemp("faults-carrier"), carriers=1, sip=SIP)
    try:
        yield dep
    finally:
        dep.sipfilter.stop()


@pytest.fixture
def fresh(one_target: Deployment) -> Deployment:
    """The module's sipfilter with no call left over from an earlier test."""
    assert one_target.sipfilter.alive(), one_target.sipfilter.log_tail()
    assert not one_target.sipfilter.wait_no_dialogs()  # None before the first call: no series yet
    return one_target


def answered_then_killed(sipp: SippFactory, dep: Deployment, tmp_path: Path, scenario: str) -> Sipp:
    """Start a carrier and a dialer whose call the carrier answers; kill the carrier once it answered."""
    carrier = sipp("carrier_uas.xml", local_port=dep.carrier_ports[0], calls=1_000_000, timeout_s=60)
    carrier.start().wait_listening()
    answered = counter(dep, "sipfilter_calls_answered_total")
    uac = dialer(sipp, dep, tmp_path, scenario, RELAY, pause_ms=2500).start()
    poll(lambda: counter(dep, "sipfilter_calls_answered_total") > answered, "the carrier answered the call")
    kill(carrier)
    return uac


def test_bye_after_the_carrier_died_is_answered_and_the_dialog_is_gone(
        sipp: SippFactory, fresh: Deployment, tmp_path: Path) -> None:  # fmt: skip
    dep = fresh
    uac = answered_then_killed(sipp, dep, tmp_path, "dialer_uac.xml")
    run = uac.wait()
    # dialer_uac.xml sends the BYE after the talk time and needs its 200 (SIPp's own Timer F bounds it):
    # the call counts as successful only if sipfilter answered the BYE although the carrier is dead.
    assert run.successful == 1 and run.failed == 0, run.summary() + dep.sipfilter.log_tail()
    assert [o.code for o in run.outcomes] == [200], run.summary()
    # Our BYE to the dead carrier times out (64*T1) and the call is forgotten: gauge back to 0.
    assert dep.sipfilter.wait_no_dialogs(timeout_s=TIMER_F_S + 10) == 0, dep.sipfilter.log_tail()


def test_reinvite_toward_the_dead_carrier_gets_408_and_the_call_is_torn_down(
        sipp: SippFactory, fresh: Deployment, tmp_path: Path) -> None:  # fmt: skip
    dep = fresh
    uac = answered_then_killed(sipp, dep, tmp_path, "dialer_uac_reinvite_dead_carrier.xml")
    run = uac.wait()
    assert run.successful == 1 and run.failed == 0, run.summary() + dep.sipfilter.log_tail()
    assert [line.split("|")[0] for line in run.log_lines] == ["REINVITE", "BYE"], run.log_lines
    assert "no answer to INVITE" in dep.sipfilter.log_tail(200)
    assert dep.sipfilter.wait_no_dialogs(timeout_s=TIMER_F_S + 10) == 0, dep.sipfilter.log_tail()


def test_carrier_dying_while_ringing_gives_the_dialer_408_at_the_ring_timeout(
        sipp: SippFactory, fresh: Deployment, tmp_path: Path) -> None:  # fmt: skip
    dep = fresh
    carrier = sipp("carrier_uas_ringing.xml", local_port=dep.carrier_ports[0], calls=1_000_000, timeout_s=60)
    carrier.start().wait_listening()
    def provisionals() -> float:
        return counter(dep, "sipfilter_responses_total", direction="received", status_class="1xx")

    before = provisionals()
    uac = dialer(sipp, dep, tmp_path, "dialer_uac.xml", CallCase(RELAY.caller, RELAY.callee, "408"), 0)
    uac.start()
    poll(lambda: provisionals() > before, "the carrier's 100/180 reached sipfilter")
    kill(carrier)
    run = uac.wait()
    assert [o.code for o in run.outcomes] == [408] and run.successful == 1, run.summary()
    assert "ring timeout on call" in dep.sipfilter.log_tail(200)
    # The CANCEL to the dead carrier is never answered: its 64*T1 guard drops the call.
    assert dep.sipfilter.wait_no_dialogs(timeout_s=TIMER_F_S + 10) == 0, dep.sipfilter.log_tail()


def test_new_call_to_the_only_dead_target_gets_408_after_timer_b(
        sipp: SippFactory, fresh: Deployment, tmp_path: Path) -> None:  # fmt: skip
    dep = fresh  # no carrier process listens on the target any more
    ring_timeouts = dep.sipfilter.log_tail(10_000).count("ring timeout on call")
    uac = dialer(sipp, dep, tmp_path, "dialer_uac.xml", CallCase(RELAY.caller, RELAY.callee, "408"), 0)
    run = uac.start().wait()
    assert [o.code for o in run.outcomes] == [408] and run.successful == 1, run.summary()
    # Timer B, not the ring timeout, ended it: the target is marked down for the next calls and probes.
    assert dep.sipfilter.log_tail(10_000).count("ring timeout on call") == ring_timeouts
    assert metric_sum(dep.sipfilter.metrics(), "sipfilter_carrier_target_up") == 0.0
    assert dep.sipfilter.wait_no_dialogs() == 0


def test_new_calls_fail_over_to_the_second_target_when_the_first_is_dead(
        sipp: SippFactory, tmp_path: Path) -> None:  # fmt: skip
    # Both carriers listen before sipfilter starts, so its first OPTIONS probes find both targets up.
    numbers = free_ports(5)
    ports, carrier_ports = SipfilterPorts(*numbers[:3]), numbers[3:]
    primary = sipp("carrier_uas.xml", local_port=carrier_ports[0], calls=1_000_000, timeout_s=60)
    backup = sipp("carrier_uas.xml", local_port=carrier_ports[1], calls=1_000_000, timeout_s=60)
    primary.start().wait_listening()
    backup.start().wait_listening()
    config_path = write_config(tmp_path / "sf" / "sipfilter.yaml",
                               sipfilter_config(tmp_path / "sf", ports, carrier_ports, sip=SIP))
    provision(config_path, tmp_path / "sf")
    sf = Sipfilter(config_path, ports, tmp_path / "sf" / "run").start()
    try:
        poll(lambda: metric_sum(sf.metrics(), "sipfilter_carrier_target_up") == 2.0, "both targets probed up")
        kill(primary)  # the next probe is 10 s away: the calls below find out by themselves
        cases = [RELAY, CallCase("+33162000001", "+33612000002", "relay")]
        uac = sipp("dialer_uac.xml", local_port=free_ports(1)[0], remote=f"127.0.0.1:{ports.inside}",
                   calls=len(cases), pause_ms=200, limit=1, timeout_s=25,
                   csv_file=write_calls_csv(tmp_path / "calls.csv", cases))
        run = uac.start().wait()
        assert [o.code for o in run.outcomes] == [200, 200], run.summary() + sf.log_tail()
        backup_run = backup.finish(grace_s=10)
        # Call 1 tried the primary, timed out (Timer B) and moved on; call 2 went straight to the backup.
        assert backup_run.invites == 2, backup_run.summary()
        metrics = sf.metrics()
        primary_uri = f"127.0.0.1:{carrier_ports[0]}"
        assert metric_sum(metrics, "sipfilter_carrier_failovers_total") == 1.0, metrics
        ups = [line for line in metrics.splitlines() if line.startswith("sipfilter_carrier_target_up{")]
        assert sorted(float(line.rsplit(" ", 1)[1]) for line in ups) == [0.0, 1.0], ups
        assert all(line.endswith(" 0.0") for line in ups if primary_uri in line), ups
        assert sf.wait_no_dialogs() == 0
    finally:
        sf.stop()
