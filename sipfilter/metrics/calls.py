"""The call-path metrics: plain ints fed by the B2BUA's observer events, exported at scrape time."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    Counter,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sipfilter.b2bua.auth import AUTH_RESULTS
from sipfilter.b2bua.observe import NO_ANSWER, NO_CONNECTION, Observer
from sipfilter.metrics.declarations import (
    CARRIER_CODE_LABELS,
    CARRIER_CODES,
    CARRIER_IDENTITY_REFUSALS,
    CARRIER_IDENTITY_WARNINGS,
    CONNECTION_CLOSE_REASONS,
    CONNECTIONS_CLOSED,
    DECISION_BUCKETS,
    DIRECTIONS,
    FOREIGN_DOMAIN,
    IDENTITY_DROPPED,
    IDENTITY_SIGN_FAILURES,
    IDENTITY_SIGNED,
    IDENTITY_VERIFICATIONS,
    INVITE_FINAL_BUCKETS,
    LARGE_REQUESTS,
    NO_TRUNK,
    OVERLOAD_REASONS,
    REGISTRY,
    TLS_FAILURES,
    TRANSPORTS,
    VERDICTS,
    X5U_FETCHES,
    KnownLabels,
)


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
# buckets in Python), and a call makes a dozen events (docs/performance.md). The B2BUA runs on one
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


_TARGETS: dict[tuple[str, str], bool] = {}


def _observed_targets() -> list[tuple[str, str, bool]]:
    return [(trunk, target, up) for (trunk, target), up in _TARGETS.items()]
