"""Every Prometheus metric sipfilter exports, on its own registry, and the call-path observer feeding them.

Labels are bounded (configured trunk/target/list names, rule ids, fixed enums); never a number or Call-ID.
Every series whose labels the running config names (trunk, target, rule of the trunk's pack, result, reason)
is exported at 0 from the config's load (`expect_series`), so that panels show 0 rather than "No data" and
rate()/increase() see the first event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sipfilter import compiled
from sipfilter.b2bua.auth import AUTH_RESULTS
from sipfilter.b2bua.limits import (
    REASON_SOURCE_RATE,
    REASON_TOTAL_DIALOGS,
    REASON_TRUNK_DIALOGS,
    REASON_TRUNK_RATE,
    REASON_UNKNOWN_SOURCE,
)
from sipfilter.b2bua.observe import NO_ANSWER, NO_CONNECTION, Observer
from sipfilter.b2bua.trunks import destination_of
from sipfilter.config import RESTART_KEYS
from sipfilter.policy import identity as identity_rules
from sipfilter.transport.stream import (
    CLOSED_IDLE,
    CONNECT_REASONS,
    REASON_CONNECT,
    REFUSED_PER_SOURCE,
    REFUSED_TOTAL,
    REFUSED_UNKNOWN_SOURCE,
)

if TYPE_CHECKING:
    from sipfilter.config import Config

log = logging.getLogger("sipfilter.metrics")

# `_created` series double the scrape size and no panel or alert reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
# process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, process_max_fds and
# process_start_time_seconds (a restart shows as a new start time), read from /proc at scrape time.
ProcessCollector(registry=REGISTRY)

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
# Reasons of sipfilter_tls_handshake_failures_total: a refused TCP connection is no TLS failure.
TLS_REASONS = tuple(r for r in CONNECT_REASONS if r != REASON_CONNECT)
DIRECTIONS = ("sent", "received")
VERDICTS = ("allow", "reject", "monitor_reject")
# The final answers of a carrier target a NOC tells apart (answered, refused, not found, unreachable callee,
# busy, cancelled, carrier failure, declined); any other code is counted under its class. `timeout`: no final
# answer before Timer B; `unreachable`: no connection (TCP refused, TLS handshake failed).
CARRIER_CODES = (200, 403, 404, 408, 480, 486, 487, 500, 503, 603)
CARRIER_CODE_LABELS = (*(str(c) for c in CARRIER_CODES), "2xx", "3xx", "4xx", "5xx", "6xx", "timeout",
                       "unreachable")  # fmt: skip
CONNECTION_CLOSE_REASONS = (REFUSED_UNKNOWN_SOURCE, REFUSED_PER_SOURCE, REFUSED_TOTAL, CLOSED_IDLE)

FOREIGN_DOMAIN = Counter(
    "sipfilter_request_uri_refused_total",
    "New INVITEs refused 403 because the Request-URI host is not in the trunk's request_uri.domains",
    ["trunk"], registry=REGISTRY,
)  # fmt: skip
CONNECTIONS_CLOSED = Counter(
    "sipfilter_connections_closed_total",
    "Inbound TCP/TLS connections refused when opened (unknown-source, per-source or total cap) or closed"
    " idle (idle)", ["transport", "reason"], registry=REGISTRY,
)  # fmt: skip
LARGE_REQUESTS = Counter(
    "sipfilter_large_requests_total",
    "Requests over 1300 bytes (RFC 3261 §18.1.1) by the transport that carried them: tcp (moved off UDP to"
    " the target's TCP twin) or udp (no TCP path: sent over UDP anyway)", ["transport"], registry=REGISTRY,
)  # fmt: skip
CONFIG_RESTART_REQUIRED = Gauge(
    "sipfilter_config_restart_required",
    "1 for a config key changed in the file since start that applies only after a restart",
    ["key"], registry=REGISTRY,
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
    "sipfilter_build_info",
    "Always 1; labels say which build runs: call_path compiled (mypyc) or pure (Python sources)",
    ["version", "python", "call_path"], registry=REGISTRY,
)  # fmt: skip
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

# STIR/SHAKEN (sipfilter/b2bua/identity.py). Label values known from the config start at 0 (expect_series).
STIR_CODES = ("428", "436", "437", "438", "other")
IDENTITY_RESULTS = ("passed", "absent", *identity_rules.RULES)
IDENTITY_VERIFICATIONS = Counter(
    "sipfilter_identity_verifications_total",
    "STIR/SHAKEN verification of dialer INVITEs: passed, absent (none and none required) or the identity.* "
    "rule that failed", ["trunk", "result"], registry=REGISTRY,
)  # fmt: skip
IDENTITY_SIGNED = Counter(
    "sipfilter_identity_signed_total", "B-leg INVITEs sipfilter signed (SHAKEN PASSporT), by attestation",
    ["trunk", "attest"], registry=REGISTRY,
)  # fmt: skip
IDENTITY_SIGN_FAILURES = Counter(
    "sipfilter_identity_sign_failures_total",
    "INVITEs a signing trunk could not sign: caller-not-e164|callee-not-e164", ["trunk", "reason"],
    registry=REGISTRY,
)  # fmt: skip
IDENTITY_DROPPED = Counter(
    "sipfilter_identity_dropped_total",
    "Dialer Identity headers not relayed because a number they sign changes on the B-leg (never sent broken)",
    ["trunk"], registry=REGISTRY,
)  # fmt: skip
CARRIER_IDENTITY_REFUSALS = Counter(
    "sipfilter_carrier_identity_refusals_total",
    "Carrier answers refusing a call for STIR/SHAKEN: 428|436|437|438, or Reason: STIR with another cause "
    "(other)", ["trunk", "target", "code"], registry=REGISTRY,
)  # fmt: skip
CARRIER_IDENTITY_WARNINGS = Counter(
    "sipfilter_carrier_identity_warnings_total",
    "Carrier answers that let a call go on but carry a Reason: STIR error (RFC 9410)",
    ["trunk", "target", "code"], registry=REGISTRY,
)  # fmt: skip
X5U_FETCHES = Counter(
    "sipfilter_identity_certificate_fetches_total",
    "x5u certificate fetches (off the call path), result ok|error", ["result"], registry=REGISTRY,
)  # fmt: skip


def _build_info() -> None:
    try:
        from importlib.metadata import version

        ver = version("sipfilter")
    except Exception:
        ver = "unknown"
    BUILD_INFO.labels(ver, platform.python_version(), call_path()).set(1)


def call_path() -> str:
    """`compiled` when the call path runs as mypyc extensions, else `pure` (see sipfilter.compiled)."""
    return "compiled" if compiled.status.startswith("compiled") else "pure"


_build_info()


def record_restart_required(keys: Iterable[str]) -> None:
    """The keys whose change waits for a restart (every other series of the gauge back to 0)."""
    pending = set(keys)
    for key in RESTART_KEYS:
        CONFIG_RESTART_REQUIRED.labels(key).set(1 if key in pending else 0)


def record_reload(ok: bool, at: float | None = None) -> None:
    """Count a config (re)load and remember when and whether it succeeded."""
    CONFIG_RELOADS.labels("ok" if ok else "error").inc()
    CONFIG_LAST_RELOAD_OK.set(1 if ok else 0)
    if ok:
        CONFIG_LAST_RELOAD.set(time.time() if at is None else at)


def clear_series() -> None:
    """Forget every labelled series (tests that need a clean registry; never in a running process)."""
    CALLS.clear()
    for metric in (CONFIG_RELOADS, FOREIGN_DOMAIN, TLS_FAILURES, IDENTITY_VERIFICATIONS, IDENTITY_SIGNED,
                   IDENTITY_SIGN_FAILURES, IDENTITY_DROPPED, CARRIER_IDENTITY_REFUSALS,
                   CARRIER_IDENTITY_WARNINGS, X5U_FETCHES, CONNECTIONS_CLOSED, LARGE_REQUESTS,
                   CONFIG_RESTART_REQUIRED):  # fmt: skip
        metric.clear()
    _expect_results()
    LOOP_LAG.set(0)
    CONFIG_LAST_RELOAD_OK.set(1)
    _TARGETS.clear()


def _expect_results() -> None:
    for result in ("ok", "error"):
        CONFIG_RELOADS.labels(result)


_expect_results()


@dataclass(frozen=True, slots=True)
class KnownLabels:
    """Label values the running config names: their series are exported, at 0, before the first event."""

    trunks: tuple[str, ...]
    transports: tuple[str, ...]  # of the dialer-side (inside) listeners
    rules: Mapping[str, tuple[str, ...]]  # trunk → every rule id its pack can report
    targets: Mapping[str, tuple[str, ...]]  # trunk → its carrier targets' names (the `target` label)


def known_labels(config: Config, rule_ids: Callable[[str], Iterable[str]]) -> KnownLabels:
    """The label values of a loaded config; `rule_ids` is the policy engine's (PolicyEngine.rule_ids)."""
    trunks = tuple(config.trunks)
    return KnownLabels(
        trunks=trunks,
        transports=tuple(dict.fromkeys(listen.transport for listen in config.sip.inside)),
        rules={name: tuple(rule_ids(name)) for name in trunks},
        targets={name: tuple(destination_of(t).name for t in trunk.targets)
                 for name, trunk in config.trunks.items()},
    )  # fmt: skip


def expect_series(known: KnownLabels, counters: CallCounters | None = None) -> None:
    """At each config (re)load: every series `known` names exists from now on (new ones at 0). Series of
    trunks a reload removed keep their last value: a counter never goes back."""
    (CALLS if counters is None else counters).expect(known)
    for result in ("ok", "error"):
        X5U_FETCHES.labels(result)
    for key in RESTART_KEYS:  # 0 until a reload finds one changed (record_restart_required)
        CONFIG_RESTART_REQUIRED.labels(key)
    for trunk in known.trunks:
        FOREIGN_DOMAIN.labels(trunk)
        # STIR/SHAKEN on every trunk, `identity:` or not (a reload may add it): a flat 0, not "No data".
        IDENTITY_DROPPED.labels(trunk)
        for result in IDENTITY_RESULTS:
            IDENTITY_VERIFICATIONS.labels(trunk, result)
        for attest in ("A", "B", "C"):
            IDENTITY_SIGNED.labels(trunk, attest)
        for reason in ("caller-not-e164", "callee-not-e164"):
            IDENTITY_SIGN_FAILURES.labels(trunk, reason)
        for target in known.targets.get(trunk, ()):
            for reason in TLS_REASONS:  # a TLS target, or one a reload may switch to TLS
                TLS_FAILURES.labels(trunk, target, reason)
            for code in STIR_CODES:
                CARRIER_IDENTITY_REFUSALS.labels(trunk, target, code)
                CARRIER_IDENTITY_WARNINGS.labels(trunk, target, code)


def status_class(status: int) -> str:
    return _CLASSES[status // 100] if 1 <= status // 100 <= 6 else "other"


_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx")
# One status per class: counted at 0 from the start, they make every class's series exist.
_CLASS_STATUSES = (100, 200, 300, 400, 500, 600)


def carrier_code(status: int) -> str:
    """The `code` label of sipfilter_carrier_responses_total (one of CARRIER_CODE_LABELS, else `other`)."""
    if status in CARRIER_CODES:
        return str(status)
    if status == NO_ANSWER:
        return "timeout"
    if status == NO_CONNECTION:
        return "unreachable"
    label = status_class(status)
    return label if label in CARRIER_CODE_LABELS else "other"


# Every status a carrier can send, mapped once: the call path does one dict lookup per final answer.
_CARRIER_LABELS = {status: carrier_code(status) for status in range(NO_CONNECTION, 700)}


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


def _observe(hists: dict[Any, _Hist], key: Hashable, buckets: tuple[float, ...], seconds: float) -> None:
    hist = hists.get(key)
    if hist is None:
        hist = hists[key] = _Hist(len(buckets))
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
        self.carrier: dict[tuple[str, str, str], int] = {}  # (trunk, target, code label)
        self.carrier_s: dict[tuple[str, str], _Hist] = {}  # (trunk, target)

    def clear(self) -> None:
        for values in (self.invites, self.decisions, self.monitor, self.responses, self.dialogs, self.relayed,
                       self.answered, self.decision_s, self.final_s, self.failovers, self.malformed,
                       self.unknown, self.retrans, self.overload, self.auth, self.carrier,
                       self.carrier_s):  # fmt: skip
            values.clear()

    def expect(self, known: KnownLabels) -> None:
        """Create at 0 every series `known` names that has no value yet (counts already there are kept)."""
        nf = len(INVITE_FINAL_BUCKETS)
        for trunk in known.trunks:
            for transport in known.transports:
                self.invites.setdefault((trunk, transport), 0)
            self.decisions.setdefault((trunk, "allow", ""), 0)
            for rule in known.rules.get(trunk, ()):
                for verdict in VERDICTS[1:]:  # a reload may switch the trunk between enforce and monitor
                    self.decisions.setdefault((trunk, verdict, rule), 0)
                self.monitor.setdefault((trunk, rule), 0)
            for direction in DIRECTIONS:
                for status in _CLASS_STATUSES:
                    self.responses.setdefault((trunk, direction, status), 0)
            for single in (self.dialogs, self.relayed, self.answered):
                single.setdefault(trunk, 0)
            if trunk not in self.decision_s:
                self.decision_s[trunk] = _Hist(len(DECISION_BUCKETS))
            if trunk not in self.final_s:
                self.final_s[trunk] = _Hist(nf)
            for result in AUTH_RESULTS:
                self.auth.setdefault((trunk, result), 0)
            for target in known.targets.get(trunk, ()):
                self.failovers.setdefault((trunk, target), 0)
                for code in CARRIER_CODE_LABELS:
                    self.carrier.setdefault((trunk, target, code), 0)
                if (trunk, target) not in self.carrier_s:
                    self.carrier_s[(trunk, target)] = _Hist(nf)

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
            c("sipfilter_carrier_responses",
              "Final answers of a carrier target to relayed INVITEs: code 200|403|404|408|480|486|487|500"
              "|503|603, other codes by class (2xx..6xx), timeout (none before Timer B), unreachable"
              " (no connection)",
              labels=["trunk", "target", "code"]),
            h("sipfilter_carrier_invite_final_duration_seconds",
              "INVITE sent to a carrier target to its final answer (timeouts and unreachable not included)",
              labels=["trunk", "target"]),
        )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        fams = self._families()
        (invites, decisions, monitor, responses, dialogs, relayed, answered, decision_s, final_s, failovers,
         malformed, unknown, retrans, overload, auth, carrier, carrier_s) = fams  # fmt: skip
        # Snapshots (list(...)): nothing here may see a dict change size, whatever thread scrapes.
        for simple, fam in ((self.invites, invites), (self.decisions, decisions), (self.monitor, monitor),
                            (self.failovers, failovers), (self.auth, auth),
                            (self.carrier, carrier)):  # fmt: skip
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
                                (self.final_s, final_s, _FINAL_LES),
                                (self.carrier_s, carrier_s, _FINAL_LES)):  # fmt: skip
            for hkey, hist in list(hists.items()):
                acc, cumulative = 0, []
                for le, n in zip(les, list(hist.counts), strict=True):
                    acc += n
                    cumulative.append((le, float(acc)))
                fam.add_metric([hkey] if isinstance(hkey, str) else list(hkey), cumulative, hist.total)
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
        for transport in ("tcp", "tls"):
            for reason in CONNECTION_CLOSE_REASONS:
                CONNECTIONS_CLOSED.labels(transport, reason)
        for transport in ("tcp", "udp"):
            LARGE_REQUESTS.labels(transport)
        # Bound once: each event is then one dict update.
        self._invites = c.invites
        self._decisions = c.decisions
        self._responses = c.responses
        self._dialogs = c.dialogs
        self._relayed = c.relayed
        self._answered = c.answered
        self._decision_s = c.decision_s
        self._final_s = c.final_s
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._carrier = c.carrier
        self._carrier_s = c.carrier_s

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

    def carrier_final(self, trunk: str, target: str, status: int, seconds: float) -> None:
        key = (trunk, target, _CARRIER_LABELS.get(status, "other"))
        d = self._carrier
        d[key] = d.get(key, 0) + 1
        if status > 0:
            _observe(self._carrier_s, (trunk, target), INVITE_FINAL_BUCKETS, seconds)

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

    def connection_closed(self, transport: str, reason: str) -> None:
        CONNECTIONS_CLOSED.labels(transport, reason).inc()  # rare (a refused or idle connection): no cache

    def large_request(self, transport: str) -> None:
        LARGE_REQUESTS.labels(transport).inc()

    def connect_failed(self, trunk: str, target: str, transport: str, reason: str) -> None:
        # Plain TCP refusals show as failovers and target_up 0; TLS handshake failures get their reason.
        if transport == "tls" and reason != "connect":
            TLS_FAILURES.labels(trunk or NO_TRUNK, target, reason).inc()

    # STIR/SHAKEN: once per call on trunks that verify or sign, so the labelled children are kept.
    def identity_verified(self, trunk: str, result: str) -> None:
        self._child(IDENTITY_VERIFICATIONS, trunk, result).inc()

    def identity_signed(self, trunk: str, attest: str) -> None:
        self._child(IDENTITY_SIGNED, trunk, attest).inc()

    def identity_not_signed(self, trunk: str, reason: str) -> None:
        IDENTITY_SIGN_FAILURES.labels(trunk, reason).inc()

    def identity_dropped(self, trunk: str) -> None:
        IDENTITY_DROPPED.labels(trunk).inc()

    def carrier_identity(self, trunk: str, target: str, code: str, refused: bool) -> None:
        family = CARRIER_IDENTITY_REFUSALS if refused else CARRIER_IDENTITY_WARNINGS
        family.labels(trunk or NO_TRUNK, target or NO_TRUNK, code).inc()

    def x5u_fetch(self, result: str) -> None:
        X5U_FETCHES.labels(result).inc()

    def _child(self, family: Counter, *labels: str) -> Any:
        key = (family, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child


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
            c("sipfilter_store_attempt_checks",
              "Attempt check-and-records sent to a remote store (Redis; 0 on the embedded store)",
              labels=["backend"]),
            c("sipfilter_store_round_trips", "Call-path exchanges with a remote store: one pipeline carries"
              " every attempt check of an event-loop pass", labels=["backend"]),
            c("sipfilter_audit_write_errors", "Audit log writes that failed"),
            g("sipfilter_audit_failing", "1 while the last audit write failed"),
            g("sipfilter_carrier_target_up", "Carrier target answers probes and calls (1) or not (0)",
              labels=["trunk", "target"]),
            g("sipfilter_list_present",
              "1 when the store holds a version of the list, 0 when a trunk reads it but none was imported",
              labels=lst),
            g("sipfilter_trunk_info",
              "Always 1; labels say how a trunk runs: mode enforce|monitor, its rule pack and version,"
              " on_store_error, on_stale_list", labels=TRUNK_INFO_LABELS),
            g("sipfilter_trunk_max_dialogs", "limits: concurrent dialogs allowed on a trunk (+Inf: no cap)",
              labels=["trunk"]),
            g("sipfilter_trunk_max_cps", "limits: new INVITEs per second allowed on a trunk (+Inf: no cap)",
              labels=["trunk"]),
            g("sipfilter_max_dialogs", "limits.max_dialogs: concurrent dialogs of all trunks (+Inf: no cap)"),
        )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        fams = self._families()
        (size, age, version, imported, max_age, up, errors, checks, trips, audit_err, audit_failing, targets,
         present, trunk_info, trunk_dialogs, trunk_cps, max_dialogs) = fams  # fmt: skip
        now = self.clock()
        config = self.get_config()
        # Each part on its own: a scrape must never take anything down, nor one failure hide the rest.
        parts: tuple[Callable[[], None], ...] = (
            lambda: self._lists(size, age, version, imported, max_age, present, config, now),
            lambda: self._store(up, errors, checks, trips),
            lambda: self._targets(targets),
            lambda: self._audit(audit_err, audit_failing),
            lambda: _trunks(config, trunk_info, trunk_dialogs, trunk_cps, max_dialogs),
        )
        for part in parts:
            try:
                part()
            except Exception:
                log.exception("metrics state collection failed")
        yield from fams

    def _lists(self, size: Any, age: Any, version: Any, imported: Any, max_age: Any, present: Any,
               config: Any, now: float) -> None:  # fmt: skip
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
        for name, limit in list_max_ages(config).items():
            max_age.add_metric([name], limit)
        for name in sorted(names | configured_lists(config)):
            present.add_metric([name], 1.0 if name in names else 0.0)

    def _targets(self, targets: Any) -> None:
        for trunk, target, target_up in self.get_targets():
            targets.add_metric([trunk, target], 1.0 if target_up else 0.0)

    def _audit(self, audit_err: Any, audit_failing: Any) -> None:
        audit = self.get_audit()
        if audit is not None:
            audit_err.add_metric([], float(getattr(audit, "write_errors", 0)))
            audit_failing.add_metric([], 1.0 if getattr(audit, "failing", False) else 0.0)

    def _store(self, up: Any, errors: Any, checks: Any, trips: Any) -> None:
        store = self.get_store()
        if store is None:
            return
        backend = _backend(store)
        # A networked store (Redis): how well its call path batches. The embedded store sends nothing: 0, so
        # that the panel reads 0 (or NaN), not "No data", and the series exist before a backend switch.
        checks.add_metric([backend], float(getattr(store, "attempt_checks", 0)))
        trips.add_metric([backend], float(getattr(store, "round_trips", 0)))
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


TRUNK_INFO_LABELS = ["trunk", "mode", "rule_pack", "rule_pack_version", "on_store_error", "on_stale_list"]


def _trunks(config: Any, info: Any, trunk_dialogs: Any, trunk_cps: Any, max_dialogs: Any) -> None:
    """Trunk state and capacity, from the running config (a reload shows at the next scrape)."""
    if config is None:
        return
    rules = config.rules
    limits = config.limits
    for name, trunk in config.trunks.items():
        rs = rules.get(name)
        info.add_metric([name, trunk.mode, trunk.rule_pack, rs.version if rs is not None else "",
                         trunk.on_store_error, trunk.on_stale_list], 1.0)  # fmt: skip
        tl = limits.for_trunk(name) if limits is not None else None
        cap = tl.max_dialogs if tl is not None else None
        cps = tl.max_cps if tl is not None else None
        trunk_dialogs.add_metric([name], math.inf if cap is None else float(cap))
        trunk_cps.add_metric([name], math.inf if cps is None else float(cps))
    total = limits.max_dialogs if limits is not None else None
    max_dialogs.add_metric([], math.inf if total is None else float(total))


def configured_lists(config: Any) -> set[str]:
    """Every store list a trunk of `config` reads (do-not-call lists, named caller-ID lists)."""
    if config is None:
        return set()
    return {name for trunk in config.trunks.values() for name in trunk.lists.store_lists}


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
