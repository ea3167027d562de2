"""The call-path metrics: plain ints that the B2BUA's observer events (events.py) update, exported at scrape
time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sipfilter.b2bua.auth import AUTH_RESULTS
from sipfilter.metrics.declarations import (
    CARRIER_CODE_LABELS,
    DECISION_BUCKETS,
    DIRECTIONS,
    INVITE_FINAL_BUCKETS,
    REGISTRY,
    VERDICTS,
    KnownLabels,
)
from sipfilter.metrics.events import (
    TARGETS_REPORTED,
    BucketCounts,
    PrometheusObserver,
    carrier_code,
    status_class,
)

__all__ = ["CALLS", "CallCounters", "PrometheusObserver", "carrier_code", "status_class"]

# `CallCounters.collect` turns the counters into the very families the prometheus_client metrics exported
# (names, help, labels, types).

# One status per class: counted at 0 from the start, they make every class's series exist.
_CLASS_STATUSES = (100, 200, 300, 400, 500, 600)


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
        self.decision_s: dict[str, BucketCounts] = {}
        self.final_s: dict[str, BucketCounts] = {}
        self.failovers: dict[tuple[str, str], int] = {}
        self.malformed: dict[str, int] = {}
        self.unknown: dict[str, int] = {}
        self.retrans: dict[str, int] = {}
        self.overload: dict[str, int] = {}
        self.auth: dict[tuple[str, str], int] = {}
        self.carrier: dict[tuple[str, str, str], int] = {}  # (trunk, target, code label)
        self.carrier_s: dict[tuple[str, str], BucketCounts] = {}  # (trunk, target)

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
                self.decision_s[trunk] = BucketCounts(len(DECISION_BUCKETS))
            if trunk not in self.final_s:
                self.final_s[trunk] = BucketCounts(nf)
            for result in AUTH_RESULTS:
                self.auth.setdefault((trunk, result), 0)
            for target in known.targets.get(trunk, ()):
                self.failovers.setdefault((trunk, target), 0)
                for code in CARRIER_CODE_LABELS:
                    self.carrier.setdefault((trunk, target, code), 0)
                if (trunk, target) not in self.carrier_s:
                    self.carrier_s[(trunk, target)] = BucketCounts(nf)

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


def _observed_targets() -> list[tuple[str, str, bool]]:
    return [(trunk, target, up) for (trunk, target), up in TARGETS_REPORTED.items()]
