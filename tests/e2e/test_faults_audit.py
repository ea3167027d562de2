"""Faults with real processes: the audit log's disk is full (ENOSPC) under a running `sipfilter run`.

The audit path is a symlink to /dev/full (every write fails with ENOSPC, on any machine), then replaced by
a real file: the disk "recovers". For each `audit.on_write_error` policy the dialer (SIPp UAC) must see
keep-relaying: calls still decided and relayed, refused ones still refused;
stop-relaying: calls the policy allows answered 503 + Warning naming the audit log, never relayed;
and in both: `sipfilter_audit_failing 1` and the errors counted on /metrics, one (rate-limited) log line,
then after the recovery relaying again and `sipfilter_audit_failing 0`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sipfilter_provision import provision
from sipp_harness import (
    CallCase,
    Sipfilter,
    SipfilterPorts,
    SippFactory,
    SippRun,
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
    pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full to fill the disk with"),
]

ALLOWED = [CallCase("+33162000001", f"+3361200000{n}", "relay") for n in (1, 2)]
REFUSED = CallCase("+33162000001", "+33612000100", "603 callee.dnc.bloctel")
AFTER = CallCase("+33162000001", "+33612000003", "relay")


class Rig:
    """sipfilter (audit log on a full disk from the start) and a carrier on free loopback ports."""

    def __init__(self, workdir: Path, policy: str) -> None:
        numbers = free_ports(4)
        self.ports, self.carrier_port = SipfilterPorts(*numbers[:3]), numbers[3]
        config = sipfilter_config(workdir, self.ports, [self.carrier_port])
        config["audit"]["on_write_error"] = policy
        self.audit_path = Path(config["audit"]["path"])
        self.audit_path.parent.mkdir(parents=True)
        self.config_path = write_config(workdir / "sipfilter.yaml", config)
        provision(self.config_path, workdir)  # records go to the audit log too: before the disk is full
        self.audit_path.unlink(missing_ok=True)
        self.audit_path.symlink_to("/dev/full")  # every write: ENOSPC
        self.sipfilter = Sipfilter(self.config_path, self.ports, workdir / "run")

    def metric(self, name: str) -> float | None:
        return metric_sum(self.sipfilter.metrics(), name)

    def disk_recovers(self) -> None:
        """Free space the way an operator does it: a fresh file at the path (atomic swap of the symlink)."""
        fresh = self.audit_path.with_name("fresh.jsonl")
        fresh.touch()
        os.replace(fresh, self.audit_path)

    def log(self) -> str:
        return self.sipfilter.log_tail(100_000)


@pytest.fixture(params=["keep-relaying", "stop-relaying"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path / "sf", request.param)
    made.sipfilter.start()
    try:
        yield made
    finally:
        made.sipfilter.stop()


def place(sipp: SippFactory, rig: Rig, tmp_path: Path, name: str, cases: list[CallCase]) -> SippRun:
    uac = sipp("dialer_uac.xml", local_port=free_ports(1)[0], remote=f"127.0.0.1:{rig.ports.inside}",
               calls=len(cases), limit=1, pause_ms=100, timeout_s=25, name=name,
               csv_file=write_calls_csv(tmp_path / f"{name}.csv", cases))
    return uac.start().wait()


def responses_in_trace(run: SippRun, status: int) -> list[str]:
    """Every `status` response SIPp received, as its raw text (from -trace_msg)."""
    found: list[str] = []
    for trace in run.workdir.glob("*_messages.log"):
        for block in trace.read_text(errors="replace").split("\n\n"):
            if f"SIP/2.0 {status} " in block:
                found.append(block[block.index(f"SIP/2.0 {status} "):])
    return found


def test_full_audit_disk_keeps_enforcing_alerts_and_recovers(
        sipp: SippFactory, rig: Rig, tmp_path: Path) -> None:  # fmt: skip
    policy = yaml.safe_load(rig.config_path.read_text())["audit"]["on_write_error"]
    carrier = sipp("carrier_uas.xml", local_port=rig.carrier_port, calls=1_000_000, timeout_s=60)
    carrier.start().wait_listening()

    # 1. The disk is full: refused calls stay refused whatever the policy; allowed ones depend on it.
    cases = [ALLOWED[0], REFUSED, ALLOWED[1]]
    if policy == "stop-relaying":
        cases = [CallCase(c.caller, c.callee, "503" if c.expected == "relay" else c.expected) for c in cases]
    run = place(sipp, rig, tmp_path, "full", cases)
    problems = [p for o in run.outcomes if (p := o.problem())]
    assert not problems and len(run.outcomes) == 3, "\n".join(problems) + run.summary() + rig.log()
    if policy == "stop-relaying":
        refusals = responses_in_trace(run, 503)
        assert len(refusals) >= 2, run.summary()
        for text in refusals:  # says why, so the NOC does not go looking at the carrier
            assert "Retry-After:" in text and "audit log not writable" in text, text
    assert rig.metric("sipfilter_audit_failing") == 1.0
    assert rig.metric("sipfilter_audit_write_errors_total") == 3.0  # one per decision
    # A load balancer sends calls elsewhere while this instance refuses them all (stop-relaying only).
    status, body = rig.sipfilter.http_get("/readyz")
    assert (status, json.loads(body)["checks"]["audit_ok"]) == (
        (503, False) if policy == "stop-relaying" else (200, True)), body
    # Said once, not once per call (rate-limited), naming the file, the error and the policy.
    failures = [line for line in rig.log().splitlines() if "write failed" in line]
    assert len(failures) == 1, failures
    assert str(rig.audit_path) in failures[0] and "No space left" in failures[0] and policy in failures[0]

    # 2. The disk recovers: the next decision is written to the new file and relaying resumes.
    rig.disk_recovers()
    run = place(sipp, rig, tmp_path, "recovered", [AFTER])
    assert [o.code for o in run.outcomes] == [200], run.summary() + rig.log()
    assert rig.metric("sipfilter_audit_failing") == 0.0
    assert rig.metric("sipfilter_audit_write_errors_total") == 3.0
    assert rig.sipfilter.http_get("/readyz")[0] == 200
    assert "writable again after 3 failed writes" in rig.log()
    records = [json.loads(line) for line in rig.audit_path.read_text().splitlines()]
    assert [(r["to"], r["action"]) for r in records] == [(AFTER.callee, "allow")]

    carrier_run = carrier.finish(grace_s=10)
    relayed = 3 if policy == "keep-relaying" else 1  # stop-relaying: nothing reached the carrier while full
    assert carrier_run.invites == relayed, carrier_run.summary()
    assert rig.sipfilter.wait_no_dialogs() == 0
