"""The call path's metric events, compiled with it (sipfilter/compiled.py): each event of the B2BUA one dict
update on the counters that `calls.CallCounters` exports at scrape time.

A prometheus_client child costs a lock and a few attribute lookups per .inc() (an .observe() walks the buckets
in Python), and a call makes a dozen events (docs/performance.md). The B2BUA runs on one thread (the event
loop, which also serves /metrics), so dicts of ints are enough.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import Counter

from sipfilter.b2bua.observe import NO_ANSWER, NO_CONNECTION, Observer
from sipfilter.metrics.declarations import (
    CARRIER_CODE_LABELS,
    CARRIER_CODES,
    CARRIER_IDENTITY_REFUSALS,
    CARRIER_IDENTITY_WARNINGS,
    CONNECTION_CLOSE_REASONS,
    CONNECTIONS_CLOSED,
    DECISION_BUCKETS,
    FOREIGN_DOMAIN,
    IDENTITY_DROPPED,
    IDENTITY_SIGN_FAILURES,
    IDENTITY_SIGNED,
    IDENTITY_VERIFICATIONS,
    INVITE_FINAL_BUCKETS,
    LARGE_REQUESTS,
    NO_TRUNK,
    OVERLOAD_REASONS,
    TLS_FAILURES,
    TRANSPORTS,
    X5U_FETCHES,
)

if TYPE_CHECKING:
    from sipfilter.metrics.calls import CallCounters


def status_class(status: int) -> str:
    return _CLASSES[status // 100] if 1 <= status // 100 <= 6 else "other"


_CLASSES: Final = ("other", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx")


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
_CARRIER_LABELS: Final = {status: carrier_code(status) for status in range(NO_CONNECTION, 700)}


class BucketCounts:
    """One histogram series: per-bucket (not cumulative) counts, the last one for +Inf, and the sum."""

    def __init__(self, nbuckets: int) -> None:
        self.counts = [0] * (nbuckets + 1)
        self.total = 0.0


def _observe(hists: dict[Any, BucketCounts], key: Hashable, buckets: tuple[float, ...], seconds: float
             ) -> None:  # fmt: skip
    hist = hists.get(key)
    if hist is None:
        hist = hists[key] = BucketCounts(len(buckets))
    hist.counts[bisect_left(buckets, seconds)] += 1  # the first bound >= seconds: its `le` bucket
    hist.total += seconds


class PrometheusObserver(Observer):
    """Call-path events → the call counters (`metrics.CALLS` in a process): a dict update per event, no
    prometheus_client object on the hot path."""

    def __init__(self, counters: CallCounters) -> None:
        c = self._c = counters
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
        TARGETS_REPORTED[(trunk, target)] = up

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


# (trunk, target) → up, as last reported through PrometheusObserver.target_up (metrics/state.py reads it).
TARGETS_REPORTED: Final[dict[tuple[str, str], bool]] = {}
