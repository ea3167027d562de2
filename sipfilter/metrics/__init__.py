"""Every Prometheus metric sipfilter exports, on its own registry, and the call-path observer feeding them.

Labels are bounded (configured trunk/target/list names, rule ids, fixed enums); never a number or Call-ID.
Every series whose labels the running config names (trunk, target, rule of the trunk's pack, result, reason)
is exported at 0 from the config's load (`expect_series`), so that panels show 0 rather than "No data" and
rate()/increase() see the first event.

- declarations: the registry, label values, buckets and the prometheus_client metrics set by rare events;
- events: the observer of the B2BUA's events, compiled with the call path, which updates the counters;
- calls: the call-path counters (plain ints), exported at scrape time;
- state: what is read at scrape time (store, lists, audit log, carrier targets, trunks);
- expected: the series a loaded config names, created at 0.
The registry collects in import order: declarations, then the call-path counters, then the state.
"""

from __future__ import annotations

from sipfilter.metrics.calls import CALLS, CallCounters
from sipfilter.metrics.declarations import (
    ADMISSION_REASONS,
    BUILD_INFO,
    CARRIER_CODE_LABELS,
    CARRIER_CODES,
    CARRIER_IDENTITY_REFUSALS,
    CARRIER_IDENTITY_WARNINGS,
    CONFIG_LAST_RELOAD,
    CONFIG_LAST_RELOAD_OK,
    CONFIG_RELOADS,
    CONFIG_RESTART_REQUIRED,
    CONNECTION_CLOSE_REASONS,
    CONNECTIONS_CLOSED,
    DECISION_BUCKETS,
    DECISION_BUDGET,
    DECISION_BUDGET_S,
    DIRECTIONS,
    FOREIGN_DOMAIN,
    IDENTITY_DROPPED,
    IDENTITY_RESULTS,
    IDENTITY_SIGN_FAILURES,
    IDENTITY_SIGNED,
    IDENTITY_VERIFICATIONS,
    INVITE_FINAL_BUCKETS,
    LAG_INTERVAL_S,
    LARGE_REQUESTS,
    LOOP_LAG,
    LOOP_LAG_BUCKETS,
    LOOP_LAG_HIST,
    NO_TRUNK,
    OVERLOAD_REASONS,
    READY,
    REGISTRY,
    STIR_CODES,
    TLS_FAILURES,
    TLS_REASONS,
    TRANSPORTS,
    VERDICTS,
    X5U_FETCHES,
    KnownLabels,
    call_path,
    loop_lag_monitor,
    record_reload,
    record_restart_required,
)
from sipfilter.metrics.events import PrometheusObserver, carrier_code, status_class
from sipfilter.metrics.expected import clear_series, expect_series, known_labels
from sipfilter.metrics.state import (
    STATE,
    TRUNK_INFO_LABELS,
    StateCollector,
    configured_lists,
    list_max_ages,
    metric_names,
    pool_targets,
)

__all__ = [
    "ADMISSION_REASONS",
    "BUILD_INFO",
    "CALLS",
    "CARRIER_CODES",
    "CARRIER_CODE_LABELS",
    "CARRIER_IDENTITY_REFUSALS",
    "CARRIER_IDENTITY_WARNINGS",
    "CONFIG_LAST_RELOAD",
    "CONFIG_LAST_RELOAD_OK",
    "CONFIG_RELOADS",
    "CONFIG_RESTART_REQUIRED",
    "CONNECTIONS_CLOSED",
    "CONNECTION_CLOSE_REASONS",
    "DECISION_BUCKETS",
    "DECISION_BUDGET",
    "DECISION_BUDGET_S",
    "DIRECTIONS",
    "FOREIGN_DOMAIN",
    "IDENTITY_DROPPED",
    "IDENTITY_RESULTS",
    "IDENTITY_SIGNED",
    "IDENTITY_SIGN_FAILURES",
    "IDENTITY_VERIFICATIONS",
    "INVITE_FINAL_BUCKETS",
    "LAG_INTERVAL_S",
    "LARGE_REQUESTS",
    "LOOP_LAG",
    "LOOP_LAG_BUCKETS",
    "LOOP_LAG_HIST",
    "NO_TRUNK",
    "OVERLOAD_REASONS",
    "READY",
    "REGISTRY",
    "STATE",
    "STIR_CODES",
    "TLS_FAILURES",
    "TLS_REASONS",
    "TRANSPORTS",
    "TRUNK_INFO_LABELS",
    "VERDICTS",
    "X5U_FETCHES",
    "CallCounters",
    "KnownLabels",
    "PrometheusObserver",
    "StateCollector",
    "call_path",
    "carrier_code",
    "clear_series",
    "configured_lists",
    "expect_series",
    "known_labels",
    "list_max_ages",
    "loop_lag_monitor",
    "metric_names",
    "pool_targets",
    "record_reload",
    "record_restart_required",
    "status_class",
]
