"""frequency.cap and frequency.refusal: the 5th attempt in 30 days, day 59 vs 61 after a refusal, dry runs."""

from __future__ import annotations

import pytest
from memstore import MemoryStore
from policy_helpers import CALLEE, NPV, call_facts, ts

from sipfilter.policy.engine import PolicyEngine
from sipfilter.policy.verdict import SKIP

DAY = 86400.0
# Mid-morning on weekdays in June 2026 (before opt-in, lists fresh enough with the fixture's import date).
MONDAY = ts("2026-06-08T11:00:00+02:00")


def fresh(store: MemoryStore, at: float) -> MemoryStore:
    for name in list(store.lists):
        store.add_list(name, store.lists[name], imported_at=at - 3600)
    return store


async def attempt(engine: PolicyEngine, store: MemoryStore, at: float, record: bool = True):
    facts = call_facts(engine, "dialer", NPV, CALLEE, at=at)
    return await engine.decide(facts, fresh(store, at), record=record)


async def test_fifth_attempt_in_thirty_days_is_refused(engine: PolicyEngine, store: MemoryStore) -> None:
    weekdays = [MONDAY + i * DAY for i in range(4)]
    for n, at in enumerate(weekdays, 1):
        d = await attempt(engine, store, at)
        assert d.verdict.action == "allow", n
        assert d.attempt_recorded
        assert f"attempt {n} of 4" in d.outcomes["frequency.cap"].reason
    d = await attempt(engine, store, MONDAY + 4 * DAY)
    assert d.verdict.rule == "frequency.cap"
    assert d.verdict.status == 603
    assert not d.attempt_recorded
    # The window rolls: 30 days after the first attempt one slot frees up (2026-07-08 is a Wednesday).
    d = await attempt(engine, store, MONDAY + 30 * DAY)
    assert d.verdict.action == "allow"
    d = await attempt(engine, store, MONDAY + 30 * DAY + 60)
    assert d.verdict.rule == "frequency.cap"


@pytest.mark.parametrize(("days_after", "rule"), [(59, "frequency.refusal"), (60, ""), (61, "")])
async def test_refusal_cooldown(engine: PolicyEngine, store: MemoryStore, days_after: int, rule: str) -> None:
    """A refusal N days before a weekday call (60 calendar days completed ⇒ allowed again)."""
    call = ts("2026-06-01T11:00:00+02:00")  # a Monday
    await store.record_refusal("acme-energie", "+33611223344", call - days_after * DAY)
    d = await attempt(engine, store, call)
    assert d.verdict.rule == rule
    assert d.attempt_recorded == (rule == "")
    if rule:
        assert "refused 59.0 days ago" in d.verdict.reason
        assert d.outcomes["frequency.cap"].result == SKIP
    # The dry run of `sipfilter check` agrees with the recording path.
    dry = await attempt(engine, store, call + 1, record=False)
    assert dry.verdict.rule == rule


async def test_dry_run_records_nothing(engine: PolicyEngine, store: MemoryStore) -> None:
    for _ in range(10):
        d = await attempt(engine, store, MONDAY, record=False)
        assert d.verdict.action == "allow"
        assert not d.attempt_recorded
    assert store.calls == 0
    assert await store.attempts("acme-energie", "+33611223344", MONDAY, 30 * DAY) == 0
    for _ in range(4):
        await attempt(engine, store, MONDAY)
    d = await attempt(engine, store, MONDAY, record=False)
    assert d.verdict.rule == "frequency.cap"


async def test_rejected_calls_do_not_count(engine: PolicyEngine, store: MemoryStore) -> None:
    for _ in range(6):
        facts = call_facts(engine, "dialer", "0612345678", CALLEE, at=MONDAY)
        d = await engine.decide(facts, fresh(store, MONDAY))
        assert d.verdict.rule == "caller-id.mobile"
    assert store.calls == 0


async def test_accounts_share_or_split_counters(engine: PolicyEngine, store: MemoryStore) -> None:
    await store.check_and_record_attempt("other-account", "+33611223344", MONDAY, 4, 30 * DAY, 60 * DAY)
    for _ in range(4):
        assert (await attempt(engine, store, MONDAY)).verdict.action == "allow"
    assert (await attempt(engine, store, MONDAY)).verdict.rule == "frequency.cap"


async def test_monitor_mode_counts_every_relayed_attempt(make_engine, store: MemoryStore) -> None:
    """Monitor relays everything, so every attempt counts, including those beyond the cap."""
    engine = make_engine(mode="monitor")
    rules = []
    for i in range(6):
        d = await attempt(engine, store, MONDAY + i * 60)
        assert d.verdict.action == "allow" and d.attempt_recorded
        rules.append(d.verdict.rule)
    assert rules == ["", "", "", "", "frequency.cap", "frequency.cap"]
    assert await store.attempts("acme-energie", "+33611223344", MONDAY + 3600, 30 * DAY) == 6
    await store.record_refusal("acme-energie", "+33611223344", MONDAY + 400)
    d = await attempt(engine, store, MONDAY + 500)
    assert (d.verdict.rule, d.monitored, d.attempt_recorded) == ("frequency.refusal", True, True)


async def test_cap_from_rule_pack_override(make_engine, store: MemoryStore) -> None:
    engine = make_engine(overrides={"frequency": {"cap": 2}})
    assert (await attempt(engine, store, MONDAY)).verdict.action == "allow"
    assert (await attempt(engine, store, MONDAY)).verdict.action == "allow"
    assert (await attempt(engine, store, MONDAY)).verdict.rule == "frequency.cap"
