"""What the NOC reads besides calls: series at 0 from the config's load, carrier answers per target, trunk
state and capacity, build and process health."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from noc_config import TARGET1, TARGET2, noc_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "b2bua"))
from b2bua_rig import CARRIER2, Rig, answer, invite, make_rig
from b2bua_rig import requests_named as _requests

from sipfilter import compiled, metrics
from sipfilter.b2bua.auth import AUTH_RESULTS
from sipfilter.b2bua.observe import NO_ANSWER, NO_CONNECTION, Observer
from sipfilter.config import Config
from sipfilter.policy.engine import PolicyEngine
from sipfilter.stores.base import ListInfo


def value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def samples(counters: metrics.CallCounters) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in counters.collect()
            for s in fam.samples}  # fmt: skip


# -- carrier answers per target, from the B2BUA ------------------------------------------------------------


class CarrierRecorder(Observer):
    def __init__(self) -> None:
        self.finals: list[tuple[str, str, int, float]] = []

    def carrier_final(self, trunk: str, target: str, status: int, seconds: float) -> None:
        self.finals.append((trunk, target, status, seconds))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Rig, CarrierRecorder]]:
    rig = make_rig(tmp_path)
    rec = CarrierRecorder()
    rig.b2b.obs = rec
    yield rig, rec


def test_answered_call_reports_the_target_its_code_and_the_time_to_answer_once(
        rig: tuple[Rig, CarrierRecorder]) -> None:  # fmt: skip
    r, rec = rig
    r.from_dialer(invite())
    (b_inv,) = _requests(r.outside.take(), "INVITE")
    r.clock.advance(0.5)
    r.from_carrier(answer(b_inv, 180))
    r.clock.advance(1.5)
    r.from_carrier(answer(b_inv, 200))
    r.from_carrier(answer(b_inv, 200))  # a retransmitted 2xx is not a second answer
    assert rec.finals == [("dialer", TARGET1, 200, pytest.approx(2.0))]


def test_failover_reports_each_target_with_its_own_outcome(rig: tuple[Rig, CarrierRecorder]) -> None:
    r, rec = rig
    r.from_dialer(invite())
    (first,) = _requests(r.outside.take(), "INVITE")
    r.clock.advance(0.25)
    r.from_carrier(answer(first, 503))
    (second,) = _requests(r.outside.take(), "INVITE")
    r.clock.advance(0.75)
    r.from_carrier(answer(second, 486), CARRIER2)
    assert rec.finals == [("dialer", TARGET1, 503, pytest.approx(0.25)),
                          ("dialer", TARGET2, 486, pytest.approx(0.75))]  # fmt: skip


def test_a_silent_target_is_a_timeout_and_a_refused_connection_unreachable(
        rig: tuple[Rig, CarrierRecorder]) -> None:  # fmt: skip
    r, rec = rig
    r.from_dialer(invite())
    r.outside.take()
    r.clock.advance(64 * r.b2b.rt.timers.t1)  # Timer B: target 1 never answered
    assert rec.finals[0][:3] == ("dialer", TARGET1, NO_ANSWER)
    assert _requests(r.outside.take(), "INVITE")  # target 1's retransmissions, then target 2
    r.b2b.on_connect_failed(r.outside, CARRIER2, SimpleNamespace(transport="tcp", reason="connect"))
    assert [f[:3] for f in rec.finals] == [("dialer", TARGET1, NO_ANSWER), ("dialer", TARGET2, NO_CONNECTION)]


def test_carrier_codes_are_a_fixed_set() -> None:
    assert [metrics.carrier_code(s) for s in (200, 202, 302, 403, 484, 486, 503, 502, 603, 606)] == [
        "200", "2xx", "3xx", "403", "4xx", "486", "503", "5xx", "603", "6xx",
    ]  # fmt: skip
    assert metrics.carrier_code(NO_ANSWER) == "timeout"
    assert metrics.carrier_code(NO_CONNECTION) == "unreachable"
    assert metrics.carrier_code(799) == "other"
    assert {metrics.carrier_code(s) for s in range(-1, 700)} <= {*metrics.CARRIER_CODE_LABELS, "other"}


def test_observer_counts_carrier_answers_and_their_latency_per_target() -> None:
    counters = metrics.CallCounters()
    obs = metrics.PrometheusObserver(counters)
    obs.carrier_final("t", "sip:c1", 200, 3.0)
    obs.carrier_final("t", "sip:c1", 599, 0.2)
    obs.carrier_final("t", "sip:c1", NO_ANSWER, 32.0)
    obs.carrier_final("t", "sip:c2", NO_CONNECTION, 0.001)
    got = samples(counters)

    def get(name: str, **labels: str) -> float | None:
        return got.get((name, tuple(sorted(labels.items()))))

    assert get("sipfilter_carrier_responses_total", trunk="t", target="sip:c1", code="200") == 1
    assert get("sipfilter_carrier_responses_total", trunk="t", target="sip:c1", code="5xx") == 1
    assert get("sipfilter_carrier_responses_total", trunk="t", target="sip:c1", code="timeout") == 1
    assert get("sipfilter_carrier_responses_total", trunk="t", target="sip:c2", code="unreachable") == 1
    # Answers only: a timeout or no connection says nothing about how fast the carrier answers.
    assert get("sipfilter_carrier_invite_final_duration_seconds_count", trunk="t", target="sip:c1") == 2
    assert get("sipfilter_carrier_invite_final_duration_seconds_bucket", trunk="t", target="sip:c1",
               le="0.25") == 1  # fmt: skip
    assert get("sipfilter_carrier_invite_final_duration_seconds_sum", trunk="t", target="sip:c1") == 3.2
    assert get("sipfilter_carrier_invite_final_duration_seconds_count", trunk="t", target="sip:c2") is None


# -- every series the config names, at 0 from the load ------------------------------------------------------


def test_a_loaded_config_exports_every_labelled_series_at_zero(tmp_path: Path) -> None:
    config = noc_config(tmp_path)
    engine = PolicyEngine(config)
    counters = metrics.CallCounters()
    metrics.clear_series()
    metrics.expect_series(metrics.known_labels(config, engine.rule_ids), counters)
    got = samples(counters)

    def get(name: str, **labels: str) -> float | None:
        return got.get((name, tuple(sorted(labels.items()))))

    targets = {"dialer": (TARGET1, TARGET2), "callback": ("sip:192.0.2.7:5061",)}
    for trunk in ("dialer", "callback"):
        rules = engine.rule_ids(trunk)
        assert "callee.dnc.bloctel" in rules and "time.window" in rules
        for transport in ("udp", "tcp"):
            assert get("sipfilter_invites_received_total", trunk=trunk, transport=transport) == 0
        assert get("sipfilter_decisions_total", trunk=trunk, verdict="allow", rule="") == 0
        for rule in rules:
            for verdict in ("reject", "monitor_reject"):
                assert get("sipfilter_decisions_total", trunk=trunk, verdict=verdict, rule=rule) == 0, rule
            assert get("sipfilter_monitor_rejections_total", trunk=trunk, rule=rule) == 0
        for direction in ("sent", "received"):
            for cls in ("1xx", "2xx", "3xx", "4xx", "5xx", "6xx"):
                labels = {"trunk": trunk, "direction": direction, "status_class": cls}
                assert get("sipfilter_responses_total", **labels) == 0
        for name in ("sipfilter_active_dialogs", "sipfilter_calls_relayed_total",
                     "sipfilter_calls_answered_total", "sipfilter_decision_duration_seconds_count",
                     "sipfilter_invite_final_duration_seconds_count"):  # fmt: skip
            assert get(name, trunk=trunk) == 0, name
        for result in AUTH_RESULTS:
            assert get("sipfilter_auth_total", trunk=trunk, result=result) == 0
        assert value("sipfilter_request_uri_refused_total", trunk=trunk) == 0
        for target in targets[trunk]:
            assert get("sipfilter_carrier_failovers_total", trunk=trunk, target=target) == 0
            for code in metrics.CARRIER_CODE_LABELS:
                assert get("sipfilter_carrier_responses_total", trunk=trunk, target=target, code=code) == 0
            latency = "sipfilter_carrier_invite_final_duration_seconds"
            assert get(f"{latency}_count", trunk=trunk, target=target) == 0
            assert get(f"{latency}_bucket", trunk=trunk, target=target, le="+Inf") == 0
            for reason in metrics.TLS_REASONS:
                assert value("sipfilter_tls_handshake_failures_total", trunk=trunk, target=target,
                             reason=reason) == 0  # fmt: skip
    assert "connect" not in metrics.TLS_REASONS  # a refused TCP connection is not a TLS failure
    for result in ("ok", "error"):
        assert value("sipfilter_config_reloads_total", result=result) == 0


def test_a_reload_keeps_counts_and_adds_the_new_trunk(tmp_path: Path) -> None:
    counters = metrics.CallCounters()
    obs = metrics.PrometheusObserver(counters)
    first = noc_config(tmp_path / "a", extra_trunk=False)
    metrics.expect_series(metrics.known_labels(first, PolicyEngine(first).rule_ids), counters)
    obs.decision("dialer", "reject", "callee.dnc.bloctel", 1e-4)
    obs.carrier_final("dialer", TARGET1, 200, 1.0)
    second = noc_config(tmp_path / "b")
    metrics.expect_series(metrics.known_labels(second, PolicyEngine(second).rule_ids), counters)
    got = samples(counters)

    def get(name: str, **labels: str) -> float | None:
        return got.get((name, tuple(sorted(labels.items()))))

    assert get("sipfilter_decisions_total", trunk="dialer", verdict="reject", rule="callee.dnc.bloctel") == 1
    assert get("sipfilter_carrier_responses_total", trunk="dialer", target=TARGET1, code="200") == 1
    assert get("sipfilter_carrier_invite_final_duration_seconds_count", trunk="dialer", target=TARGET1) == 1
    assert get("sipfilter_decision_duration_seconds_count", trunk="dialer") == 1
    assert get("sipfilter_decisions_total", trunk="callback", verdict="monitor_reject",
               rule="callee.dnc.internal") == 0  # fmt: skip


# -- trunk state, capacity and lists, read from the running config at scrape time ---------------------------


class _Store:
    def __init__(self, infos: dict[str, ListInfo]) -> None:
        self.infos = infos

    def list_names(self) -> list[str]:
        return sorted(self.infos)

    def list_info(self, name: str) -> ListInfo | None:
        return self.infos.get(name)


@pytest.fixture
def bound(tmp_path: Path) -> Iterator[Config]:
    config = noc_config(tmp_path)
    store = _Store({"bloctel": ListInfo("bloctel", 3, 10, 1000.0, "b.txt", 1, "x"),
                    "unused": ListInfo("unused", 1, 5, 1000.0, "u.txt", 1, "y")})  # fmt: skip
    metrics.STATE.bind(store=lambda: store, config=lambda: config)
    try:
        yield config
    finally:
        metrics.STATE.unbind()


def test_trunk_state_is_exported(bound: Config) -> None:
    version = bound.rules["dialer"].version
    assert version
    assert value("sipfilter_trunk_info", trunk="dialer", mode="enforce", rule_pack="fr",
                 rule_pack_version=version, on_store_error="reject", on_stale_list="reject") == 1
    assert value("sipfilter_trunk_info", trunk="callback", mode="monitor", rule_pack="fr",
                 rule_pack_version=version, on_store_error="reject", on_stale_list="allow-and-alert") == 1


def test_capacity_limits_are_exported_and_no_cap_is_infinite(bound: Config, tmp_path: Path) -> None:
    assert value("sipfilter_trunk_max_dialogs", trunk="dialer") == 200
    assert value("sipfilter_trunk_max_cps", trunk="dialer") == 25
    assert value("sipfilter_trunk_max_dialogs", trunk="callback") == 120  # limits.default_trunk
    assert value("sipfilter_trunk_max_cps", trunk="callback") == math.inf
    assert value("sipfilter_max_dialogs") == 300
    unlimited = noc_config(tmp_path / "nolimits", limits=False)
    metrics.STATE.bind(config=lambda: unlimited)
    assert value("sipfilter_trunk_max_dialogs", trunk="dialer") == math.inf
    assert value("sipfilter_max_dialogs") == math.inf


def test_every_list_a_trunk_reads_says_whether_it_is_present(bound: Config) -> None:
    # bloctel imported; "internal" (a do-not-call list without max_age) and "our-numbers" (caller IDs) not.
    assert value("sipfilter_list_present", list="bloctel") == 1
    assert value("sipfilter_list_present", list="internal") == 0
    assert value("sipfilter_list_present", list="our-numbers") == 0
    assert value("sipfilter_list_present", list="unused") == 1  # in the store, read by no trunk
    assert value("sipfilter_list_max_age_seconds", list="internal") is None  # what the old alert needed


def test_a_broken_part_does_not_hide_the_others(bound: Config) -> None:
    def broken() -> Any:
        raise RuntimeError("store gone")

    metrics.STATE.bind(store=broken)
    assert value("sipfilter_trunk_info", trunk="dialer", mode="enforce", rule_pack="fr",
                 rule_pack_version=bound.rules["dialer"].version, on_store_error="reject",
                 on_stale_list="reject") == 1  # fmt: skip


# -- build and process ---------------------------------------------------------------------------------


def test_build_info_says_which_call_path_runs() -> None:
    assert metrics.call_path() == ("compiled" if compiled.status.startswith("compiled") else "pure")
    found = [s for fam in metrics.REGISTRY.collect() for s in fam.samples if s.name == "sipfilter_build_info"]
    assert [s.labels["call_path"] for s in found] == [metrics.call_path()]


def test_process_health_is_on_the_exported_registry() -> None:
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_max_fds", "process_start_time_seconds"):  # fmt: skip
        assert (value(name) or 0) > 0, name
    assert {"process_start_time_seconds", "process_open_fds"} <= metrics.metric_names()
