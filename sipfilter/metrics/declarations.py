"""The metrics sipfilter exports through prometheus_client: the registry, the label values and buckets
they use, the metric objects set by rare events (reloads, TLS failures, STIR/SHAKEN, event-loop lag).

Labels are bounded (configured trunk/target/list names, rule ids, fixed enums); never a number or Call-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from sipfilter import compiled
from sipfilter.b2bua.limits import (
    REASON_SOURCE_RATE,
    REASON_TOTAL_DIALOGS,
    REASON_TRUNK_DIALOGS,
    REASON_TRUNK_RATE,
    REASON_UNKNOWN_SOURCE,
)
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


@dataclass(frozen=True, slots=True)
class KnownLabels:
    """Label values the running config names: their series are exported, at 0, before the first event."""

    trunks: tuple[str, ...]
    transports: tuple[str, ...]  # of the dialer-side (inside) listeners
    rules: Mapping[str, tuple[str, ...]]  # trunk → every rule id its pack can report
    targets: Mapping[str, tuple[str, ...]]  # trunk → its carrier targets' names (the `target` label)


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


def _expect_results() -> None:
    for result in ("ok", "error"):
        CONFIG_RELOADS.labels(result)


_expect_results()


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
