"""Two `sipfilter run` instances on one real redis-server, each with its own SIPp dialer, as a carrier or a
large outsourcer deploys them (docs/operations.md, "Scale-out"): the 4-in-30-days cap holds across them
under concurrent load, a consent, a list import or a refusal made through one reaches the other within the
documented delay, and each /metrics and a real Prometheus's sum over both agree with what the dialers saw.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis_procs import RedisProcess, redis_missing
from scaleout import CAP, Deployment, Prometheus, carrier, dialer, outcomes_by_callee
from sipfilter_provision import ACCOUNT
from sipp_harness import CallCase, SippRun, free_ports, metric_sum, sipfilter_available, sipfilter_cli

_MISSING = sipfilter_available() or redis_missing()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

CALLER = "+33162000001"
LOAD_CALLEES = [f"+336130{n:05d}" for n in range(40)]  # consented: only the frequency cap refuses them
ROUNDS = 3  # each dialer calls every callee 3 times: 6 attempts per callee, 4 allowed
PROPAGATION_S = 1.0  # the store's poll interval: what docs/operations.md promises (plus loading time)


@dataclass
class Pair:
    redis: RedisProcess
    deployment: Deployment
    prometheus: Prometheus | None


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    workdir = tmp_path_factory.mktemp("scaleout")
    redis = RedisProcess(free_ports(1)[0], workdir / "redis").start()
    store = {"backend": "redis", "redis_url": redis.url}
    deployment = Deployment(workdir, store, kinds=("prospect", "customer"), consents=LOAD_CALLEES)
    prometheus = None
    try:
        deployment.start()
        a, b = deployment.instances
        try:
            prometheus = Prometheus(workdir / "prometheus", {a.name: a.admin, b.name: b.admin}).start()
        except Exception as exc:  # a Prometheus that cannot start only skips its test
            print(f"no prometheus: {exc}")
        yield Pair(redis, deployment, prometheus)
    finally:
        if prometheus is not None:
            prometheus.stop()
        deployment.stop()
        redis.kill()


def _run(pair: Pair, workdir: Path, plans: dict[int, list[CallCase]], kind: str = "prospect",
         rate: float = 40) -> tuple[list[SippRun], SippRun]:
    """Each instance's dialer plays its plan at the same time; returns the dialer runs and the carrier's."""
    uas = carrier(workdir / "carrier", pair.deployment.carrier_port)
    try:
        dialers = [dialer(workdir / f"dialer-{i}", pair.deployment.instances[i], kind, cases, rate=rate)
                   for i, cases in plans.items()]  # fmt: skip
        runs = [d.wait() for d in dialers]
    finally:
        carrier_run = uas.finish(grace_s=10)
    return runs, carrier_run


def test_the_cap_is_exact_across_two_instances_under_concurrent_load(pair: Pair, tmp_path: Path) -> None:
    # Both dialers call the same callees in the same order at the same time: their attempts collide.
    cases = [CallCase(CALLER, callee, "relay") for _ in range(ROUNDS) for callee in LOAD_CALLEES]
    a, b = pair.deployment.instances
    audit_before = len(a.audit()) + len(b.audit())
    runs, carrier_run = _run(pair, tmp_path, {0: cases, 1: cases})
    for run in runs:
        assert len(run.outcomes) == len(cases), run.summary()
    codes = outcomes_by_callee(runs)
    for callee in LOAD_CALLEES:
        assert sorted(codes[callee]) == [200] * CAP + [603] * (2 * ROUNDS - CAP), (callee, codes[callee])
    refused = [o for run in runs for o in run.outcomes if o.code != 200]
    assert {o.rule for o in refused} == {"frequency.cap"}
    assert carrier_run.invites == CAP * len(LOAD_CALLEES)  # never a 5th attempt reached the carrier

    # Both instances relayed some of them, and every attempt is counted once, in Redis and in the audit logs.
    assert all(sum(o.code == 200 for o in run.outcomes) > 0 for run in runs)
    client = pair.redis.client()
    try:
        keys = [f"sipfilter:c:{{{ACCOUNT}\x1f{callee}}}:att" for callee in LOAD_CALLEES]
        assert [client.zcard(k) for k in keys] == [CAP] * len(LOAD_CALLEES)
    finally:
        client.close()
    audit = [line for line in a.audit() + b.audit() if line["to"] in LOAD_CALLEES]
    assert len(a.audit()) + len(b.audit()) - audit_before == 2 * len(cases)
    recorded = [line["to"] for line in audit if line["attempt_recorded"]]
    assert sorted(recorded) == sorted(LOAD_CALLEES * CAP)
    for instance in (a, b):
        assert instance.sipfilter.wait_no_dialogs() == 0


def _call(pair: Pair, workdir: Path, instance: int, callee: str, kind: str = "prospect"
          ) -> tuple[int, str | None]:  # fmt: skip
    runs, _ = _run(pair, workdir, {instance: [CallCase(CALLER, callee, "relay")]}, kind=kind)
    (outcome,) = runs[0].outcomes
    return outcome.code, outcome.rule


def test_writes_through_one_instance_reach_the_other(pair: Pair, tmp_path: Path) -> None:
    a = pair.deployment.instances[0]
    consented, listed, refused = "+33613100001", "+33613100002", "+33613100003"
    for n, callee in enumerate((consented, listed, refused)):
        assert _call(pair, tmp_path / f"before-{n}", 1, callee)[1] == "callee.consent"

    # A consent through A's admin API, a do-not-call number added through A's admin API, a refusal through
    # the CLI: B answers from its own memory (lists, consents) and from Redis (refusals, counters).
    status, _ = a.api("POST", "/api/consents", {"account": ACCOUNT, "number": consented, "proof": "e2e-form"})
    assert status == 201
    written = time.monotonic()
    query = {"mode": "add", "format": "lines"}
    status, body = a.api("PUT", "/api/lists/bloctel", f"{listed}\n".encode(), query)
    assert status == 201, body
    for callee in (listed, refused):
        assert a.api("POST", "/api/consents", {"account": ACCOUNT, "number": callee, "proof": "f"})[0] == 201
    sipfilter_cli(["refusal", "add", "--config", str(a.config_path), "--account", ACCOUNT, refused])
    time.sleep(max(0.0, written + PROPAGATION_S + 0.5 - time.monotonic()))
    assert _call(pair, tmp_path / "after-consent", 1, consented) == (200, None)
    assert _call(pair, tmp_path / "after-list", 1, listed) == (603, "callee.dnc.bloctel")
    assert _call(pair, tmp_path / "after-list-customer", 1, listed, "customer") == (603, "callee.dnc.bloctel")
    # Without the refusal reaching B the call would be relayed on its consent. B learns it twice: from the
    # counters in Redis at once (frequency.refusal) and, through the record stream, as the end of the consent
    # given before it (callee.consent): which one B sees first depends on that stream's poll.
    code, rule = _call(pair, tmp_path / "after-refusal", 1, refused)
    assert code == 603 and rule in ("frequency.refusal", "callee.consent")


def test_each_instance_metrics_and_their_sum_in_prometheus(pair: Pair, tmp_path: Path) -> None:
    if pair.prometheus is None:
        pytest.skip("prometheus did not start (Debian package prometheus)")
    a, b = pair.deployment.instances
    callees = [f"+336132{n:05d}" for n in range(10)]  # not consented: refused by callee.consent
    capped = [CallCase(CALLER, LOAD_CALLEES[0], "relay")] * 2  # at its cap since the load test, or not
    plan_a = [CallCase(CALLER, c, "relay") for c in callees] + capped
    plan_b = [CallCase(CALLER, c, "relay") for c in callees[:4]]
    refused_by_consent = {a.name: len(callees), b.name: 4}
    runs, _ = _run(pair, tmp_path, {0: plan_a, 1: plan_b})
    per_instance = []
    for instance, run in zip((a, b), runs, strict=True):
        assert instance.sipfilter.wait_no_dialogs() == 0  # refused calls' transactions end after Timer H
        text = instance.sipfilter.metrics()
        decided = metric_sum(text, "sipfilter_decisions_total", trunk="prospect") or 0
        consent = metric_sum(text, "sipfilter_decisions_total", trunk="prospect", rule="callee.consent") or 0
        invites = metric_sum(text, "sipfilter_invites_received_total", trunk="prospect") or 0
        assert decided == invites  # every INVITE decided once
        assert metric_sum(text, "sipfilter_store_up", backend="redis") == 1.0
        per_instance.append((instance.name, decided, consent, invites))
        assert sum(o.rule == "callee.consent" for o in run.outcomes) == refused_by_consent[instance.name]
    # Prometheus sees the same numbers per instance, and their sum, once it scraped after the load.
    total = sum(d for _, d, _, _ in per_instance)
    expr = 'sum(sipfilter_decisions_total{job="sipfilter",trunk="prospect"})'
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pair.prometheus.value(expr) != total:
        time.sleep(0.2)
    assert pair.prometheus.value(expr) == total
    for name, decided, consent, _ in per_instance:
        sel = f'job="sipfilter",sipfilter="{name}",trunk="prospect"'
        assert pair.prometheus.value(f"sum(sipfilter_decisions_total{{{sel}}})") == decided
        by_rule = f'sum(sipfilter_decisions_total{{{sel},rule="callee.consent"}})'
        assert pair.prometheus.value(by_rule) == consent
    up = pair.prometheus.query('sum by (sipfilter) (sipfilter_store_up{job="sipfilter"})')
    assert sorted((r["metric"]["sipfilter"], r["value"][1]) for r in up) == [(a.name, "1"), (b.name, "1")]


def test_at_most_one_redis_round_trip_per_decision(pair: Pair, tmp_path: Path) -> None:
    """Each prospecting decision is one EVALSHA (no EVAL, no SCRIPT EXISTS), and the decisions of one
    event-loop pass share a pipeline: round trips per decision, as /metrics counts them, at most 1."""
    a, b = pair.deployment.instances
    callees = [f"+336133{n:05d}" for n in range(150)]
    for callee in callees:
        assert a.api("POST", "/api/consents", {"account": ACCOUNT, "number": callee, "proof": "f"})[0] == 201
    time.sleep(PROPAGATION_S + 0.5)  # B has them too
    for i in (0, 1):  # the script is loaded in Redis once, by whichever instance needs it first
        assert _call(pair, tmp_path / f"warm-{i}", i, callees[i])[0] == 200

    def counters() -> list[tuple[float, float]]:
        out = []
        for instance in (a, b):
            text = instance.sipfilter.metrics()
            out.append((metric_sum(text, "sipfilter_store_attempt_checks_total", backend="redis") or 0.0,
                        metric_sum(text, "sipfilter_store_round_trips_total", backend="redis") or 0.0))
        return out

    client = pair.redis.client()
    try:
        before, stats_before = counters(), client.info("commandstats")
        cases = [CallCase(CALLER, c, "relay") for c in callees[2:]]
        runs, _ = _run(pair, tmp_path, {0: cases, 1: cases[::-1]}, rate=75)
        after, stats_after = counters(), client.info("commandstats")
    finally:
        client.close()
    assert [o.code for run in runs for o in run.outcomes] == [200] * (2 * len(cases))
    checks = [c1 - c0 for (c0, _), (c1, _) in zip(before, after, strict=True)]
    trips = [t1 - t0 for (_, t0), (_, t1) in zip(before, after, strict=True)]
    assert checks == [len(cases)] * 2  # every relayed prospecting call checked once, on its own instance
    assert all(0 < t <= c for t, c in zip(trips, checks, strict=True))
    print(f"round trips per decision: {[round(t / c, 3) for t, c in zip(trips, checks, strict=True)]}")

    def calls(stats: dict[str, dict[str, int]], name: str) -> int:
        return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))

    assert calls(stats_after, "evalsha") - calls(stats_before, "evalsha") == sum(checks)
    for name in ("eval", "script|exists", "script|load"):  # the script travels once, not per call
        assert calls(stats_after, name) == calls(stats_before, name), name
