"""Dialer (SIPp UAC) → sipfilter → carrier (SIPp UAS) on loopback: every call path of sipp/, end to end.

Checks per call that the outcome matches the CSV's expected column and that no dialog is left behind.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sipfilter_provision import Deployment, deploy
from sipp_harness import (
    CallCase,
    SippFactory,
    SippRun,
    free_ports,
    read_calls_csv,
    sipfilter_available,
    write_calls_csv,
)

_MISSING = sipfilter_available()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

POLICY_MIX = Path(__file__).resolve().parents[2] / "sipp" / "csv" / "policy_mix.csv"
ANSWERED = CallCase("+33162000001", "+33612000001", "relay")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One sipfilter with one carrier target for the tests that do not need their own targets."""
    deployment = deploy(tmp_path_factory.mktemp("sipfilter"))
    try:
        yield deployment
    finally:
        deployment.sipfilter.stop()


def call(sipp: SippFactory, tmp_path: Path, deployment: Deployment, uac: str, uas: str | list[str],
         cases: list[CallCase], *, transport: str = "u1", uac_pause_ms: int = 100,
         uas_pause_ms: int | list[int] = 50) -> tuple[SippRun, list[SippRun]]:
    """Start the carrier(s) on the deployment's target ports, play `cases` from the dialer, collect both.
    Carriers also answer sipfilter's OPTIONS probes, which SIPp counts as calls: they run without a call
    count and are told to finish (SIGUSR1) once the dialer is done; count their INVITEs with `.invites`."""
    uas_list = [uas] if isinstance(uas, str) else uas
    pauses = uas_pause_ms if isinstance(uas_pause_ms, list) else [uas_pause_ms] * len(uas_list)
    carriers = []
    for scenario, port, pause in zip(uas_list, deployment.carrier_ports, pauses, strict=False):
        carrier = sipp(scenario, local_port=port, calls=1_000_000, pause_ms=pause, timeout_s=60)
        carriers.append(carrier.start())
        carrier.wait_listening()
    csv_file = write_calls_csv(tmp_path / "calls.csv", cases)
    dialer = sipp(uac, local_port=free_ports(1)[0], remote=deployment.inside, calls=len(cases),
                  csv_file=csv_file, pause_ms=uac_pause_ms, transport=transport, timeout_s=30,
                  rate=20).start()
    dialer_run = dialer.wait()
    return dialer_run, [carrier.finish(grace_s=15) for carrier in carriers]


def assert_no_dialog_left(deployment: Deployment, *, any_dialog: bool = True) -> None:
    """sipfilter_active_dialogs back to 0. The gauge has a sample per trunk once a dialog existed on it;
    with `any_dialog=False` (nothing ever reached the B2BUA's calls) no sample at all is fine too."""
    left = deployment.sipfilter.wait_no_dialogs(timeout_s=15)
    assert left is not None or not any_dialog, "sipfilter /metrics has no sipfilter_active_dialogs"
    assert not left, f"{left} dialog(s) left in sipfilter:\n{deployment.sipfilter.log_tail()}"
    assert deployment.sipfilter.alive(), deployment.sipfilter.log_tail()


def assert_outcomes(run: SippRun, cases: list[CallCase]) -> None:
    problems = [p for o in run.outcomes if (p := o.problem())]
    assert not problems, "\n".join(problems) + "\n" + run.summary()
    assert len(run.outcomes) == len(cases), run.summary()
    assert [(o.caller, o.callee) for o in run.outcomes] == [(c.caller, c.callee) for c in cases]


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_policy_mix_outcome_per_call_matches_csv(sipp: SippFactory, tmp_path: Path, shared: Deployment,
                                                 transport: str) -> None:
    cases = read_calls_csv(POLICY_MIX)
    relayed = sum(c.expected == "relay" for c in cases)
    assert 0 < relayed < len(cases)
    dialer, (carrier,) = call(sipp, tmp_path, shared, "dialer_uac.xml", "carrier_uas.xml", cases,
                              transport=transport)
    assert_outcomes(dialer, cases)
    assert dialer.failed == 0 and dialer.successful == len(cases), dialer.summary()
    # Refused calls never reach the carrier; relayed ones all do, and complete.
    assert carrier.invites == relayed and carrier.failed == 0, carrier.summary()
    # Every refusal names its rule in both Reason and Warning.
    for outcome in dialer.outcomes:
        if outcome.code != 200:
            assert "cause=" in outcome.reason and outcome.warning.startswith("399 "), outcome
    assert_no_dialog_left(shared)


def test_topology_is_hidden_from_the_carrier(sipp: SippFactory, tmp_path: Path, shared: Deployment) -> None:
    dialer, (carrier,) = call(sipp, tmp_path, shared, "dialer_uac.xml", "carrier_uas.xml", [ANSWERED])
    assert_outcomes(dialer, [ANSWERED])
    carrier_log = next(carrier.workdir.glob("*_messages.log")).read_text(errors="replace")
    dialer_log = next(dialer.workdir.glob("*_messages.log")).read_text(errors="replace")
    # The dialer's Call-ID, tags and Via branch never cross; the dialer never sees the carrier's either.
    dialer_call_id = next(line for line in dialer_log.splitlines() if line.startswith("Call-ID:"))
    dialer_pid = dialer_call_id.split("-", 1)[1].split("@", 1)[0]  # SIPp Call-IDs are <n>-<pid>@<ip>
    assert "INVITE sip:" in carrier_log  # the call did reach the carrier
    assert dialer_call_id not in carrier_log and f"z9hG4bK-{dialer_pid}-" not in carrier_log
    assert "SIPpTag00" not in carrier_log
    assert "SIPpTag01" not in dialer_log and "sip:carrier@" not in dialer_log
    assert_no_dialog_left(shared)


def test_answer_then_bye_from_carrier(sipp: SippFactory, tmp_path: Path, shared: Deployment) -> None:
    cases = [ANSWERED, CallCase("0162000002", "0612000002", "relay")]
    dialer, (carrier,) = call(sipp, tmp_path, shared, "dialer_uac_wait_bye.xml", "carrier_uas_bye.xml", cases,
                              uas_pause_ms=300)
    assert dialer.successful == 2 and dialer.failed == 0, dialer.summary()
    assert carrier.invites == 2 and carrier.failed == 0, carrier.summary()
    assert_no_dialog_left(shared)


def test_cancel_during_ringing(sipp: SippFactory, tmp_path: Path, shared: Deployment) -> None:
    cases = [ANSWERED, CallCase("+33162000001", "+33612000003", "relay")]
    dialer, (carrier,) = call(sipp, tmp_path, shared, "dialer_uac_cancel.xml", "carrier_uas_ringing.xml",
                              cases, uac_pause_ms=300)
    assert dialer.successful == 2 and dialer.failed == 0, dialer.summary()
    assert carrier.invites == 2 and carrier.failed == 0, carrier.summary()
    assert_no_dialog_left(shared)


def test_busy_486_is_relayed(sipp: SippFactory, tmp_path: Path, shared: Deployment) -> None:
    cases = [CallCase("+33162000001", "+33612000004", "486")]
    dialer, (carrier,) = call(sipp, tmp_path, shared, "dialer_uac.xml", "carrier_uas_busy.xml", cases)
    assert_outcomes(dialer, cases)
    assert carrier.invites == 1 and carrier.failed == 0, carrier.summary()
    assert_no_dialog_left(shared)


def test_reinvite_mid_call(sipp: SippFactory, tmp_path: Path, shared: Deployment) -> None:
    dialer, (carrier,) = call(sipp, tmp_path, shared, "dialer_uac_reinvite.xml", "carrier_uas.xml",
                              [ANSWERED])
    assert dialer.successful == 1 and dialer.failed == 0, dialer.summary()
    assert carrier.invites == 1 and carrier.failed == 0, carrier.summary()
    assert any(line.startswith("REINVITE|") and "m=audio" in line for line in dialer.log_lines)
    assert_no_dialog_left(shared)


def test_early_media_183_with_sdp_reaches_the_dialer(sipp: SippFactory, tmp_path: Path,
                                                     shared: Deployment) -> None:
    dialer, (carrier,) = call(sipp, tmp_path, shared, "dialer_uac_early_media.xml",
                              "carrier_uas_early_media.xml", [ANSWERED], uas_pause_ms=200)
    assert dialer.successful == 1 and dialer.failed == 0, dialer.summary()
    assert carrier.invites == 1 and carrier.failed == 0, carrier.summary()
    early = [line for line in dialer.log_lines if line.startswith("EARLY|")]
    assert len(early) == 1 and "m=audio" in early[0], dialer.log_lines
    assert_no_dialog_left(shared)


@pytest.mark.parametrize("first_target", ["carrier_uas_unavailable.xml", "carrier_uas_noanswer.xml"])
def test_failover_to_second_carrier_target(sipp: SippFactory, tmp_path: Path, first_target: str) -> None:
    deployment = deploy(tmp_path / "sf", carriers=2)
    try:
        cases = [ANSWERED]
        # The dead target stays silent longer than sipfilter's INVITE timeout (64*T1 = 3.2 s here).
        dialer, (first, second) = call(sipp, tmp_path, deployment, "dialer_uac.xml",
                                       [first_target, "carrier_uas.xml"], cases,
                                       uas_pause_ms=[6000 if "noanswer" in first_target else 50, 50])
        assert_outcomes(dialer, cases)
        assert first.invites == 1, first.summary()
        assert second.invites == 1 and second.failed == 0, second.summary()
        assert_no_dialog_left(deployment)
    finally:
        deployment.sipfilter.stop()


def test_sigterm_drains_calls_in_progress_and_refuses_new_ones(sipp: SippFactory, tmp_path: Path) -> None:
    deployment = deploy(tmp_path / "sf", sip={"drain_timeout_s": 15})
    try:
        carrier = sipp("carrier_uas.xml", local_port=deployment.carrier_ports[0], calls=1_000_000,
                       timeout_s=30).start()
        carrier.wait_listening()
        talking = sipp("dialer_uac.xml", local_port=free_ports(1)[0], remote=deployment.inside,
                       csv_file=write_calls_csv(tmp_path / "a.csv", [ANSWERED]), pause_ms=3000,
                       timeout_s=20, name="talking").start()
        time.sleep(1.0)  # answered within milliseconds; 3 s of talk time left
        assert deployment.sipfilter.proc is not None
        deployment.sipfilter.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = [CallCase(ANSWERED.caller, "+33612000002", "503")]
        late = sipp("dialer_uac.xml", local_port=free_ports(1)[0], remote=deployment.inside,
                    csv_file=write_calls_csv(tmp_path / "b.csv", refused), timeout_s=10,
                    name="late").start().wait()
        late_outcomes = [(o.code, o.problem()) for o in late.outcomes]
        assert late_outcomes == [(503, None)], late.summary()
        assert "Retry-After" in next(late.workdir.glob("*_messages.log")).read_text(errors="replace")
        run = talking.wait()
        assert [(o.code, o.problem()) for o in run.outcomes] == [(200, None)], run.summary()
        assert run.failed == 0, run.summary()
        # the last call over, sipfilter exits by itself, well before the drain timeout
        assert deployment.sipfilter.proc.wait(timeout=10) == 0, deployment.sipfilter.log_tail()
        assert carrier.finish().invites == 1
    finally:
        deployment.sipfilter.stop()


def test_sighup_reload_applies_a_good_config_keeps_the_old_on_a_bad_one(sipp: SippFactory,
                                                                         tmp_path: Path) -> None:
    deployment = deploy(tmp_path / "sf")
    config_path = deployment.sipfilter.config_path
    good = config_path.read_text()
    geographic = [CallCase("+33140000000", "+33612000005", "403 caller-id.not-npv")]
    try:
        def play(name: str, cases: list[CallCase]) -> None:
            carrier = sipp("carrier_uas.xml", local_port=deployment.carrier_ports[0], calls=1_000_000,
                           timeout_s=20, name=f"carrier-{name}").start()
            carrier.wait_listening()
            run = sipp("dialer_uac.xml", local_port=free_ports(1)[0], remote=deployment.inside,
                       csv_file=write_calls_csv(tmp_path / f"{name}.csv", cases), timeout_s=15,
                       name=f"dialer-{name}").start().wait()
            carrier.finish()
            problems = [p for o in run.outcomes if (p := o.problem())]
            assert not problems and len(run.outcomes) == len(cases), "\n".join(problems) + run.summary()

        def reload_with(text: str) -> None:
            config_path.write_text(text)
            assert deployment.sipfilter.proc is not None
            deployment.sipfilter.proc.send_signal(signal.SIGHUP)
            time.sleep(1.5)  # the reload runs in the background; nothing to poll for a refused one
            assert deployment.sipfilter.alive(), deployment.sipfilter.log_tail()

        play("before", geographic)
        reload_with("sip: [this is not\n")  # broken YAML: refused, the running config stays
        play("bad", geographic)
        # A manual-dialing trunk (not automated): the caller-ID rules no longer apply.
        reload_with(good.replace("automated: true", "automated: false"))
        play("good", [CallCase(c.caller, c.callee, "relay") for c in geographic])
    finally:
        deployment.sipfilter.stop()


def test_unknown_source_is_refused_and_never_relayed(sipp: SippFactory, tmp_path: Path) -> None:
    # The trunk only knows 127.0.0.1; a dialer on 127.0.0.2 is a stranger: 403, and no B-leg.
    deployment = deploy(tmp_path / "sf", trunk={"match": {"sources": ["127.0.0.1/32"]}})
    try:
        carrier = sipp("carrier_uas.xml", local_port=deployment.carrier_ports[0], calls=1_000_000,
                       timeout_s=20).start()
        carrier.wait_listening()
        cases = [CallCase(ANSWERED.caller, ANSWERED.callee, "403"),
                 CallCase("0162000002", "0612000002", "403")]
        stranger = sipp("dialer_uac.xml", local_ip="127.0.0.2", local_port=free_ports(1)[0],
                        remote=deployment.inside, csv_file=write_calls_csv(tmp_path / "calls.csv", cases),
                        calls=len(cases), timeout_s=15).start().wait()
        assert [(o.code, o.problem()) for o in stranger.outcomes] == [(403, None)] * 2, stranger.summary()
        assert carrier.finish().invites == 0
        assert_no_dialog_left(deployment, any_dialog=False)
    finally:
        deployment.sipfilter.stop()
