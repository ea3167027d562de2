"""Each store backend proven through the real process: `sipfilter run` on the embedded store and on a real
redis-server, SIPp dialers on every kind of trunk (prospecting or not, enforce or monitor), the law's cap of
4 attempts in 30 days. Every call's answer, every audit line, the counters and /metrics are checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_procs import RedisProcess, redis_missing
from scaleout import CAP, TRUNK_KINDS, Deployment, carrier, dialer
from sipfilter_provision import ACCOUNT, CONSENTED
from sipp_harness import CallCase, free_ports, metric_sum, sipfilter_available, sipfilter_cli

_MISSING = sipfilter_available()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

CALLER = "+33162000001"  # an NPV number: caller-ID rules pass
BLOCKED = "+33612000100"  # consented, but on the bloctel list
NOT_CONSENTED = "+33612000050"
CUSTOMER = "+33612000061"  # no consent: customer trunks do not need one


def _calls(callee: str, expected: list[str]) -> list[CallCase]:
    return [CallCase(CALLER, callee, e) for e in expected]


# What each kind of trunk must answer: the 5th attempt to one callee is one too many for prospecting.
PLAN: dict[str, list[CallCase]] = {
    "prospect": _calls(CONSENTED[0], ["relay"] * CAP + ["603 frequency.cap"])
    + _calls(NOT_CONSENTED, ["603 callee.consent"]) + _calls(BLOCKED, ["603 callee.dnc.bloctel"]),
    # monitor: every call relayed; the audit log says which would have been refused
    "prospect-monitor": _calls(CONSENTED[1], ["relay"] * (CAP + 1)) + _calls(NOT_CONSENTED, ["relay"])
    + _calls(BLOCKED, ["relay"]),
    # customers (not prospecting): no consent needed, no frequency cap, Bloctel still applies
    "customer": _calls(CUSTOMER, ["relay"] * (CAP + 1)) + _calls(BLOCKED, ["603 callee.dnc.bloctel"]),
    "customer-monitor": _calls(CUSTOMER, ["relay"] * (CAP + 1)) + _calls(BLOCKED, ["relay"]),
}
# The rule each monitor trunk's audit log names for the calls it relayed but would have refused.
WOULD_REFUSE = {
    "prospect-monitor": {(CONSENTED[1], 5): "frequency.cap", (NOT_CONSENTED, 1): "callee.consent",
                         (BLOCKED, 1): "callee.dnc.bloctel"},
    "customer-monitor": {(BLOCKED, 1): "callee.dnc.bloctel"},
}


@pytest.fixture(params=["embedded", "redis"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    redis = None
    store: dict[str, str] = {"backend": "embedded", "data_dir": str(tmp_path / "data")}
    if request.param == "redis":
        if (missing := redis_missing()) is not None:
            pytest.skip(missing)
        redis = RedisProcess(free_ports(1)[0], tmp_path / "redis").start()
        store = {"backend": "redis", "redis_url": redis.url}
    dep = Deployment(tmp_path, store, count=1)
    try:
        yield dep.start()
    finally:
        dep.stop()
        if redis is not None:
            redis.kill()


def test_every_trunk_kind_through_sipfilter_run(deployment: Deployment, tmp_path: Path) -> None:
    instance = deployment.instances[0]
    uas = carrier(tmp_path / "carrier", deployment.carrier_port)
    try:
        dialers = {kind: dialer(tmp_path / f"dialer-{kind}", instance, kind, cases, rate=10)
                   for kind, cases in PLAN.items()}  # fmt: skip
        runs = {kind: d.wait() for kind, d in dialers.items()}
    finally:
        carrier_run = uas.finish(grace_s=10)
    log = instance.sipfilter.log_tail()
    for kind, run in runs.items():
        problems = [p for o in run.outcomes if (p := o.problem())]
        assert not problems, f"{kind}: {problems}\n{run.summary()}\n{log}"
        assert len(run.outcomes) == len(PLAN[kind]), run.summary()
    relayed = sum(c.expected == "relay" for cases in PLAN.values() for c in cases)
    assert carrier_run.invites == relayed, carrier_run.summary()

    audit = instance.audit()
    assert len(audit) == sum(len(cases) for cases in PLAN.values())
    for kind, cases in PLAN.items():
        lines = [line for line in audit if line["trunk"] == kind]
        assert len(lines) == len(cases), kind
        seen: dict[str, int] = {}
        for line in sorted(lines, key=lambda line: line["time"]):
            seen[line["to"]] = n = seen.get(line["to"], 0) + 1
            monitor = TRUNK_KINDS[kind][1]["mode"] == "monitor"
            would = WOULD_REFUSE.get(kind, {}).get((line["to"], n))
            assert line["monitored"] == (would is not None), (kind, line)
            if monitor:
                assert (line["action"], line["rule"]) == ("allow", would or ""), (kind, line)
        prospecting = TRUNK_KINDS[kind][1]["prospecting"]
        recorded = [line["to"] for line in lines if line["attempt_recorded"]]
        if not prospecting:
            assert recorded == [], kind  # nothing counted for customers
        elif kind == "prospect":
            assert recorded == [CONSENTED[0]] * CAP  # the refused calls are not attempts
        else:
            assert len(recorded) == len(cases)  # monitor counts every call it relays

    # The counters where the store keeps them, read back through the CLI (a dry run counts nothing).
    for callee, trunk, rule in ((CONSENTED[0], "prospect", "frequency.cap"),
                                (CONSENTED[1], "prospect-monitor", "frequency.cap"),
                                (CONSENTED[2], "prospect", "")):  # fmt: skip
        check = sipfilter_cli(["check", "--config", str(instance.config_path), "--trunk", trunk,
                               "--from", CALLER, "--to", callee, "--json"], ok_codes=(0, 1))  # fmt: skip
        verdict = json.loads(check.stdout)
        assert verdict["rule"] == rule, (callee, verdict)

    metrics = instance.sipfilter.metrics()
    for kind, cases in PLAN.items():
        decided = metric_sum(metrics, "sipfilter_decisions_total", trunk=kind)
        assert decided == len(cases), (kind, decided)
        refused = sum(not c.expected.startswith("relay") for c in cases)
        rejected = metric_sum(metrics, "sipfilter_decisions_total", trunk=kind, verdict="reject") or 0
        assert rejected == refused, kind
    backend = "redis" if "redis_url" in deployment.store else "embedded"
    assert metric_sum(metrics, "sipfilter_store_up", backend=backend) == 1.0
    assert metric_sum(metrics, "sipfilter_store_errors_total") == 0.0, log
    assert ACCOUNT == "e2e-account"
