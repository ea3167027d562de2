"""PrometheusObserver → our registry, the scrape-time state collector, and label hygiene."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sipfilter import metrics
from sipfilter.policy.lists import ListRule, ListRules
from sipfilter.stores.base import ListInfo
from sipfilter.stores.writable import OPERATIONS, Health


def value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_observer_counts_every_event() -> None:
    obs = metrics.PrometheusObserver(metrics.CALLS)
    before = value("sipfilter_invites_received_total", trunk="obs-a", transport="udp") or 0.0
    for _ in range(3):
        obs.invite("obs-a", "udp")
    obs.decision("obs-a", "reject", "callee.dnc.bloctel", 2e-5)
    obs.decision("obs-a", "monitor_reject", "hours.window", 4e-5)
    obs.decision("obs-a", "allow", "", 3e-5)
    obs.response("obs-a", "sent", 603)
    obs.response("obs-a", "received", 180)
    obs.response("", "sent", 400)
    obs.dialogs("obs-a", 1)
    obs.dialogs("obs-a", 1)
    obs.dialogs("obs-a", -1)
    obs.relayed("obs-a")
    obs.answered("obs-a")
    obs.invite_final("obs-a", 3.2)
    obs.failover("obs-a", "carrier-1")
    obs.target_up("obs-a", "carrier-1", False)
    obs.malformed("tcp")
    obs.unknown_source("udp")
    obs.retransmission("received")
    obs.overload("rate_limit")

    assert value("sipfilter_invites_received_total", trunk="obs-a", transport="udp") == before + 3
    assert value("sipfilter_decisions_total", trunk="obs-a", verdict="reject", rule="callee.dnc.bloctel") == 1
    assert value("sipfilter_monitor_rejections_total", trunk="obs-a", rule="hours.window") == 1
    assert value("sipfilter_monitor_rejections_total", trunk="obs-a", rule="callee.dnc.bloctel") is None
    assert value("sipfilter_decision_duration_seconds_count", trunk="obs-a") == 3
    # 2e-5 and 3e-5 fall under the 50 µs bucket, 4e-5 too; none under 10 µs.
    assert value("sipfilter_decision_duration_seconds_bucket", trunk="obs-a", le="1e-05") == 0
    assert value("sipfilter_decision_duration_seconds_bucket", trunk="obs-a", le="5e-05") == 3
    assert value("sipfilter_responses_total", trunk="obs-a", direction="sent", status_class="6xx") == 1
    assert value("sipfilter_responses_total", trunk="obs-a", direction="received", status_class="1xx") == 1
    none = metrics.NO_TRUNK
    assert value("sipfilter_responses_total", trunk=none, direction="sent", status_class="4xx") >= 1
    assert value("sipfilter_active_dialogs", trunk="obs-a") == 1
    assert value("sipfilter_calls_relayed_total", trunk="obs-a") == 1
    assert value("sipfilter_calls_answered_total", trunk="obs-a") == 1
    assert value("sipfilter_invite_final_duration_seconds_bucket", trunk="obs-a", le="2.5") == 0
    assert value("sipfilter_invite_final_duration_seconds_bucket", trunk="obs-a", le="5.0") == 1
    assert value("sipfilter_carrier_failovers_total", trunk="obs-a", target="carrier-1") == 1
    assert value("sipfilter_carrier_target_up", trunk="obs-a", target="carrier-1") == 0
    obs.target_up("obs-a", "carrier-1", True)
    assert value("sipfilter_carrier_target_up", trunk="obs-a", target="carrier-1") == 1
    assert value("sipfilter_malformed_messages_total", transport="tcp") >= 1
    assert value("sipfilter_unknown_source_requests_total", transport="udp") >= 1
    assert value("sipfilter_retransmissions_total", direction="received") >= 1
    assert value("sipfilter_overload_drops_total", reason="rate_limit") >= 1


def test_status_class() -> None:
    assert [metrics.status_class(s) for s in (100, 183, 200, 302, 486, 503, 603, 99, 700)] == [
        "1xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "other", "other",
    ]  # fmt: skip


def test_labels_are_bounded_and_never_numbers() -> None:
    obs = metrics.PrometheusObserver(metrics.CALLS)
    obs.invite("obs-b", "udp")
    obs.decision("obs-b", "allow", "", 1e-5)
    allowed = {"trunk", "transport", "verdict", "rule", "direction", "status_class", "target", "list",
               "backend", "operation", "reason", "result", "version", "python", "call_path", "code", "mode",
               "rule_pack", "rule_pack_version", "on_store_error", "on_stale_list",
               "attest", "le", "key"}  # fmt: skip  # key: config.RESTART_KEYS
    text = generate_latest(metrics.REGISTRY).decode()
    for fam in text_string_to_metric_families(text):
        assert fam.name.startswith(("sipfilter_", "process_")), fam.name
        for sample in fam.samples:
            assert set(sample.labels) <= allowed, (sample.name, sample.labels)
            for v in sample.labels.values():
                assert not v.startswith("+33"), sample


def test_names_follow_conventions() -> None:
    names = metrics.metric_names()
    assert "sipfilter_list_max_age_seconds" in names and "sipfilter_store_errors_total" in names
    for fam in metrics.REGISTRY.collect():
        if fam.type == "counter":
            assert not fam.name.endswith("_total")  # the client appends it: the exposed name ends in _total
        if any(part in fam.name for part in ("_latency", "_duration", "_age", "_lag", "timestamp")):
            assert fam.name.endswith("_seconds"), fam.name
    assert metrics.DECISION_BUCKETS[0] == 5e-6 and metrics.DECISION_BUCKETS[-1] == 0.01


def test_build_info_and_reload() -> None:
    assert value("sipfilter_build_info", version=_any_label("sipfilter_build_info", "version"),
                 python=_any_label("sipfilter_build_info", "python"),
                 call_path=metrics.call_path()) == 1  # fmt: skip
    ok_before = value("sipfilter_config_reloads_total", result="ok") or 0.0
    metrics.record_reload(True, at=1234.0)
    assert value("sipfilter_config_reloads_total", result="ok") == ok_before + 1
    assert value("sipfilter_config_last_reload_timestamp_seconds") == 1234.0
    assert value("sipfilter_config_last_reload_success") == 1
    metrics.record_reload(False)
    assert value("sipfilter_config_last_reload_success") == 0
    assert value("sipfilter_config_last_reload_timestamp_seconds") == 1234.0  # last good load stays


def _any_label(name: str, label: str) -> str:
    for fam in metrics.REGISTRY.collect():
        for s in fam.samples:
            if s.name == name:
                return str(s.labels[label])
    raise AssertionError(name)


@dataclass
class FakeRedisStore:
    def __init__(self, infos: dict[str, ListInfo]) -> None:
        self.infos = infos
        self.health = Health("redis store")

    def list_names(self) -> list[str]:
        return sorted(self.infos)

    def list_info(self, name: str) -> ListInfo | None:
        return self.infos.get(name)


def _age(days: float | None) -> ListRule:
    return ListRule(None if days is None else days * 86400.0, float("inf"), None, False)


def _config() -> Any:
    rules = ListRules({"bloctel": _age(15)}, _age(30), 0.0, None, True, {})  # type: ignore[arg-type]
    trunk = SimpleNamespace(lists=SimpleNamespace(dnc=("bloctel", "internal"), authorised_caller_ids=None))
    other = SimpleNamespace(lists=SimpleNamespace(dnc=("internal",), authorised_caller_ids=None))
    strict = ListRules({"internal": _age(1)}, _age(None), 0.0, None, True, {})  # type: ignore[arg-type]
    return SimpleNamespace(
        trunks={"a": trunk, "b": other},
        rules={"a": SimpleNamespace(lists=rules), "b": SimpleNamespace(lists=strict)},
    )


@pytest.fixture
def bound() -> Any:
    store = FakeRedisStore({"bloctel": ListInfo("bloctel", 7, 1000, 500.0, "b.csv", 10, "x")})
    audit = SimpleNamespace(write_errors=2, failing=True)
    metrics.STATE.bind(store=lambda: store, config=_config, audit=lambda: audit, ready=lambda: True)
    clock = metrics.STATE.clock
    metrics.STATE.clock = lambda: 1500.0
    try:
        yield store
    finally:
        metrics.STATE.unbind()
        metrics.STATE.clock = clock


def test_state_collector_reads_store_config_audit(bound: FakeRedisStore) -> None:
    assert value("sipfilter_list_size", list="bloctel") == 1000
    assert value("sipfilter_list_version", list="bloctel") == 7
    assert value("sipfilter_list_age_seconds", list="bloctel") == 1000.0
    assert value("sipfilter_list_imported_timestamp_seconds", list="bloctel") == 500.0
    assert value("sipfilter_list_max_age_seconds", list="bloctel") == 15 * 86400.0
    # "internal": trunk a defaults to 30 days, trunk b says 1 day: the strictest wins.
    assert value("sipfilter_list_max_age_seconds", list="internal") == 86400.0
    assert value("sipfilter_list_size", list="internal") is None  # never imported: no size
    assert value("sipfilter_store_up", backend="redis") == 1  # backend named after the store class
    assert value("sipfilter_audit_write_errors_total") == 2
    assert value("sipfilter_audit_failing") == 1
    assert value("sipfilter_ready") == 1
    # Every operation is exported from the start (at 0), so rate() sees the first error.
    errors = {op: value("sipfilter_store_errors_total", backend="redis", operation=op) for op in OPERATIONS}
    assert errors == dict.fromkeys(OPERATIONS, 0)
    for operation in ("attempt", "attempt", "attempt", "sync", "sync"):
        bound.health.failed(ConnectionError("refused"), operation)
    assert value("sipfilter_store_up", backend="redis") == 0
    assert value("sipfilter_store_errors_total", backend="redis", operation="attempt") == 3
    assert value("sipfilter_store_errors_total", backend="redis", operation="sync") == 2
    assert value("sipfilter_store_errors_total", backend="redis", operation="read") == 0


def test_state_collector_survives_a_broken_store() -> None:
    class Broken:
        def list_names(self) -> list[str]:
            raise RuntimeError("boom")

    metrics.STATE.bind(store=Broken)
    try:
        text = generate_latest(metrics.REGISTRY).decode()
    finally:
        metrics.STATE.unbind()
    assert "sipfilter_invites_received_total" in text or "sipfilter_build_info" in text


async def test_loop_lag_monitor_measures_a_blocked_loop() -> None:
    import time

    task = asyncio.get_running_loop().create_task(metrics.loop_lag_monitor(interval=0.01))
    count0 = value("sipfilter_event_loop_lag_observed_seconds_count") or 0.0
    await asyncio.sleep(0.005)
    time.sleep(0.06)  # block the loop: the monitor wakes ~50 ms late
    await asyncio.sleep(0.03)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (value("sipfilter_event_loop_lag_observed_seconds_count") or 0.0) > count0
    assert (value("sipfilter_event_loop_lag_observed_seconds_bucket", le="0.025") or 0.0) < (
        value("sipfilter_event_loop_lag_observed_seconds_count") or 0.0
    )


def test_targets_come_from_the_running_pools_when_bound() -> None:
    def state(name: str, up: bool) -> Any:
        return SimpleNamespace(dest=SimpleNamespace(name=name), up=up)

    pools = {"pool-t": SimpleNamespace(states=[state("c1", True), state("c2", False)])}
    b2b = SimpleNamespace(rt=SimpleNamespace(pools=pools))
    assert metrics.pool_targets(b2b) == [("pool-t", "c1", True), ("pool-t", "c2", False)]
    assert metrics.pool_targets(None) == []
    metrics.STATE.bind(targets=lambda: metrics.pool_targets(b2b))
    try:
        assert value("sipfilter_carrier_target_up", trunk="pool-t", target="c1") == 1
        assert value("sipfilter_carrier_target_up", trunk="pool-t", target="c2") == 0
        del pools["pool-t"]  # a reload removed the trunk: its series go with it
        assert value("sipfilter_carrier_target_up", trunk="pool-t", target="c1") is None
    finally:
        metrics.STATE.unbind()


def test_fixed_label_values_start_at_zero() -> None:
    metrics.clear_series()
    metrics.PrometheusObserver(metrics.CALLS)
    assert value("sipfilter_malformed_messages_total", transport="tls") == 0
    assert value("sipfilter_unknown_source_requests_total", transport="udp") == 0
    assert value("sipfilter_retransmissions_total", direction="sent") == 0
    assert value("sipfilter_overload_drops_total", reason="draining") == 0
    assert value("sipfilter_overload_drops_total", reason="trunk-rate") == 0


def test_plain_counters_export_like_prometheus_client_histograms_and_classes() -> None:
    """The call-path values are plain ints exported at scrape time: `le` buckets are inclusive and
    cumulative, +Inf counts everything, statuses of one class add up into one series."""
    counters = metrics.CallCounters()
    obs = metrics.PrometheusObserver(counters)
    for seconds in (1e-5, 1e-5 + 1e-12, 0.5, 0.0):
        obs.decision("own", "allow", "", seconds)
    obs.invite_final("own", 120.0)
    obs.invite_final("own", 121.0)
    for status in (180, 183, 100):
        obs.response("", "received", status)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in counters.collect()
               for s in fam.samples}  # fmt: skip

    def get(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert get("sipfilter_decision_duration_seconds_bucket", trunk="own", le="5e-06") == 1  # the 0.0
    assert get("sipfilter_decision_duration_seconds_bucket", trunk="own", le="1e-05") == 2  # le: inclusive
    assert get("sipfilter_decision_duration_seconds_bucket", trunk="own", le="2.5e-05") == 3
    assert get("sipfilter_decision_duration_seconds_bucket", trunk="own", le="0.01") == 3
    assert get("sipfilter_decision_duration_seconds_bucket", trunk="own", le="+Inf") == 4
    assert get("sipfilter_decision_duration_seconds_count", trunk="own") == 4
    assert get("sipfilter_decision_duration_seconds_sum", trunk="own") == pytest.approx(0.50002)
    assert get("sipfilter_invite_final_duration_seconds_bucket", trunk="own", le="120.0") == 1
    assert get("sipfilter_invite_final_duration_seconds_bucket", trunk="own", le="+Inf") == 2
    assert get("sipfilter_responses_total", trunk=metrics.NO_TRUNK, direction="received",
               status_class="1xx") == 3  # fmt: skip
    assert get("sipfilter_retransmissions_total", direction="sent") == 0  # fixed labels start at 0
    assert value("sipfilter_decisions_total", trunk="own", verdict="allow", rule="") is None  # not CALLS
    counters.clear()
    assert not [s for fam in counters.collect() for s in fam.samples]


def test_identity_series_start_at_zero_and_count() -> None:
    target = SimpleNamespace(uri="sip:carrier.example:5060")
    metrics.expect_series(metrics.KnownLabels(
        trunks=("stir-a", "stir-b"), transports=("udp",), rules={},
        targets={t: (target.uri,) for t in ("stir-a", "stir-b")},
    ))  # fmt: skip
    refusals = "sipfilter_carrier_identity_refusals_total"
    for code in ("428", "436", "437", "438", "other"):
        assert value(refusals, trunk="stir-b", target=target.uri, code=code) == 0
    assert value("sipfilter_identity_verifications_total", trunk="stir-a", result="identity.invalid") == 0
    assert value("sipfilter_identity_verifications_total", trunk="stir-b", result="passed") == 0
    assert value("sipfilter_identity_signed_total", trunk="stir-a", attest="C") == 0
    assert value("sipfilter_identity_certificate_fetches_total", result="error") == 0
    obs = metrics.PrometheusObserver(metrics.CALLS)
    obs.carrier_identity("stir-b", target.uri, "438", True)
    obs.carrier_identity("stir-b", target.uri, "438", False)
    obs.identity_verified("stir-a", "passed")
    obs.identity_verified("stir-a", "passed")
    obs.identity_signed("stir-a", "A")
    obs.identity_not_signed("stir-a", "caller-not-e164")
    obs.identity_dropped("stir-b")
    obs.x5u_fetch("ok")
    assert value(refusals, trunk="stir-b", target=target.uri, code="438") == 1
    warnings = "sipfilter_carrier_identity_warnings_total"
    assert value(warnings, trunk="stir-b", target=target.uri, code="438") == 1
    assert value("sipfilter_identity_verifications_total", trunk="stir-a", result="passed") == 2
    assert value("sipfilter_identity_signed_total", trunk="stir-a", attest="A") == 1
    assert value("sipfilter_identity_sign_failures_total", trunk="stir-a", reason="caller-not-e164") == 1
    assert value("sipfilter_identity_dropped_total", trunk="stir-b") == 1
    assert value("sipfilter_identity_certificate_fetches_total", result="ok") >= 1
