"""Every Prometheus metric sipfilter exports, on its own registry, and the call-path observer feeding them.

Labels are bounded (configured trunk/target/list names, rule ids, fixed enums); never a number or Call-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sipfilter.b2bua.limits import (
    REASON_SOURCE_RATE,
    REASON_TOTAL_DIALOGS,
    REASON_TRUNK_DIALOGS,
    REASON_TRUNK_RATE,
    REASON_UNKNOWN_SOURCE,
)
from sipfilter.b2bua.observe import Observer

log = logging.getLogger("sipfilter.metrics")

# `_created` series double the scrape size and no panel or alert reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)

# Decision latency: a policy decision must stay well under a millisecond; 5 µs … 10 ms.
DECISION_BUCKETS = (
    5e-6, 1e-5, 2.5e-5, 5e-5, 7.5e-5, 1e-4, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
)  # fmt: skip
# INVITE → final response: ringing can last a minute.
INVITE_FINAL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0)
LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# The p99 decision-latency budget the alert and the dashboard compare against (seconds).
DECISION_BUDGET_S = 0.001

NO_TRUNK = "none"  # responses sent before a trunk is known (400 to a malformed request, …)
TRANSPORTS = ("udp", "tcp", "tls")
ADMISSION_REASONS = (REASON_SOURCE_RATE, REASON_TOTAL_DIALOGS, REASON_TRUNK_DIALOGS, REASON_TRUNK_RATE,
                     REASON_UNKNOWN_SOURCE)  # fmt: skip
OVERLOAD_REASONS = ("draining", *ADMISSION_REASONS)

INVITES = Counter(
    "sipfilter_invites_received_total", "New INVITEs received (not retransmissions)",
    ["trunk", "transport"], registry=REGISTRY,
)  # fmt: skip
DECISIONS = Counter(
    "sipfilter_decisions_total",
    "Policy decisions; verdict allow|reject|monitor_reject, rule = first failing rule (empty: allowed)",
    ["trunk", "verdict", "rule"], registry=REGISTRY,
)  # fmt: skip
MONITOR_REJECTIONS = Counter(
    "sipfilter_monitor_rejections_total",
    "Calls a monitor-mode trunk relayed that enforce mode would have rejected",
    ["trunk", "rule"], registry=REGISTRY,
)  # fmt: skip
RESPONSES = Counter(
    "sipfilter_responses_total", "SIP responses, direction sent|received, status class 1xx..6xx",
    ["trunk", "direction", "status_class"], registry=REGISTRY,
)  # fmt: skip
ACTIVE_DIALOGS = Gauge(
    "sipfilter_active_dialogs", "Calls in progress (INVITE received, not yet terminated)",
    ["trunk"], registry=REGISTRY,
)  # fmt: skip
RELAYED = Counter(
    "sipfilter_calls_relayed_total", "Call attempts relayed to the carrier", ["trunk"], registry=REGISTRY
)
ANSWERED = Counter(
    "sipfilter_calls_answered_total", "Relayed calls answered (2xx)", ["trunk"], registry=REGISTRY
)
DECISION_SECONDS = Histogram(
    "sipfilter_decision_duration_seconds", "Time to decide on one INVITE (policy + store)",
    ["trunk"], buckets=DECISION_BUCKETS, registry=REGISTRY,
)  # fmt: skip
INVITE_FINAL_SECONDS = Histogram(
    "sipfilter_invite_final_duration_seconds", "INVITE received to final response sent to the dialer",
    ["trunk"], buckets=INVITE_FINAL_BUCKETS, registry=REGISTRY,
)  # fmt: skip
FAILOVERS = Counter(
    "sipfilter_carrier_failovers_total", "Call attempts moved away from a failing carrier target",
    ["trunk", "target"], registry=REGISTRY,
)  # fmt: skip
MALFORMED = Counter(
    "sipfilter_malformed_messages_total", "Unparseable messages", ["transport"], registry=REGISTRY
)
UNKNOWN_SOURCE = Counter(
    "sipfilter_unknown_source_requests_total", "Requests from a source matching no trunk",
    ["transport"], registry=REGISTRY,
)  # fmt: skip
RETRANSMISSIONS = Counter(
    "sipfilter_retransmissions_total", "SIP retransmissions, direction sent|received",
    ["direction"], registry=REGISTRY,
)  # fmt: skip
OVERLOAD = Counter(
    "sipfilter_overload_drops_total", "Requests refused before policy (rate limit, overload, draining)",
    ["reason"], registry=REGISTRY,
)  # fmt: skip
AUTH = Counter(
    "sipfilter_auth_total",
    "Digest authentication of dialer requests, result passed|challenged|stale|malformed|failed",
    ["trunk", "result"], registry=REGISTRY,
)  # fmt: skip
FOREIGN_DOMAIN = Counter(
    "sipfilter_request_uri_refused_total",
    "New INVITEs refused 403 because the Request-URI host is not in the trunk's request_uri.domains",
    ["trunk"], registry=REGISTRY,
)  # fmt: skip
TLS_FAILURES = Counter(
    "sipfilter_tls_handshake_failures_total",
    "TLS connections to a carrier target that failed: unknown-ca|hostname-mismatch|expired|not-yet-valid"
    "|protocol|timeout|other", ["trunk", "target", "reason"], registry=REGISTRY,
)  # fmt: skip
LOOP_LAG = Gauge(
    "sipfilter_event_loop_lag_seconds", "Last measured asyncio event-loop lag", registry=REGISTRY
)
LOOP_LAG_HIST = Histogram(
    "sipfilter_event_loop_lag_observed_seconds", "Distribution of event-loop lag samples",
    buckets=LOOP_LAG_BUCKETS, registry=REGISTRY,
)  # fmt: skip
BUILD_INFO = Gauge(
    "sipfilter_build_info", "Always 1; labels say which build runs", ["version", "python"], registry=REGISTRY
)
CONFIG_RELOADS = Counter(
    "sipfilter_config_reloads_total", "Config reloads, result ok|error", ["result"], registry=REGISTRY
)
CONFIG_LAST_RELOAD = Gauge(
    "sipfilter_config_last_reload_timestamp_seconds", "When the config was last loaded or reloaded",
    registry=REGISTRY,
)  # fmt: skip
CONFIG_LAST_RELOAD_OK = Gauge(
    "sipfilter_config_last_reload_success", "1 when the last config (re)load succeeded, 0 when refused",
    registry=REGISTRY,
)  # fmt: skip
# Read at scrape time once the app binds STATE(ready=…); set(0) on drain stays harmless.
READY = Gauge("sipfilter_ready", "1 when /readyz answers 200", registry=REGISTRY)
DECISION_BUDGET = Gauge(
    "sipfilter_decision_budget_seconds", "p99 decision-latency budget the alert compares against",
    registry=REGISTRY,
)  # fmt: skip
DECISION_BUDGET.set(DECISION_BUDGET_S)


def _build_info() -> None:
    try:
        from importlib.metadata import version

        ver = version("sipfilter")
    except Exception:
        ver = "unknown"
    BUILD_INFO.labels(ver, platform.python_version()).set(1)


_build_info()


def record_reload(ok: bool, at: float | None = None) -> None:
    """Count a config (re)load and remember when and whether it succeeded."""
    CONFIG_RELOADS.labels("ok" if ok else "error").inc()
    CONFIG_LAST_RELOAD_OK.set(1 if ok else 0)
    if ok:
        CONFIG_LAST_RELOAD.set(time.time() if at is None else at)


def clear_series() -> None:
    """Forget every labelled series (tests that need a clean registry; never in a running process)."""
    for metric in (INVITES, DECISIONS, MONITOR_REJECTIONS, RESPONSES, ACTIVE_DIALOGS, RELAYED, ANSWERED,
                   DECISION_SECONDS, INVITE_FINAL_SECONDS, FAILOVERS, MALFORMED, UNKNOWN_SOURCE,
                   RETRANSMISSIONS, OVERLOAD, CONFIG_RELOADS, AUTH, FOREIGN_DOMAIN,
                   TLS_FAILURES):  # fmt: skip
        metric.clear()
    LOOP_LAG.set(0)
    CONFIG_LAST_RELOAD_OK.set(1)
    _TARGETS.clear()


def status_class(status: int) -> str:
    return _CLASSES[status // 100] if 1 <= status // 100 <= 6 else "other"


_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx")


class PrometheusObserver(Observer):
    """Call-path events → metrics. `.labels()` costs microseconds, so children are cached per label tuple."""

    def __init__(self) -> None:
        self._invites: dict[tuple[str, str], Any] = {}
        self._decisions: dict[tuple[str, str, str], Any] = {}
        self._decision_s: dict[str, Any] = {}
        self._monitor: dict[tuple[str, str], Any] = {}
        self._responses: dict[tuple[str, str, int], Any] = {}
        self._dialogs: dict[str, Any] = {}
        self._relayed: dict[str, Any] = {}
        self._answered: dict[str, Any] = {}
        self._final_s: dict[str, Any] = {}
        self._failovers: dict[tuple[str, str], Any] = {}
        self._malformed: dict[str, Any] = {}
        self._unknown: dict[str, Any] = {}
        self._retrans: dict[str, Any] = {}
        self._overload: dict[str, Any] = {}
        self._auth: dict[tuple[str, str], Any] = {}
        # Fixed label values start at 0: rate()/increase() see the first event, panels show 0, not "no data".
        for direction in ("sent", "received"):
            self.retransmission_child(direction)
        for transport in TRANSPORTS:
            self._malformed[transport] = MALFORMED.labels(transport)
            self._unknown[transport] = UNKNOWN_SOURCE.labels(transport)
        for reason in OVERLOAD_REASONS:
            self._overload[reason] = OVERLOAD.labels(reason)

    def retransmission_child(self, direction: str) -> Any:
        child = self._retrans.get(direction)
        if child is None:
            child = self._retrans[direction] = RETRANSMISSIONS.labels(direction)
        return child

    def invite(self, trunk: str, transport: str) -> None:
        key = (trunk, transport)
        child = self._invites.get(key)
        if child is None:
            child = self._invites[key] = INVITES.labels(trunk or NO_TRUNK, transport)
        child.inc()

    def decision(self, trunk: str, verdict: str, rule: str, seconds: float) -> None:
        key = (trunk, verdict, rule)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = DECISIONS.labels(trunk, verdict, rule)
        child.inc()
        hist = self._decision_s.get(trunk)
        if hist is None:
            hist = self._decision_s[trunk] = DECISION_SECONDS.labels(trunk)
        hist.observe(seconds)
        if verdict == "monitor_reject":
            mkey = (trunk, rule)
            mon = self._monitor.get(mkey)
            if mon is None:
                mon = self._monitor[mkey] = MONITOR_REJECTIONS.labels(trunk, rule)
            mon.inc()

    def response(self, trunk: str, direction: str, status: int) -> None:
        key = (trunk, direction, status)
        child = self._responses.get(key)
        if child is None:
            labels = (trunk or NO_TRUNK, direction, status_class(status))
            child = self._responses[key] = RESPONSES.labels(*labels)
        child.inc()

    def dialogs(self, trunk: str, delta: int) -> None:
        child = self._dialogs.get(trunk)
        if child is None:
            child = self._dialogs[trunk] = ACTIVE_DIALOGS.labels(trunk)
        child.inc(delta)

    def relayed(self, trunk: str) -> None:
        child = self._relayed.get(trunk)
        if child is None:
            child = self._relayed[trunk] = RELAYED.labels(trunk)
        child.inc()

    def answered(self, trunk: str) -> None:
        child = self._answered.get(trunk)
        if child is None:
            child = self._answered[trunk] = ANSWERED.labels(trunk)
        child.inc()

    def invite_final(self, trunk: str, seconds: float) -> None:
        child = self._final_s.get(trunk)
        if child is None:
            child = self._final_s[trunk] = INVITE_FINAL_SECONDS.labels(trunk)
        child.observe(seconds)

    def failover(self, trunk: str, target: str) -> None:
        key = (trunk, target)
        child = self._failovers.get(key)
        if child is None:
            child = self._failovers[key] = FAILOVERS.labels(trunk, target or NO_TRUNK)
        child.inc()

    def target_up(self, trunk: str, target: str, up: bool) -> None:
        # Rare (a state change): remembered for scrapes when the app has not bound the live pools.
        _TARGETS[(trunk, target)] = up

    def malformed(self, transport: str) -> None:
        child = self._malformed.get(transport)
        if child is None:
            child = self._malformed[transport] = MALFORMED.labels(transport)
        child.inc()

    def unknown_source(self, transport: str) -> None:
        child = self._unknown.get(transport)
        if child is None:
            child = self._unknown[transport] = UNKNOWN_SOURCE.labels(transport)
        child.inc()

    def retransmission(self, direction: str) -> None:
        child = self._retrans.get(direction)
        if child is None:
            child = self.retransmission_child(direction)
        child.inc()

    def overload(self, reason: str) -> None:
        child = self._overload.get(reason)
        if child is None:
            child = self._overload[reason] = OVERLOAD.labels(reason)
        child.inc()

    def auth(self, trunk: str, result: str) -> None:
        key = (trunk, result)
        child = self._auth.get(key)
        if child is None:
            child = self._auth[key] = AUTH.labels(trunk or NO_TRUNK, result)
        child.inc()

    def foreign_domain(self, trunk: str) -> None:
        FOREIGN_DOMAIN.labels(trunk or NO_TRUNK).inc()  # rare (a misconfigured dialer): no cache

    def connect_failed(self, trunk: str, target: str, transport: str, reason: str) -> None:
        # Plain TCP refusals show as failovers and target_up 0; TLS handshake failures get their reason.
        if transport == "tls" and reason != "connect":
            TLS_FAILURES.labels(trunk or NO_TRUNK, target, reason).inc()


# --------------------------------------------------------------------------------------------------
# State read at scrape time (lists, store health, audit log) — cheaper and never stale, unlike pushes.


class StateCollector(Collector):
    """Reads the running store, config and audit log at scrape time. Sources are bound by the app wiring."""

    def __init__(self) -> None:
        self.get_store: Callable[[], Any] = lambda: None
        self.get_config: Callable[[], Any] = lambda: None
        self.get_audit: Callable[[], Any] = lambda: None
        self.get_ready: Callable[[], bool | None] = lambda: None
        self.get_targets: Callable[[], Iterable[tuple[str, str, bool]]] = _observed_targets
        self.clock: Callable[[], float] = time.time

    def bind(self, *, store: Callable[[], Any] | None = None, config: Callable[[], Any] | None = None,
             audit: Callable[[], Any] | None = None, ready: Callable[[], bool | None] | None = None,
             targets: Callable[[], Iterable[tuple[str, str, bool]]] | None = None) -> None:  # fmt: skip
        if store is not None:
            self.get_store = store
        if config is not None:
            self.get_config = config
        if audit is not None:
            self.get_audit = audit
        if targets is not None:
            self.get_targets = targets
        if ready is not None:
            self.get_ready = ready
            READY.set_function(lambda: 1.0 if self.get_ready() else 0.0)

    def unbind(self) -> None:
        self.get_store = self.get_config = self.get_audit = lambda: None
        self.get_ready = lambda: None
        self.get_targets = _observed_targets
        READY.set_function(lambda: 0.0)

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[Any, ...]:
        g, c, lst = GaugeMetricFamily, CounterMetricFamily, ["list"]
        return (
            g("sipfilter_list_size", "Numbers in the current version of a list", labels=lst),
            g("sipfilter_list_age_seconds", "Seconds since the list's import", labels=lst),
            g("sipfilter_list_version", "Version of the loaded list", labels=lst),
            g("sipfilter_list_imported_timestamp_seconds", "When the loaded list was imported", labels=lst),
            g("sipfilter_list_max_age_seconds", "Strictest max_age of trunks checking it", labels=lst),
            g("sipfilter_store_up", "Store answers (1) or is in an outage (0)", labels=["backend"]),
            c("sipfilter_store_errors", "Failed store operations (I/O, timeout, Redis error)",
              labels=["backend", "operation"]),
            c("sipfilter_audit_write_errors", "Audit log writes that failed"),
            g("sipfilter_audit_failing", "1 while the last audit write failed"),
            g("sipfilter_carrier_target_up", "Carrier target answers probes and calls (1) or not (0)",
              labels=["trunk", "target"]),
        )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        fams = self._families()
        size, age, version, imported, max_age, up, errors, audit_err, audit_failing, targets = fams
        now = self.clock()
        try:
            self._lists(size, age, version, imported, max_age, now)
            self._store(up, errors)
            for trunk, target, target_up in self.get_targets():
                targets.add_metric([trunk, target], 1.0 if target_up else 0.0)
            audit = self.get_audit()
            if audit is not None:
                audit_err.add_metric([], float(getattr(audit, "write_errors", 0)))
                audit_failing.add_metric([], 1.0 if getattr(audit, "failing", False) else 0.0)
        except Exception:  # a scrape must never take anything down
            log.exception("metrics state collection failed")
        yield from fams

    def _lists(self, size: Any, age: Any, version: Any, imported: Any, max_age: Any, now: float) -> None:
        store = self.get_store()
        names: set[str] = set()
        if store is not None:
            for name in store.list_names():
                info = store.list_info(name)
                if info is None:
                    continue
                names.add(name)
                size.add_metric([name], float(info.count))
                age.add_metric([name], max(0.0, now - info.imported_at))
                version.add_metric([name], float(info.version))
                imported.add_metric([name], float(info.imported_at))
        for name, limit in list_max_ages(self.get_config()).items():
            max_age.add_metric([name], limit)

    def _store(self, up: Any, errors: Any) -> None:
        store = self.get_store()
        if store is None:
            return
        backend = _backend(store)
        health = getattr(store, "health", None)
        if health is None:
            up.add_metric([backend], 1.0)
            return
        up.add_metric([backend], 1.0 if health.up else 0.0)
        errors.add_metric([backend, "any"], float(health.errors))


# (trunk, target) → up, as last reported through PrometheusObserver.target_up.
_TARGETS: dict[tuple[str, str], bool] = {}


def _observed_targets() -> list[tuple[str, str, bool]]:
    return [(trunk, target, up) for (trunk, target), up in _TARGETS.items()]


def pool_targets(b2b: Any) -> list[tuple[str, str, bool]]:
    """(trunk, target, up) for every configured target of a running B2BUA (its `rt.pools`), at scrape time:
    every target is exported from the start, and targets removed by a reload disappear."""
    runtime = getattr(b2b, "rt", None)
    out: list[tuple[str, str, bool]] = []
    for trunk, pool in (getattr(runtime, "pools", None) or {}).items():
        for state in pool.states:
            out.append((str(trunk), str(state.dest.name), bool(state.up)))
    return out


def _backend(store: Any) -> str:
    name = type(store).__name__.lower()
    return "redis" if "redis" in name else "embedded" if "embedded" in name else name


def list_max_ages(config: Any) -> dict[str, float]:
    """List name → strictest max_age (seconds) over the trunks whose do-not-call lists include it."""
    out: dict[str, float] = {}
    if config is None:
        return out
    rules = getattr(config, "rules", {}) or {}
    for tname, trunk in getattr(config, "trunks", {}).items():
        rs = rules.get(tname)
        if rs is None:
            continue
        for name in trunk.lists.dnc:
            limit = rs.lists.max_age_for(name)
            if limit is not None:
                out[name] = min(limit, out.get(name, limit))
    return out


STATE = StateCollector()
REGISTRY.register(STATE)


def metric_names() -> set[str]:
    """Every series name sipfilter can export (counter families with their `_total`, histogram parts)."""
    names: set[str] = set()
    for fam in REGISTRY.collect():
        base = fam.name
        if fam.type == "counter":
            names.add(base + "_total")
        elif fam.type == "histogram":
            names |= {base + "_bucket", base + "_count", base + "_sum"}
        elif fam.type == "info":
            names.add(base + "_info")
        else:
            names.add(base)
    return names


# --------------------------------------------------------------------------------------------------
# Event-loop lag: a task that sleeps a fixed interval and measures how late it wakes up.

LAG_INTERVAL_S = 0.25


async def loop_lag_monitor(
    interval: float = LAG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
) -> None:
    """Runs until cancelled; drift past `interval` is time the loop was busy with something else."""
    while True:
        t0 = clock()
        await asyncio.sleep(interval)
        lag = max(0.0, clock() - t0 - interval)
        with contextlib.suppress(Exception):
            LOOP_LAG.set(lag)
            LOOP_LAG_HIST.observe(lag)
