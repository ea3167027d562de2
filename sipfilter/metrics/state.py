"""State read at scrape time (lists, store health, audit log, carrier targets, trunk capacity): cheaper than
pushing it and never stale."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sipfilter.metrics.calls import _observed_targets
from sipfilter.metrics.declarations import READY, REGISTRY

log = logging.getLogger("sipfilter.metrics")


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
