"""Every Prometheus metric sipfilter exports, on its own registry, and the call-path observer feeding them.

Labels are bounded (configured trunk/target/list names, rule ids, fixed enums); never a number or Call-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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

FOREIGN_DOMAIN = Counter(
    "sipfilter_request_uri_refused_total",
    "New INVITEs refused 403 because the Request-URI host is not in the trunk's request_uri.domains",
    ["trunk"], registry=REGISTRY,
)  # fmt: skip
TLS_FAILURES = Counter(
    "sipfilter_tls_handshake_failures_total",
    "TLS connections to a carrier target that failed: unknown-ca|hostname-mismatch|expired|not-yet-valid"
    "|revoked|crl|untrusted|protocol|timeout", ["trunk", "target", "reason"], registry=REGISTRY,
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
    CALLS.clear()
    for metric in (CONFIG_RELOADS, FOREIGN_DOMAIN, TLS_FAILURES):
        metric.clear()
    LOOP_LAG.set(0)
    CONFIG_LAST_RELOAD_OK.set(1)
    _TARGETS.clear()


def status_class(status: int) -> str:
    return _CLASSES[status // 100] if 1 <= status // 100 <= 6 else "other"


_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx")


# --------------------------------------------------------------------------------------------------
# Call-path counters: plain ints, exported at scrape time.
#
# A prometheus_client child costs a lock and a few attribute lookups per .inc() (an .observe() walks the
# buckets in Python): with a dozen events per call that was ~13 µs of every call. The B2BUA runs on one
# thread (the event loop, which also serves /metrics), so a dict of ints is enough; `CallCounters.collect`
# turns it into the very families the prometheus_client metrics exported (names, help, labels, types).


class _Hist:
    """One histogram series: per-bucket (not cumulative) counts, the last one for +Inf, and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, nbuckets: int) -> None:
        self.counts = [0] * (nbuckets + 1)
        self.total = 0.0


def _observe(hists: dict[str, _Hist], trunk: str, buckets: tuple[float, ...], seconds: float) -> None:
    hist = hists.get(trunk)
    if hist is None:
        hist = hists[trunk] = _Hist(len(buckets))
    hist.counts[bisect_left(buckets, seconds)] += 1  # the first bound >= seconds: its `le` bucket
    hist.total += seconds


def _les(buckets: tuple[float, ...]) -> list[str]:
    return [floatToGoString(b) for b in buckets] + ["+Inf"]  # type: ignore[no-untyped-call]


class CallCounters(Collector):
    """The call-path metrics' values (one per process, like the registry), fed by PrometheusObserver."""

    def __init__(self) -> None:
        self.invites: dict[tuple[str, str], int] = {}  # (trunk, transport)
        self.decisions: dict[tuple[str, str, str], int] = {}  # (trunk, verdict, rule)
        self.monitor: dict[tuple[str, str], int] = {}  # (trunk, rule)
        self.responses: dict[tuple[str, str, int], int] = {}  # (trunk, direction, status): class at scrape
        self.dialogs: dict[str, int] = {}
        self.relayed: dict[str, int] = {}
        self.answered: dict[str, int] = {}
        self.decision_s: dict[str, _Hist] = {}
        self.final_s: dict[str, _Hist] = {}
        self.failovers: dict[tuple[str, str], int] = {}
        self.malformed: dict[str, int] = {}
        self.unknown: dict[str, int] = {}
        self.retrans: dict[str, int] = {}
        self.overload: dict[str, int] = {}
        self.auth: dict[tuple[str, str], int] = {}

    def clear(self) -> None:
        for values in (self.invites, self.decisions, self.monitor, self.responses, self.dialogs, self.relayed,
                       self.answered, self.decision_s, self.final_s, self.failovers, self.malformed,
                       self.unknown, self.retrans, self.overload, self.auth):  # fmt: skip
            values.clear()

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[Any, ...]:
        c, g, h = CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        return (
            c("sipfilter_invites_received", "New INVITEs received (not retransmissions)",
              labels=["trunk", "transport"]),
            c("sipfilter_decisions",
              "Policy decisions; verdict allow|reject|monitor_reject, rule = first failing rule"
              " (empty: allowed)",
              labels=["trunk", "verdict", "rule"]),
            c("sipfilter_monitor_rejections",
              "Calls a monitor-mode trunk relayed that enforce mode would have rejected",
              labels=["trunk", "rule"]),
            c("sipfilter_responses", "SIP responses, direction sent|received, status class 1xx..6xx",
              labels=["trunk", "direction", "status_class"]),
            g("sipfilter_active_dialogs", "Calls in progress (INVITE received, not yet terminated)",
              labels=["trunk"]),
            c("sipfilter_calls_relayed", "Call attempts relayed to the carrier", labels=["trunk"]),
            c("sipfilter_calls_answered", "Relayed calls answered (2xx)", labels=["trunk"]),
            h("sipfilter_decision_duration_seconds", "Time to decide on one INVITE (policy + store)",
              labels=["trunk"]),
            h("sipfilter_invite_final_duration_seconds",
              "INVITE received to final response sent to the dialer", labels=["trunk"]),
            c("sipfilter_carrier_failovers", "Call attempts moved away from a failing carrier target",
              labels=["trunk", "target"]),
            c("sipfilter_malformed_messages", "Unparseable messages", labels=["transport"]),
            c("sipfilter_unknown_source_requests", "Requests from a source matching no trunk",
              labels=["transport"]),
            c("sipfilter_retransmissions", "SIP retransmissions, direction sent|received",
              labels=["direction"]),
            c("sipfilter_overload_drops", "Requests refused before policy (rate limit, overload, draining)",
              labels=["reason"]),
            c("sipfilter_auth",
              "Digest authentication of dialer requests, result passed|challenged|stale|malformed|failed",
              labels=["trunk", "result"]),
        )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        fams = self._families()
        (invites, decisions, monitor, responses, dialogs, relayed, answered, decision_s, final_s, failovers,
         malformed, unknown, retrans, overload, auth) = fams  # fmt: skip
        # Snapshots (list(...)): nothing here may see a dict change size, whatever thread scrapes.
        for simple, fam in ((self.invites, invites), (self.decisions, decisions), (self.monitor, monitor),
                            (self.failovers, failovers), (self.auth, auth)):  # fmt: skip
            for key, n in list(simple.items()):
                fam.add_metric(list(key), float(n))
        for single, fam in ((self.dialogs, dialogs), (self.relayed, relayed), (self.answered, answered),
                            (self.malformed, malformed), (self.unknown, unknown), (self.retrans, retrans),
                            (self.overload, overload)):  # fmt: skip
            for one, n in list(single.items()):
                fam.add_metric([one], float(n))
        by_class: dict[tuple[str, str, str], int] = {}
        for (trunk, direction, status), n in list(self.responses.items()):
            key = (trunk, direction, status_class(status))
            by_class[key] = by_class.get(key, 0) + n
        for key, n in by_class.items():
            responses.add_metric(list(key), float(n))
        for hists, fam, les in ((self.decision_s, decision_s, _DECISION_LES),
                                (self.final_s, final_s, _FINAL_LES)):  # fmt: skip
            for trunk, hist in list(hists.items()):
                acc, cumulative = 0, []
                for le, n in zip(les, list(hist.counts), strict=True):
                    acc += n
                    cumulative.append((le, float(acc)))
                fam.add_metric([trunk], cumulative, hist.total)
        yield from fams


_DECISION_LES = _les(DECISION_BUCKETS)
_FINAL_LES = _les(INVITE_FINAL_BUCKETS)
CALLS = CallCounters()
REGISTRY.register(CALLS)


class PrometheusObserver(Observer):
    """Call-path events → CALLS: a dict update per event, no prometheus_client object on the hot path."""

    def __init__(self, counters: CallCounters | None = None) -> None:
        c = self._c = CALLS if counters is None else counters
        # Fixed label values start at 0: rate()/increase() see the first event, panels show 0, not "no data".
        for direction in ("sent", "received"):
            c.retrans.setdefault(direction, 0)
        for transport in TRANSPORTS:
            c.malformed.setdefault(transport, 0)
            c.unknown.setdefault(transport, 0)
        for reason in OVERLOAD_REASONS:
            c.overload.setdefault(reason, 0)
        # Bound once: each event is then one dict update.
        self._invites = c.invites
        self._decisions = c.decisions
        self._responses = c.responses
        self._dialogs = c.dialogs
        self._relayed = c.relayed
        self._answered = c.answered
        self._decision_s = c.decision_s
        self._final_s = c.final_s

    def invite(self, trunk: str, transport: str) -> None:
        key = (trunk or NO_TRUNK, transport)
        d = self._invites
        d[key] = d.get(key, 0) + 1

    def decision(self, trunk: str, verdict: str, rule: str, seconds: float) -> None:
        key = (trunk, verdict, rule)
        d = self._decisions
        d[key] = d.get(key, 0) + 1
        _observe(self._decision_s, trunk, DECISION_BUCKETS, seconds)
        if verdict == "monitor_reject":
            mkey = (trunk, rule)
            m = self._c.monitor
            m[mkey] = m.get(mkey, 0) + 1

    def response(self, trunk: str, direction: str, status: int) -> None:
        key = (trunk or NO_TRUNK, direction, status)
        d = self._responses
        d[key] = d.get(key, 0) + 1

    def dialogs(self, trunk: str, delta: int) -> None:
        d = self._dialogs
        d[trunk] = d.get(trunk, 0) + delta

    def relayed(self, trunk: str) -> None:
        d = self._relayed
        d[trunk] = d.get(trunk, 0) + 1

    def answered(self, trunk: str) -> None:
        d = self._answered
        d[trunk] = d.get(trunk, 0) + 1

    def invite_final(self, trunk: str, seconds: float) -> None:
        _observe(self._final_s, trunk, INVITE_FINAL_BUCKETS, seconds)

    def failover(self, trunk: str, target: str) -> None:
        key = (trunk, target or NO_TRUNK)
        d = self._c.failovers
        d[key] = d.get(key, 0) + 1

    def target_up(self, trunk: str, target: str, up: bool) -> None:
        # Rare (a state change): remembered for scrapes when the app has not bound the live pools.
        _TARGETS[(trunk, target)] = up

    def malformed(self, transport: str) -> None:
        d = self._c.malformed
        d[transport] = d.get(transport, 0) + 1

    def unknown_source(self, transport: str) -> None:
        d = self._c.unknown
        d[transport] = d.get(transport, 0) + 1

    def retransmission(self, direction: str) -> None:
        d = self._c.retrans
        d[direction] = d.get(direction, 0) + 1

    def overload(self, reason: str) -> None:
        d = self._c.overload
        d[reason] = d.get(reason, 0) + 1

    def auth(self, trunk: str, result: str) -> None:
        key = (trunk or NO_TRUNK, result)
        d = self._c.auth
        d[key] = d.get(key, 0) + 1

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
            c("sipfilter_store_attempt_checks", "Attempt check-and-records sent to a remote store (Redis)",
              labels=["backend"]),
            c("sipfilter_store_round_trips", "Call-path exchanges with a remote store: one pipeline carries"
              " every attempt check of an event-loop pass", labels=["backend"]),
            c("sipfilter_audit_write_errors", "Audit log writes that failed"),
            g("sipfilter_audit_failing", "1 while the last audit write failed"),
            g("sipfilter_carrier_target_up", "Carrier target answers probes and calls (1) or not (0)",
              labels=["trunk", "target"]),
        )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        fams = self._families()
        size, age, version, imported, max_age, up, errors, checks, trips, audit_err, audit_failing = fams[:-1]
        targets = fams[-1]
        now = self.clock()
        try:
            self._lists(size, age, version, imported, max_age, now)
            self._store(up, errors, checks, trips)
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

    def _store(self, up: Any, errors: Any, checks: Any, trips: Any) -> None:
        store = self.get_store()
        if store is None:
            return
        backend = _backend(store)
        if hasattr(store, "round_trips"):  # a networked store (Redis): how well its call path batches
            checks.add_metric([backend], float(store.attempt_checks))
            trips.add_metric([backend], float(store.round_trips))
        health = getattr(store, "health", None)
        if health is None:
            up.add_metric([backend], 1.0)
            return
        up.add_metric([backend], 1.0 if health.up else 0.0)
        for operation, count in health.by_operation.items():
            errors.add_metric([backend, operation], float(count))


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
