"""Admission control for new requests: per-source token buckets, per-trunk call rate, dialog caps.

Pure and synchronous: the caller passes the clock in and owns the sockets; nothing here sleeps or logs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

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
        for name, tl in {"default": self.default_trunk, **self.trunks}.items():
            where = f"limits.trunks.{name}"
            if tl.max_dialogs is not None and tl.max_dialogs < 0:
                raise LimitsConfigError(f"{where}.max_dialogs must be >= 0, got {tl.max_dialogs!r}")
            if tl.max_cps is not None and not (tl.max_cps > 0 and math.isfinite(tl.max_cps)):
                raise LimitsConfigError(f"{where}.max_cps must be a positive number, got {tl.max_cps!r}")
            if tl.cps_burst is not None and tl.cps_burst < 1:
                raise LimitsConfigError(f"{where}.cps_burst must be >= 1, got {tl.cps_burst!r}")

    def for_trunk(self, trunk: str) -> TrunkLimits:
        return self.trunks.get(trunk, self.default_trunk)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> LimitsConfig:
        """Build from the YAML `limits:` mapping (unknown keys are errors, so typos do not pass silently)."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise LimitsConfigError("limits must be a mapping")
        known = {
            "source_rate", "source_burst", "max_sources", "max_dialogs", "default_trunk", "trunks",
            "retry_after_s", "unknown_source",
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
        trunks = data.get("trunks") or {}
        if not isinstance(trunks, Mapping):
            raise LimitsConfigError("limits.trunks must be a mapping of trunk name to limits")
        kwargs["trunks"] = {str(k): _trunk_limits(v, f"limits.trunks.{k}") for k, v in trunks.items()}
        return cls(**kwargs)


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
    unknown = sorted(set(value) - {"max_dialogs", "max_cps", "cps_burst"})
    if unknown:
        raise LimitsConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    cps = value.get("max_cps")
    return TrunkLimits(
        max_dialogs=_optional_integer(value.get("max_dialogs"), f"{where}.max_dialogs"),
        max_cps=None if cps is None else _number(cps, f"{where}.max_cps"),
        cps_burst=_optional_integer(value.get("cps_burst"), f"{where}.cps_burst"),
    )


# --- decisions ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admit:
    """Go ahead. `slot` is the dialog slot to `release()` when the call ends or fails (None: none taken)."""

    slot: int | None


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer with `status` (503, or 403 for unknown sources in `reject` mode) and Retry-After seconds."""

    status: int
    retry_after: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Drop:
    """Send nothing back: the source is not ours to talk to."""

    reason: str


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
        rate, burst = cfg.source_rate, float(cfg.source_burst)
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
        full_after = self._config.source_burst / self._config.source_rate
        sources = self._sources
        # Amortised O(1): the front is the least recently seen; stop at the first one still refilling.
        while sources:
            ip, bucket = next(iter(sources.items()))
            if now - bucket.stamp < full_after:
                break
            del sources[ip]
