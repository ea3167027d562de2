"""What a config reload swaps atomically: the config and everything the B2BUA compiles from it."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from sipfilter.b2bua.auth import AuthGate, compile_gate
from sipfilter.b2bua.calls import Timers, transaction_timers
from sipfilter.b2bua.identity import compile_identity
from sipfilter.b2bua.limits import LimitsConfig
from sipfilter.b2bua.topology import PassList, never_relayed
from sipfilter.b2bua.trunks import TargetPool, TrunkMatcher
from sipfilter.config import Config
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.numbers import NumberReader


class PolicyPort(Protocol):
    """What the B2BUA needs from the policy side (sipfilter.policy.engine.PolicyEngine): how a trunk reads
    numbers, and a decision on plain CallFacts (with the store it looks up). The B2BUA builds the facts
    itself (b2bua/facts.py), from the same parsed values it builds the B-leg from."""

    def reader(self, trunk: str) -> NumberReader: ...

    def decide(self, facts: CallFacts, store: Any) -> Coroutine[Any, Any, Any]: ...


@dataclass
class Runtime:
    """What a config reload swaps atomically: the config and everything compiled from it."""

    config: Config
    policy: PolicyPort
    store: Any
    matcher: TrunkMatcher
    pools: dict[str, TargetPool]
    passes: dict[str, PassList]
    timers: Timers
    audit: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    auth: AuthGate | None = None  # digest authentication of the dialer (`auth:`), None when off
    identity: dict[str, Any] = field(default_factory=dict)  # trunk → TrunkIdentity (`identity:` trunks only)


def compile_runtime(config: Config, policy: PolicyPort, store: Any, audit: Any = None,
                    old: Runtime | None = None) -> Runtime:  # fmt: skip
    pools = {name: TargetPool(name, t.targets) for name, t in config.trunks.items()}
    if old is not None:
        for name, pool in pools.items():
            if name in old.pools:
                pool.adopt(old.pools[name])
    s = config.sip
    t1 = s.timers.t1_ms / 1000
    # Built once per runtime (a reload with the same section keeps the authenticator and its nonce state).
    auth = compile_gate(config.auth, old.auth if old is not None else None)
    return Runtime(
        config=config, policy=policy, store=store, audit=audit, matcher=TrunkMatcher(config.trunks),
        pools=pools,
        passes={n: PassList(t.headers.pass_, never_relayed(t)) for n, t in config.trunks.items()},
        timers=Timers(t1, s.timers.t2_ms / 1000, s.timers.t4_ms / 1000, s.ring_timeout_s,
                      s.max_call_duration_s, timer_c=max(180.0, s.ring_timeout_s) + 64 * t1,
                      transactions=transaction_timers(t1, s.timers.t2_ms / 1000, s.timers.t4_ms / 1000)),
        auth=auth, identity=compile_identity(config, old.identity if old is not None else None),
    )  # fmt: skip


def admission_config(config: Config) -> LimitsConfig:
    """The admission limits this process applies: with several workers, its share of them."""
    limits = config.limits
    if isinstance(limits, LimitsConfig):
        return limits.shared_by(config.sip.workers)
    # No `limits:` section: no caps, and unknown sources answered 403, never relayed.
    return LimitsConfig(unknown_source="reject", source_rate=1e9, source_burst=1_000_000_000)
