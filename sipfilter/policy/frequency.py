"""D223-9 frequency rules: at most `cap` attempts per account per callee in a rolling window, none during the
refusal cooldown. The only rule that writes: one atomic store call records the attempt when allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    cooldown_s: float
    _passes: tuple[Outcome, ...] = ()

    def pass_outcome(self, attempts: int) -> Outcome:
        """Pre-built pass outcomes: this is on every relayed call."""
        if 0 < attempts <= len(self._passes):
            return self._passes[attempts - 1]
        return Outcome(PASS, f"attempt {attempts} of {self.cap} in {self.window_s / _DAY:.0f} days")


def compile_frequency(s: Section) -> FrequencyRules:
    s.only(["cap", "window_days", "refusal_cooldown_days"])
    cap, days = s.int("cap", lo=1), s.int("window_days", lo=1)
    passes = tuple(
        Outcome(PASS, f"attempt {n} of {cap} in {days} days") for n in range(1, min(cap, 1000) + 1)
    )
    return FrequencyRules(cap, days * _DAY, s.int("refusal_cooldown_days", lo=0) * _DAY, passes)


def skip(out: dict[str, Outcome], why: str) -> None:
    out[REFUSAL_RULE] = out[CAP_RULE] = Outcome(SKIP, why)


def fill(
    rules: FrequencyRules,
    out: dict[str, Outcome],
    at: float,
    refused_at: float | None,
    attempts: int,
    allowed: bool,
) -> str:
    """Outcomes from a store answer; `attempts` includes this one when allowed."""
    if refused_at is not None and at - refused_at < rules.cooldown_s:
        out[REFUSAL_RULE] = Outcome(
            FAIL,
            f"callee refused {(at - refused_at) / _DAY:.1f} days ago "
            f"(cooldown {rules.cooldown_s / _DAY:.0f} days)",
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
    monitor: bool = False,
) -> tuple[str, bool]:
    """Atomically check and record this attempt. Returns (failing rule or "", recorded).

    `monitor`: the call is relayed whatever the outcome, so the attempt is always recorded (without a cap or
    cooldown in the store) and the would-be outcome is computed from the counts the store returns.
    Raises StoreUnavailable (the engine applies the trunk's on_store_error)."""
    if not monitor:
        d = await store.check_and_record_attempt(
            account, number, at, rules.cap, rules.window_s, rules.cooldown_s
        )
        return fill(rules, out, at, d.refused_at, d.attempts_in_window, d.allowed), d.allowed
    d = await store.check_and_record_attempt(account, number, at, _NO_CAP, rules.window_s, 0.0)
    before = d.attempts_in_window - 1 if d.allowed else d.attempts_in_window
    would = before < rules.cap
    return fill(rules, out, at, d.refused_at, before + 1 if would else before, would), d.allowed


async def check_only(
    rules: FrequencyRules, store: Store, account: str, number: str, at: float, out: dict[str, Outcome]
) -> str:
    """Dry run (`sipfilter check`): would one more attempt pass? Records nothing."""
    refused_at = await store.last_refusal(account, number)
    attempts = await store.attempts(account, number, at, rules.window_s)
    allowed = attempts < rules.cap
    return fill(rules, out, at, refused_at, attempts + 1 if allowed else attempts, allowed)
