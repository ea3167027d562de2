"""Admission control for new requests: per-source token buckets, per-trunk call rate, dialog caps.

Pure and synchronous: the caller passes the clock in and owns the sockets; nothing here sleeps or logs.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from sipfilter.config import ConfigError, Section, YamlMap
from sipfilter.transport.stream import ConnectionLimits

# Reasons carried by Reject/Drop; stable strings, used as the `reason` label of the limits metrics.
REASON_UNKNOWN_SOURCE: Final = "unknown-source"
REASON_SOURCE_RATE: Final = "source-rate"
REASON_TRUNK_RATE: Final = "trunk-rate"
REASON_TRUNK_DIALOGS: Final = "trunk-dialogs"
REASON_TOTAL_DIALOGS: Final = "total-dialogs"
REASONS: Final = (
    REASON_UNKNOWN_SOURCE,
    REASON_SOURCE_RATE,
    REASON_TRUNK_RATE,
    REASON_TRUNK_DIALOGS,
    REASON_TOTAL_DIALOGS,
)


class LimitsConfigError(ValueError):
    """The `limits:` configuration is invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class TrunkLimits:
    """Limits of one trunk; None means unlimited."""

    max_dialogs: int | None = None  # concurrent dialogs (calls set up or being set up)
    max_cps: float | None = None  # new INVITEs per second, averaged by a token bucket
    cps_burst: int | None = None  # bucket size; defaults to max(1, ceil(max_cps))
    # Budget of each source address on this trunk; None: the global `source_rate` / `source_burst`.
    source_rate: float | None = None
    source_burst: int | None = None

    def burst(self) -> float | None:
        """The call-rate bucket's size (None: no call-rate limit)."""
        if self.max_cps is None:
            return None
        return float(self.cps_burst if self.cps_burst is not None else max(1, math.ceil(self.max_cps)))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """The `limits:` section of the config, validated."""

    # Per source IP address (only sources that matched a trunk get a bucket).
    source_rate: float = 50.0  # sustained requests per second
    source_burst: int = 100  # requests accepted back to back
    max_sources: int = 65536  # size of the bucket table; the least recently seen is evicted beyond it
    # Global and per-trunk caps on concurrent dialogs.
    max_dialogs: int | None = None
    default_trunk: TrunkLimits = field(default_factory=TrunkLimits)
    trunks: Mapping[str, TrunkLimits] = field(default_factory=dict)
    # Retry-After (seconds) sent with 503 when a dialog cap is hit; rate limits compute their own.
    retry_after_s: int = 5
    # Unknown sources are never answered (a scanner learns nothing); `reject` answers them 403 instead.
    unknown_source: str = "drop"  # drop | reject
    # Inbound TCP/TLS connections (sipfilter/transport/stream.py): caps and idle timeout.
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)

    def __post_init__(self) -> None:
        if not (self.source_rate > 0 and math.isfinite(self.source_rate)):
            raise LimitsConfigError(f"limits.source_rate must be a positive number, got {self.source_rate!r}")
        if self.source_burst < 1:
            raise LimitsConfigError(f"limits.source_burst must be >= 1, got {self.source_burst!r}")
        if self.max_sources < 1:
            raise LimitsConfigError(f"limits.max_sources must be >= 1, got {self.max_sources!r}")
        if self.max_dialogs is not None and self.max_dialogs < 0:
            raise LimitsConfigError(f"limits.max_dialogs must be >= 0, got {self.max_dialogs!r}")
        if self.retry_after_s < 0:
            raise LimitsConfigError(f"limits.retry_after_s must be >= 0, got {self.retry_after_s!r}")
        if self.unknown_source not in ("drop", "reject"):
            raise LimitsConfigError(
                f"limits.unknown_source must be drop or reject, got {self.unknown_source!r}"
            )
        every: list[tuple[str | None, TrunkLimits]] = [(None, self.default_trunk), *self.trunks.items()]
        for name, tl in every:
            where = f"limits.trunks.{name}" if name is not None else "limits.default_trunk"
            if tl.max_dialogs is not None and tl.max_dialogs < 0:
                raise LimitsConfigError(f"{where}.max_dialogs must be >= 0, got {tl.max_dialogs!r}")
            if tl.max_cps is not None and not (tl.max_cps > 0 and math.isfinite(tl.max_cps)):
                raise LimitsConfigError(f"{where}.max_cps must be a positive number, got {tl.max_cps!r}")
            if tl.cps_burst is not None and tl.cps_burst < 1:
                raise LimitsConfigError(f"{where}.cps_burst must be >= 1, got {tl.cps_burst!r}")
            rate = tl.source_rate
            if rate is not None and not (rate > 0 and math.isfinite(rate)):
                raise LimitsConfigError(f"{where}.source_rate must be a positive number, got {rate!r}")
            if tl.source_burst is not None and tl.source_burst < 1:
                raise LimitsConfigError(f"{where}.source_burst must be >= 1, got {tl.source_burst!r}")
            self._source_below_trunk(name, tl)
        c = self.connections
        if c.max_total < 1 or c.max_per_source < 1 or c.max_per_source > c.max_total:
            raise LimitsConfigError("limits.connections: max_total and max_per_source must be >= 1, and "
                                    f"max_per_source <= max_total (got {c.max_total}, {c.max_per_source})")
        if not (c.idle_timeout_s > 0 and math.isfinite(c.idle_timeout_s)):
            raise LimitsConfigError(
                f"limits.connections.idle_timeout_s must be a positive number, got {c.idle_timeout_s!r}")

    def _source_below_trunk(self, name: str | None, tl: TrunkLimits) -> None:
        """One source address must not be able to spend a whole trunk's call rate: another host of the same
        trunk (the real dialer) would then get nothing but 503 while it floods."""
        burst = tl.burst()
        if tl.max_cps is None or burst is None:
            return
        rate, source_burst = self.source_budget(name)
        where = f"limits.trunks.{name}" if name is not None else "limits.default_trunk"
        own = tl.source_rate is not None or tl.source_burst is not None
        field_ = f"{where}.source_rate" if own else "limits.source_rate"
        if rate >= tl.max_cps:
            raise LimitsConfigError(
                f"{field_} ({rate:g}/s) must be below {where}.max_cps ({tl.max_cps:g}/s): one host could take"
                " the whole trunk's call rate and starve its other dialers")
        if source_burst >= burst:
            field_ = field_.replace("source_rate", "source_burst")
            raise LimitsConfigError(
                f"{field_} ({source_burst:g}) must be below {where}.cps_burst ({burst:g}): one host's burst"
                " could empty the trunk's call-rate bucket")

    def for_trunk(self, trunk: str) -> TrunkLimits:
        return self.trunks.get(trunk, self.default_trunk)

    def shared_by(self, workers: int) -> LimitsConfig:
        """One worker's share when `workers` processes each admit the calls they own (sip.workers): every
        rate divided among them, every burst and dialog cap divided and rounded down (at least 1; a cap of 0
        stays 0), so that together they admit no more than the config says (calls spread over the workers by
        callee: each share is reached when the whole would be). A trunk's burst share stays above the burst
        share of one source, as the config check demands of the whole."""
        if workers <= 1:
            return self

        def rate(value: float | None) -> float | None:
            return None if value is None else value / workers

        def count(value: int | None) -> int | None:
            return None if value is None else (max(1, value // workers) if value > 0 else 0)

        source_burst = max(1, self.source_burst // workers)

        def trunk(limits: TrunkLimits) -> TrunkLimits:
            burst = limits.burst()
            own_source_burst = count(limits.source_burst)
            cps_burst = None
            if burst is not None:
                floor = own_source_burst if own_source_burst is not None else source_burst
                cps_burst = max(floor + 1, int(burst) // workers)
            return replace(limits, max_dialogs=count(limits.max_dialogs), max_cps=rate(limits.max_cps),
                           cps_burst=cps_burst, source_rate=rate(limits.source_rate),
                           source_burst=own_source_burst)  # fmt: skip

        return replace(self, source_rate=self.source_rate / workers, source_burst=source_burst,
                       max_dialogs=count(self.max_dialogs), default_trunk=trunk(self.default_trunk),
                       trunks={name: trunk(limits) for name, limits in self.trunks.items()})  # fmt: skip

    def source_budget(self, trunk: str | None) -> tuple[float, float]:
        """(rate, burst) of one source address on `trunk` (None: a trunk without limits of its own): the
        trunk's own budget, else the global one."""
        tl = self.default_trunk if trunk is None else self.for_trunk(trunk)
        rate = tl.source_rate if tl.source_rate is not None else self.source_rate
        burst = tl.source_burst if tl.source_burst is not None else self.source_burst
        return rate, float(burst)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> LimitsConfig:
        """Build from the YAML `limits:` mapping (unknown keys are errors, so typos do not pass silently)."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise LimitsConfigError("limits must be a mapping")
        known = {
            "source_rate", "source_burst", "max_sources", "max_dialogs", "default_trunk", "trunks",
            "retry_after_s", "unknown_source", "connections",
        }  # fmt: skip
        unknown = sorted(set(data) - known)
        if unknown:
            raise LimitsConfigError(f"limits: unknown key(s) {', '.join(map(str, unknown))}")
        kwargs: dict[str, Any] = {}
        for key in ("source_rate",):
            if key in data:
                kwargs[key] = _number(data[key], f"limits.{key}")
        for key in ("source_burst", "max_sources", "retry_after_s"):
            if key in data:
                kwargs[key] = _integer(data[key], f"limits.{key}")
        if "max_dialogs" in data:
            kwargs["max_dialogs"] = _optional_integer(data["max_dialogs"], "limits.max_dialogs")
        if "unknown_source" in data:
            kwargs["unknown_source"] = str(data["unknown_source"])
        if "default_trunk" in data:
            kwargs["default_trunk"] = _trunk_limits(data["default_trunk"], "limits.default_trunk")
        if "connections" in data:
            kwargs["connections"] = _connection_limits(data["connections"])
        trunks = data.get("trunks") or {}
        if not isinstance(trunks, Mapping):
            raise LimitsConfigError("limits.trunks must be a mapping of trunk name to limits")
        kwargs["trunks"] = {str(k): _trunk_limits(v, f"limits.trunks.{k}") for k, v in trunks.items()}
        return cls(**kwargs)


def read_limits(s: Section, trunk_names: Iterable[str]) -> LimitsConfig:
    """The `limits:` section; errors are given the file and line of the field they name."""
    names = set(trunk_names)
    per_trunk = s.section("trunks", default_empty=True)
    for name in per_trunk.data:
        if name not in names:
            raise per_trunk.error(str(name), f"no trunk named {name!r}")
    try:
        return LimitsConfig.from_mapping(s.data)
    except ValueError as exc:
        # The message names a dotted field (e.g. limits.trunks.dialer.max_cps): find its line.
        match = re.search(r"\blimits(\.[\w.-]+)?", str(exc))
        node: Any = s.data
        line, file = s.line, s.file
        for part in (match.group(1) or "").strip(".").split(".") if match else ():
            if isinstance(node, YamlMap) and part in node:
                line, file, node = node.lines.get(part, line), node.file, node[part]
            else:
                break
        raise ConfigError(str(exc), file, line, match.group(0) if match else "limits") from exc


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LimitsConfigError(f"{where} must be a number, got {value!r}")
    return float(value)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LimitsConfigError(f"{where} must be an integer, got {value!r}")
    return value


def _optional_integer(value: Any, where: str) -> int | None:
    return None if value is None else _integer(value, where)


def _trunk_limits(value: Any, where: str) -> TrunkLimits:
    if value is None:
        return TrunkLimits()
    if not isinstance(value, Mapping):
        raise LimitsConfigError(f"{where} must be a mapping")
    unknown = sorted(set(value) - {"max_dialogs", "max_cps", "cps_burst", "source_rate", "source_burst"})
    if unknown:
        raise LimitsConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    cps, source_rate = value.get("max_cps"), value.get("source_rate")
    return TrunkLimits(
        max_dialogs=_optional_integer(value.get("max_dialogs"), f"{where}.max_dialogs"),
        max_cps=None if cps is None else _number(cps, f"{where}.max_cps"),
        cps_burst=_optional_integer(value.get("cps_burst"), f"{where}.cps_burst"),
        source_rate=None if source_rate is None else _number(source_rate, f"{where}.source_rate"),
        source_burst=_optional_integer(value.get("source_burst"), f"{where}.source_burst"),
    )


def _connection_limits(value: Any) -> ConnectionLimits:
    where = "limits.connections"
    if value is None:
        return ConnectionLimits()
    if not isinstance(value, Mapping):
        raise LimitsConfigError(f"{where} must be a mapping")
    unknown = sorted(set(value) - {"max_total", "max_per_source", "idle_timeout_s"})
    if unknown:
        raise LimitsConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    d = ConnectionLimits()
    return ConnectionLimits(
        max_total=_integer(value.get("max_total", d.max_total), f"{where}.max_total"),
        max_per_source=_integer(value.get("max_per_source", d.max_per_source), f"{where}.max_per_source"),
        idle_timeout_s=_number(value.get("idle_timeout_s", d.idle_timeout_s), f"{where}.idle_timeout_s"),
    )


# --- decisions ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, init=False)
class Admit:
    """Go ahead. `slot` is the dialog slot to `release()` when the call ends or fails (None: none taken)."""

    slot: int | None

    def __init__(self, slot: int | None) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py).
        object.__setattr__(self, "slot", slot)


@dataclass(frozen=True, slots=True, init=False)
class Reject:
    """Answer with `status` (503, or 403 for unknown sources in `reject` mode) and Retry-After seconds."""

    status: int
    retry_after: int | None
    reason: str

    def __init__(self, status: int, retry_after: int | None, reason: str) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py).
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "retry_after", retry_after)
        object.__setattr__(self, "reason", reason)


@dataclass(frozen=True, slots=True, init=False)
class Drop:
    """Send nothing back: the source is not ours to talk to."""

    reason: str

    def __init__(self, reason: str) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py).
        object.__setattr__(self, "reason", reason)


Decision = Admit | Reject | Drop


@dataclass(frozen=True, slots=True)
class LimitsSnapshot:
    """Counters and gauges for /metrics (the B2BUA exports them; this module owns no metrics)."""

    active_dialogs: int
    active_by_trunk: Mapping[str, int]
    tracked_sources: int
    evicted_sources: int  # buckets thrown out early because the table was full (a spray of sources)
    refused: Mapping[str, int]  # reason -> count of Reject/Drop


# --- token bucket ------------------------------------------------------------------------------------


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


def _take(bucket: _Bucket, rate: float, burst: float, now: float) -> float:
    """Refill `bucket` to `now` and take one token. Returns 0.0 on success, else seconds until one is due."""
    elapsed = now - bucket.stamp
    if elapsed > 0:  # a clock going backwards must not mint tokens
        bucket.tokens = min(burst, bucket.tokens + elapsed * rate)
        bucket.stamp = now
    if bucket.tokens >= 1.0:
        bucket.tokens -= 1.0
        return 0.0
    return (1.0 - bucket.tokens) / rate


def _retry_after(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))


def _budgets(config: LimitsConfig) -> tuple[dict[str, tuple[float, float]], float]:
    """Per-source (rate, burst) of each trunk with its own budget, and the longest time a source bucket
    takes to refill (after which it is forgotten)."""
    budgets = {name: config.source_budget(name) for name, tl in config.trunks.items()
               if tl.source_rate is not None or tl.source_burst is not None}  # fmt: skip
    every = [*budgets.values(), config.source_budget(None), (config.source_rate, float(config.source_burst))]
    return budgets, max(burst / rate for rate, burst in every)


# --- admission ---------------------------------------------------------------------------------------

_PEER: Final = "<peer>"  # stands for "a known source" in _check_source, which only needs a trunk to be named


class Admission:
    """Decides whether a new request may enter; tracks dialog slots until the B2BUA releases them.

    One instance per process, kept across config reloads (`reconfigure`) so that counts survive.
    Memory is bounded: at most `max_sources` buckets, one bucket per configured trunk, one entry per
    live dialog.
    """

    def __init__(self, config: LimitsConfig) -> None:
        self._config = config
        self._budgets, self._full_after = _budgets(config)
        # LRU order: least recently seen source first, so expiry and eviction pop from the front.
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._trunk_buckets: dict[str, _Bucket] = {}
        self._slots: dict[int, str] = {}  # slot id -> trunk
        self._by_trunk: dict[str, int] = {}
        self._next_slot = 1
        self._evicted = 0
        self._refused: dict[str, int] = dict.fromkeys(REASONS, 0)

    @property
    def config(self) -> LimitsConfig:
        return self._config

    def reconfigure(self, config: LimitsConfig) -> None:
        """Swap limits on reload. Live dialogs keep their slots; a lowered cap only stops new calls."""
        self._config = config
        self._budgets, self._full_after = _budgets(config)
        self._trunk_buckets.clear()  # a new max_cps starts from a full bucket
        while len(self._sources) > config.max_sources:
            self._sources.popitem(last=False)
            self._evicted += 1

    # -- the hot path --

    def admit_invite(self, source_ip: str, trunk: str | None, now: float) -> Decision:
        """A new (out-of-dialog) INVITE from `source_ip`, matched to `trunk` (None: matched no trunk).

        On Admit a dialog slot is held until `release(slot)`. Checks, cheapest refusal first: unknown
        source, per-source rate, dialog caps, per-trunk call rate (last, so calls refused for another
        reason do not use up the trunk's call rate).
        """
        refusal = self._check_source(source_ip, trunk, now)
        if refusal is not None:
            return refusal
        assert trunk is not None
        cfg = self._config
        tl = cfg.for_trunk(trunk)
        if cfg.max_dialogs is not None and len(self._slots) >= cfg.max_dialogs:
            return self._refuse(Reject(503, cfg.retry_after_s, REASON_TOTAL_DIALOGS))
        in_trunk = self._by_trunk.get(trunk, 0)
        if tl.max_dialogs is not None and in_trunk >= tl.max_dialogs:
            return self._refuse(Reject(503, cfg.retry_after_s, REASON_TRUNK_DIALOGS))
        if tl.max_cps is not None:
            burst = float(tl.cps_burst if tl.cps_burst is not None else max(1, math.ceil(tl.max_cps)))
            bucket = self._trunk_buckets.get(trunk)
            if bucket is None:
                bucket = self._trunk_buckets[trunk] = _Bucket(burst, now)
            wait = _take(bucket, tl.max_cps, burst, now)
            if wait > 0:
                return self._refuse(Reject(503, _retry_after(wait), REASON_TRUNK_RATE))
        slot = self._next_slot
        self._next_slot += 1
        self._slots[slot] = trunk
        self._by_trunk[trunk] = in_trunk + 1
        return Admit(slot)

    def admit_request(self, source_ip: str, trunk: str | None, now: float) -> Decision:
        """Any other out-of-dialog request (OPTIONS, REGISTER, MESSAGE…): source checks only, no slot."""
        refusal = self._check_source(source_ip, trunk, now)
        return refusal if refusal is not None else Admit(None)

    def admit_peer(self, source_ip: str, now: float) -> Decision:
        """An out-of-dialog request from an address already known to be ours by other means (a configured
        carrier target pinging us with OPTIONS): the per-source bucket only, shared with that IP's other
        traffic, so a known address cannot flood us with cheap requests either."""
        refusal = self._check_source(source_ip, _PEER, now)
        return refusal if refusal is not None else Admit(None)

    def release(self, slot: int | None) -> bool:
        """Give a dialog slot back (call ended, or the INVITE failed). Idempotent: False if not held."""
        if slot is None:
            return False
        trunk = self._slots.pop(slot, None)
        if trunk is None:
            return False
        left = self._by_trunk[trunk] - 1
        if left:
            self._by_trunk[trunk] = left
        else:
            del self._by_trunk[trunk]
        return True

    # -- introspection --

    def active_dialogs(self, trunk: str | None = None) -> int:
        return len(self._slots) if trunk is None else self._by_trunk.get(trunk, 0)

    def snapshot(self) -> LimitsSnapshot:
        return LimitsSnapshot(
            active_dialogs=len(self._slots),
            active_by_trunk=dict(self._by_trunk),
            tracked_sources=len(self._sources),
            evicted_sources=self._evicted,
            refused=dict(self._refused),
        )

    # -- internals --

    def _refuse(self, decision: Reject | Drop) -> Reject | Drop:
        self._refused[decision.reason] += 1
        return decision

    def _check_source(self, source_ip: str, trunk: str | None, now: float) -> Reject | Drop | None:
        cfg = self._config
        if trunk is None:
            # No bucket for unknown sources: a spray of addresses must not allocate anything.
            if cfg.unknown_source == "reject":
                return self._refuse(Reject(403, None, REASON_UNKNOWN_SOURCE))
            return self._refuse(Drop(REASON_UNKNOWN_SOURCE))
        sources = self._sources
        rate, burst = self._budgets.get(trunk) or (cfg.source_rate, float(cfg.source_burst))
        self._expire(now)
        bucket = sources.get(source_ip)
        if bucket is None:
            if len(sources) >= cfg.max_sources:
                sources.popitem(last=False)
                self._evicted += 1
            bucket = sources[source_ip] = _Bucket(burst, now)
        else:
            sources.move_to_end(source_ip)
        wait = _take(bucket, rate, burst, now)
        if wait > 0:
            return self._refuse(Reject(503, _retry_after(wait), REASON_SOURCE_RATE))
        return None

    def _expire(self, now: float) -> None:
        """Forget buckets that have refilled completely: they equal a fresh one, so this loses nothing."""
        full_after = self._full_after
        sources = self._sources
        # Amortised O(1): the front is the least recently seen; stop at the first one still refilling.
        while sources:
            ip, bucket = next(iter(sources.items()))
            if now - bucket.stamp < full_after:
                break
            del sources[ip]
