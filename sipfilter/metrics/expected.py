"""The series exported at 0 from the config's load (`expect_series`): every series whose labels the
running config names (trunk, target, rule of the trunk's pack, result, reason) exists before its first
event, so that panels show 0 rather than "No data" and rate()/increase() see the first event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sipfilter.b2bua.trunks import destination_of
from sipfilter.config import RESTART_KEYS, Config
from sipfilter.metrics.calls import CALLS, CallCounters
from sipfilter.metrics.declarations import (
    CARRIER_IDENTITY_REFUSALS,
    CARRIER_IDENTITY_WARNINGS,
    CONFIG_LAST_RELOAD_OK,
    CONFIG_RELOADS,
    CONFIG_RESTART_REQUIRED,
    CONNECTIONS_CLOSED,
    FOREIGN_DOMAIN,
    IDENTITY_DROPPED,
    IDENTITY_RESULTS,
    IDENTITY_SIGN_FAILURES,
    IDENTITY_SIGNED,
    IDENTITY_VERIFICATIONS,
    LARGE_REQUESTS,
    LOOP_LAG,
    STIR_CODES,
    TLS_FAILURES,
    TLS_REASONS,
    X5U_FETCHES,
    KnownLabels,
    _expect_results,
)
from sipfilter.metrics.events import TARGETS_REPORTED


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
    TARGETS_REPORTED.clear()


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
