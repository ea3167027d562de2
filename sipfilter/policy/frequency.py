"""D223-9 frequency rules: at most `cap` attempts per account per callee in a rolling window, none during the
refusal cooldown. The only rule that writes: one atomic store call records the attempt when allowed.

The cooldown counts calendar days in the callee's zone: "soixante jours calendaires révolus à compter de ce
refus" ends at local midnight after the 60 full days that follow the day of the refusal (a refusal on 1 March
at 23:59 or at 00:00 blocks calls until 30 April 24:00). With several zones, the latest end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sipfilter.config import Section
from sipfilter.policy.verdict import FAIL, PASS, SKIP, Outcome
from sipfilter.stores.base import Store

CAP_RULE = "frequency.cap"
REFUSAL_RULE = "frequency.refusal"
_DAY = 86400.0
_PASS = Outcome(PASS, "")


@dataclass(frozen=True, slots=True)
class FrequencyRules:
    cap: int
    window_s: float
    cooldown_days: int  # full calendar days after the day of a refusal (0: no cooldown)
    _passes: tuple[Outcome, ...] = ()
    # zone → (local day start, next local day start, cutoff for calls that day): calls arrive in time order.
    _cutoffs: dict[ZoneInfo, tuple[float, float, float]] = field(default_factory=dict, compare=False)

    def pass_outcome(self, attempts: int) -> Outcome:
        """Pre-built pass outcomes: this is on every relayed call."""
        if 0 < attempts <= len(self._passes):
            return self._passes[attempts - 1]
        return Outcome(PASS, f"attempt {attempts} of {self.cap} in {self.window_s / _DAY:.0f} days")

    def cutoff(self, at: float, zones: Iterable[ZoneInfo]) -> float:
        """Refusals at or after this instant still block a call at `at`: the start of the local day
        `cooldown_days` before today, in the zone where that comes first. inf when there is no cooldown."""
        if self.cooldown_days <= 0:
            return math.inf
        cutoff = math.inf
        for zone in zones:
            hit = self._cutoffs.get(zone)
            if hit is None or not hit[0] <= at < hit[1]:
                today = datetime.fromtimestamp(at, zone).date()
                hit = (_midnight(today, zone), _midnight(today + timedelta(days=1), zone),
                       _midnight(today - timedelta(days=self.cooldown_days), zone))
                if len(self._cutoffs) >= 1000:
                    self._cutoffs.clear()
                self._cutoffs[zone] = hit
            cutoff = min(cutoff, hit[2])
        return cutoff

    def store_cooldown_s(self, at: float, cutoff: float) -> float:
        """The `refusal_cooldown_s` of the store's check (`refused_at <= at - cooldown_s` ends a cooldown)
        that ends it exactly for the refusals before `cutoff` (Sterbenz: at - (at - c) is c exactly)."""
        if cutoff == math.inf:
            return 0.0
        return at - math.nextafter(cutoff, -math.inf)

    def cooldown_end(self, refused_at: float, zones: Iterable[ZoneInfo]) -> tuple[float, ZoneInfo | None]:
        """When the cooldown of a refusal ends: midnight after its last full day, the latest over `zones`."""
        end, where = -math.inf, None
        for zone in zones:
            day = datetime.fromtimestamp(refused_at, zone).date() + timedelta(days=self.cooldown_days + 1)
            t = _midnight(day, zone)
            if t > end:
                end, where = t, zone
        return end, where


def _midnight(day: date, zone: ZoneInfo) -> float:
    """The first instant of a local calendar day."""
    return datetime.combine(day, time(0), zone).timestamp()


def compile_frequency(s: Section) -> FrequencyRules:
    s.only(["cap", "window_days", "refusal_cooldown_days"])
    cap, days = s.int("cap", lo=1), s.int("window_days", lo=1)
    passes = tuple(
        Outcome(PASS, f"attempt {n} of {cap} in {days} days") for n in range(1, min(cap, 1000) + 1)
    )
    return FrequencyRules(cap, days * _DAY, s.int("refusal_cooldown_days", lo=0), passes)


def skip(out: dict[str, Outcome], why: str) -> None:
    out[REFUSAL_RULE] = out[CAP_RULE] = Outcome(SKIP, why)


def fill(
    rules: FrequencyRules,
    out: dict[str, Outcome],
    at: float,
    refused_at: float | None,
    attempts: int,
    allowed: bool,
    cutoff: float,
    zones: tuple[ZoneInfo, ...],
) -> str:
    """Outcomes from a store answer; `attempts` includes this one when allowed; refusals at or after `cutoff`
    (FrequencyRules.cutoff) still block."""
    if refused_at is not None and refused_at >= cutoff:
        end, zone = rules.cooldown_end(refused_at, zones)
        until = f"{datetime.fromtimestamp(end, zone):%Y-%m-%d %H:%M} {zone.key}" if zone is not None else "?"
        out[REFUSAL_RULE] = Outcome(
            FAIL,
            f"callee refused {(at - refused_at) / _DAY:.1f} days ago: no call before {until} "
            f"({rules.cooldown_days} full calendar days after the day of the refusal)",
        )
        out[CAP_RULE] = Outcome(SKIP, "refusal cooldown applies")
        return REFUSAL_RULE
    out[REFUSAL_RULE] = _PASS
    if allowed:
        out[CAP_RULE] = rules.pass_outcome(attempts)
        return ""
    days = rules.window_s / _DAY
    out[CAP_RULE] = Outcome(FAIL, f"{attempts} attempts already in {days:.0f} days (cap {rules.cap})")
    return CAP_RULE


_NO_CAP = 2**31 - 1


async def check_and_record(
    rules: FrequencyRules,
    store: Store,
    account: str,
    number: str,
    at: float,
    out: dict[str, Outcome],
    zones: tuple[ZoneInfo, ...],
    monitor: bool = False,
) -> tuple[str, bool]:
    """Atomically check and record this attempt. Returns (failing rule or "", recorded).

    `monitor`: the call is relayed whatever the outcome, so the attempt is always recorded (without a cap or
    cooldown in the store) and the would-be outcome is computed from the counts the store returns.
    Raises StoreUnavailable (the engine applies the trunk's on_store_error)."""
    cutoff = rules.cutoff(at, zones)
    if not monitor:
        d = await store.check_and_record_attempt(
            account, number, at, rules.cap, rules.window_s, rules.store_cooldown_s(at, cutoff)
        )
        r = fill(rules, out, at, d.refused_at, d.attempts_in_window, d.allowed, cutoff, zones)
        return r, d.allowed
    d = await store.check_and_record_attempt(account, number, at, _NO_CAP, rules.window_s, 0.0)
    before = d.attempts_in_window - 1 if d.allowed else d.attempts_in_window
    would = before < rules.cap
    r = fill(rules, out, at, d.refused_at, before + 1 if would else before, would, cutoff, zones)
    return r, d.allowed


async def check_only(
    rules: FrequencyRules,
    store: Store,
    account: str,
    number: str,
    at: float,
    out: dict[str, Outcome],
    zones: tuple[ZoneInfo, ...],
) -> str:
    """Dry run (`sipfilter check`): would one more attempt pass? Records nothing."""
    refused_at = await store.last_refusal(account, number)
    attempts = await store.attempts(account, number, at, rules.window_s)
    allowed = attempts < rules.cap
    cutoff = rules.cutoff(at, zones)
    return fill(rules, out, at, refused_at, attempts + 1 if allowed else attempts, allowed, cutoff, zones)
