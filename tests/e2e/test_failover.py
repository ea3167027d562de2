"""Failures of a scaled-out deployment, for real (docs/operations.md, "Scale-out"): the Redis primary killed
under load while Sentinel promotes its replica, a sipfilter instance killed under load and restarted, and a
Redis Cluster of three primaries holding the counters. Real redis-server, Sentinel, SIPp and sipfilter
processes on loopback; short loads and a 500 ms Sentinel down-after so the suite stays fast.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_procs import RedisCluster, RedisProcess, SentinelGroup, redis_missing, wait_until
from scaleout import CAP, Deployment, Instance, carrier, dialer, outcomes_by_callee
from sipfilter_provision import ACCOUNT
from sipp_harness import CallCase, SippRun, free_ports, metric_sum, sipfilter_available

from sipfilter.audit import iso_ms

_MISSING = sipfilter_available() or redis_missing()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

CALLER = "+33162000001"
RATE = 30.0  # calls/s of each dialer
NO_ANSWER = 1000  # a dialer leaves a silent proxy after this (SIPp -recv_timeout)
STABLE_S = 5.0  # a topology that held this long is settled: a slower Sentinel's failover ends within its
# failover-timeout (SentinelGroup: 5 s)


def _callees(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n:04d}" for n in range(count)]


def _attempt_key(callee: str) -> str:
    return f"sipfilter:c:{{{ACCOUNT}\x1f{callee}}}:att"


def _recorded(instances: list[Instance], callees: set[str]) -> list[tuple[str, str]]:
    """(callee, time) of every attempt the audit logs say was counted."""
    return [(line["to"], line["time"]) for instance in instances for line in instance.audit()
            if line["to"] in callees and line["attempt_recorded"]]


def _in_redis(client: Any, callees: set[str]) -> set[tuple[str, str]]:
    """(callee, time) of every attempt Redis holds for `callees`: its score is the decision's time, which
    the audit line shows to the millisecond."""
    return {(callee, iso_ms(score)) for callee in callees
            for _, score in client.zrange(_attempt_key(callee), 0, -1, withscores=True)}


# --------------------------------------------------------------------------------------------- Sentinel


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelGroup]:
    # Two replicas, as docs/operations.md advises with replicas=1: the promoted one still has a replica
    # (it continues the other's replication stream, no full sync), so WAIT keeps being answered.
    group = SentinelGroup(tmp_path / "sentinel", replicas=2).start()
    try:
        yield group
    finally:
        group.stop()


def test_sentinel_failover_under_load(sentinel: SentinelGroup, tmp_path: Path) -> None:
    """Instance A's trunk fails closed, B's fails open. Kill the primary under load: A refuses
    (store.unavailable), B relays uncounted; Sentinel promotes a replica, the other follows it, so do both
    instances, and once the Sentinels have settled every call is relayed and counted again. Every attempt
    counted before, during and after is on the new primary (replicas=1: each batch waited for a replica),
    and every call has its audit line."""
    url = sentinel.url + "&replicas=1"
    closed, opened = _callees("+3361400", 120), _callees("+3361410", 120)
    store = {"backend": "redis", "redis_url": url}
    deployment = Deployment(tmp_path, store, kinds=("prospect", "prospect-open"), consents=closed + opened)
    deployment.start()
    try:
        a, b = deployment.instances
        # Phase 1, the load the primary dies under: each callee called twice (below the cap). Phase 2, once
        # the Sentinels have settled: each called a third time.
        during = {"prospect": [CallCase(CALLER, c, "relay") for c in closed * 2],
                  "prospect-open": [CallCase(CALLER, c, "relay") for c in opened * 2]}
        after = {"prospect": [CallCase(CALLER, c, "relay") for c in closed[:60]],
                 "prospect-open": [CallCase(CALLER, c, "relay") for c in opened[:60]]}
        uas = carrier(tmp_path / "carrier", deployment.carrier_port)
        failover: dict[str, float] = {}
        try:
            dialers = [dialer(tmp_path / "during-a", a, "prospect", during["prospect"], rate=RATE),
                       dialer(tmp_path / "during-b", b, "prospect-open", during["prospect-open"], rate=RATE)]
            killer = threading.Thread(target=_fail_over, args=(sentinel, failover), daemon=True)
            time.sleep(2.0)  # under load
            killer.start()
            run_a, run_b = (d.wait(timeout_s=60) for d in dialers)
            killer.join(timeout=150)
            assert "settled" in failover, failover
            dialers = [dialer(tmp_path / "after-a", a, "prospect", after["prospect"], rate=RATE),
                       dialer(tmp_path / "after-b", b, "prospect-open", after["prospect-open"], rate=RATE)]
            after_a, after_b = (d.wait(timeout_s=60) for d in dialers)
        finally:
            uas.finish(grace_s=10)
        print(f"failover: primary killed, a replica promoted after {failover['promoted']:.1f} s, "
              f"Sentinels settled after {failover['settled']:.1f} s")
        for run, plan in ((run_a, during["prospect"]), (run_b, during["prospect-open"]),
                          (after_a, after["prospect"]), (after_b, after["prospect-open"])):
            assert len(run.outcomes) == len(plan), run.summary()  # every call answered, none hung

        # A (on_store_error: reject) refused during the gap, naming the store; B (allow) relayed everything.
        refused = [o for o in run_a.outcomes if o.code != 200]
        assert refused and {(o.code, o.rule) for o in refused} == {(603, "store.unavailable")}
        first_refused = min(o.call_number for o in refused)
        assert all(o.code == 200 for o in run_a.outcomes if o.call_number < first_refused)
        assert all(o.code == 200 for o in run_b.outcomes)
        # After: both relay again, counted.
        codes = [(o.code, o.rule) for o in after_a.outcomes + after_b.outcomes]
        assert codes == [(200, None)] * (2 * len(after["prospect"])), (
            f"{sorted(set(codes))}\n{sentinel.describe()}\n{a.sipfilter.log_tail(20)}")
        open_lines = [line for line in b.audit() if line["trunk"] == "prospect-open"]
        uncounted = [line for line in open_lines if not line["attempt_recorded"]]
        assert uncounted  # relayed during the gap, each with a store.unavailable alert
        assert all(line["alerts"] and "store.unavailable" in line["alerts"][0] for line in uncounted)
        assert all(line["attempt_recorded"] for line in open_lines[-len(after["prospect-open"]):])

        # No audit line missing, no counted attempt lost.
        closed_lines = [line for line in a.audit() if line["trunk"] == "prospect"]
        assert len(closed_lines) == len(during["prospect"]) + len(after["prospect"])
        assert len(open_lines) == len(during["prospect-open"]) + len(after["prospect-open"])
        callees = set(closed + opened)
        recorded = _recorded([a, b], callees)
        assert len(recorded) == len(set(recorded))
        master = sentinel.node(sentinel.master_port())
        assert master is not sentinel.primary  # a replica was promoted
        client = master.client()
        try:
            missing = set(recorded) - _in_redis(client, callees)
            assert not missing, f"{len(missing)} counted attempts lost: {sorted(missing)[:5]}"
        finally:
            client.close()
        for instance in (a, b):
            text = instance.sipfilter.metrics()
            errors = metric_sum(text, "sipfilter_store_errors_total", backend="redis", operation="attempt")
            assert (errors or 0) > 0
            assert metric_sum(text, "sipfilter_store_up", backend="redis") == 1.0
    finally:
        deployment.stop()


def _fail_over(sentinel: SentinelGroup, out: dict[str, float]) -> None:
    """Kill the primary, wait for Sentinel's promotion, then for the Sentinels to settle: one primary, the
    other node its replica, for STABLE_S in a row (on a loaded machine a Sentinel late with its own failover
    can promote the other replica too; the Sentinels then turn it back into a replica, within about 10 s).
    `out` gets the seconds each step took."""
    old = sentinel.primary
    t0 = time.monotonic()
    old.kill()
    wait_until("Sentinel promotes a replica", lambda: sentinel.master_port() != old.port, 30)
    out["promoted"] = time.monotonic() - t0
    stable_since: list[float] = []

    def stable() -> bool:
        if not sentinel.settled():
            stable_since.clear()
            return False
        stable_since[:] = stable_since or [time.monotonic()]
        return time.monotonic() - stable_since[0] >= STABLE_S

    wait_until("the Sentinels settle on one primary with a replica", stable, 90, interval_s=0.25)
    out["settled"] = time.monotonic() - t0 - STABLE_S


# --------------------------------------------------------------------------------------------- instance


def test_an_instance_killed_under_load_restarts_with_its_state(tmp_path: Path) -> None:
    """Kill -9 instance A under load: A's dialer gives its calls up after 1 s without any answer (a live
    sipfilter answers 100 Trying at once), B's calls are untouched. A restarts with its state: the counters
    B kept raising, a consent given through B while A was down, its own audit log continued."""
    redis = RedisProcess(free_ports(1)[0], tmp_path / "redis").start()
    own_a, own_b = _callees("+3361420", 120), _callees("+3361430", 120)
    shared, late = "+33614400001", "+33614400002"
    deployment = Deployment(tmp_path, {"backend": "redis", "redis_url": redis.url}, kinds=("prospect",),
                            consents=[*own_a, *own_b, shared])
    try:
        a, b = deployment.start().instances
        plan_a = [CallCase(CALLER, c, "relay") for c in own_a]
        plan_b = [CallCase(CALLER, c, "relay") for c in own_b]
        uas = carrier(tmp_path / "carrier", deployment.carrier_port)
        try:
            dialer_a = dialer(tmp_path / "dialer-a", a, "prospect", plan_a, rate=RATE, no_answer_ms=NO_ANSWER)
            dialer_b = dialer(tmp_path / "dialer-b", b, "prospect", plan_b, rate=RATE, no_answer_ms=NO_ANSWER)
            time.sleep(1.5)
            deployment.kill(a)
            run_a, run_b = dialer_a.wait(timeout_s=60), dialer_b.wait(timeout_s=60)
            # While A is down: B lets the shared callee reach its cap, a consent is given through B.
            run_cap = _calls(tmp_path / "cap", b, [shared] * CAP)
            consent = {"account": ACCOUNT, "number": late, "proof": "f"}
            assert b.api("POST", "/api/consents", consent)[0] == 201
            deployment.restart(a)
            run_after = _calls(tmp_path / "after", a, [shared, late])
        finally:
            uas.finish(grace_s=10)

        # A's dialer: calls answered before the kill, every later one given up after NO_ANSWER ms: it is
        # done about when its last call was due, not after SIP's 32 s transaction timeout.
        answered = len(run_a.outcomes)
        assert 0 < answered < len(plan_a)
        assert run_a.failed == len(plan_a) - answered, run_a.summary()
        assert run_a.elapsed_s < len(plan_a) / RATE + NO_ANSWER / 1000 + 3, run_a.summary()
        # B's calls are untouched.
        assert [o.code for o in run_b.outcomes] == [200] * len(plan_b), run_b.summary()
        assert run_b.failed == 0
        assert [o.code for o in run_cap.outcomes] == [200] * CAP
        # A restarted with its state: the cap B reached, the consent given meanwhile.
        assert [(o.code, o.rule) for o in run_after.outcomes] == [(603, "frequency.cap"), (200, None)]
        # A's audit log: every call A answered before the kill, then the calls after its restart.
        lines = a.audit()
        before = [line for line in lines if line["to"] in set(own_a)]
        assert len(before) >= answered  # a decision is logged before its answer leaves
        assert [line["to"] for line in lines[-2:]] == [shared, late]
    finally:
        deployment.stop()
        redis.kill()


def _calls(workdir: Path, instance: Instance, callees: list[str]) -> SippRun:
    cases = [CallCase(CALLER, c, "relay") for c in callees]
    run = dialer(workdir, instance, "prospect", cases, rate=10).wait()
    assert len(run.outcomes) == len(callees), run.summary()
    return run


# --------------------------------------------------------------------------------------------- Cluster


def test_redis_cluster_counters_on_their_slots_and_exact(tmp_path: Path) -> None:
    """Two instances on a 3-primary Cluster: each callee's attempts and refusal share one slot (hash tag),
    callees spread over the three primaries, and the cap is exact across instances under concurrent load."""
    cluster = RedisCluster(tmp_path / "cluster").start()
    callees = _callees("+3361450", 30)
    deployment = Deployment(tmp_path, {"backend": "redis", "redis_url": cluster.url}, kinds=("prospect",),
                            consents=callees)
    try:
        a, b = deployment.start().instances
        cases = [CallCase(CALLER, c, "relay") for _ in range(3) for c in callees]
        uas = carrier(tmp_path / "carrier", deployment.carrier_port)
        try:
            dialers = [dialer(tmp_path / f"dialer-{i.name}", i, "prospect", cases, rate=RATE) for i in (a, b)]
            runs = [d.wait(timeout_s=60) for d in dialers]
        finally:
            carrier_run = uas.finish(grace_s=10)
        codes = outcomes_by_callee(runs)
        for callee in callees:
            assert sorted(codes[callee]) == [200] * CAP + [603] * 2, (callee, codes[callee])
        assert {o.rule for run in runs for o in run.outcomes if o.code != 200} == {"frequency.cap"}
        assert carrier_run.invites == CAP * len(callees)

        holders = set()
        for callee in callees:
            att, ref = _attempt_key(callee), _attempt_key(callee).replace(":att", ":ref")
            node = cluster.node_of(att)
            assert cluster.node_of(ref) is node  # one slot: the script touches both atomically
            client = node.client()
            try:
                assert client.zcard(att) == CAP
            finally:
                client.close()
            holders.add(node.port)
        assert holders == {n.port for n in cluster.nodes}  # the counters spread over every primary
        recorded = _recorded([a, b], set(callees))
        assert len(recorded) == CAP * len(callees)
    finally:
        deployment.stop()
        cluster.stop()
