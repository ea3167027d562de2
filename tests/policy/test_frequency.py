"""frequency.cap and frequency.refusal: the 5th attempt in 30 days; the refusal cooldown in calendar days of
the callee's zone (60 full days after the day of the refusal: midnight edges, DST, overseas); dry runs."""

from __future__ import annotations

from collections.abc import Callable

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


@pytest.mark.parametrize(
    ("days_after", "rule"), [(59, "frequency.refusal"), (60, "frequency.refusal"), (61, "")]
)
async def test_refusal_cooldown(engine: PolicyEngine, store: MemoryStore, days_after: int, rule: str) -> None:
    """A refusal N days before a weekday call: the day of the refusal does not count, so 60 × 24 h later the
    60th full calendar day is not over yet (« 60 jours calendaires révolus à compter de ce refus »)."""
    call = ts("2026-06-01T11:00:00+02:00")  # a Monday
    await store.record_refusal("acme-energie", "+33611223344", call - days_after * DAY)
    d = await attempt(engine, store, call)
    assert d.verdict.rule == rule
    assert d.attempt_recorded == (rule == "")
    if rule:
        assert f"refused {days_after}.0 days ago" in d.verdict.reason
        assert "no call before 2026-06-0" in d.verdict.reason
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


# Every day and hour open, no holidays, no opt-in: only the frequency rules decide, at any instant.
ALWAYS_OPEN = {
    "hours": {"weekly": {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}},
    "holidays": {"source": "none"},
    "consent": {"required_from": None},
}


@pytest.mark.parametrize(
    ("callee", "refused", "last_blocked", "first_open"),
    [
        # Paris, across the spring DST change: a refusal at 23:59 and one at 00:00 the next day.
        ("0611223344", "2026-03-01T23:59:00+01:00", "2026-04-30T23:59:59+02:00", "2026-05-01T00:00:00+02:00"),
        ("0611223344", "2026-03-02T00:00:00+01:00", "2026-05-01T23:59:59+02:00", "2026-05-02T00:00:00+02:00"),
        ("0611223344", "2026-03-01T00:00:00+01:00", "2026-04-30T23:59:59+02:00", "2026-05-01T00:00:00+02:00"),
        # Across the autumn change (a 25-hour day in the count).
        ("0611223344", "2026-09-20T12:00:00+02:00", "2026-11-19T23:59:59+01:00", "2026-11-20T00:00:00+01:00"),
        # Réunion (UTC+4): its own midnight, not Paris's (23:30 there is still 21:30 in Paris).
        ("0262123456", "2026-09-01T23:30:00+04:00", "2026-10-31T23:59:59+04:00", "2026-11-01T00:00:00+04:00"),
        # Martinique (UTC−4): a refusal at 22:00 there is already the next day in Paris.
        ("0596301234", "2026-09-01T22:00:00-04:00", "2026-10-31T23:59:59-04:00", "2026-11-01T00:00:00-04:00"),
        # A Réunion mobile may be in Mayotte (UTC+3): the later of the two midnights.
        ("0692123456", "2026-09-01T21:30:00+03:00", "2026-10-31T23:59:59+03:00", "2026-11-01T00:00:00+03:00"),
    ],
)
async def test_cooldown_ends_at_local_midnight_after_sixty_full_days(
    make_engine: Callable[..., PolicyEngine],
    store: MemoryStore,
    callee: str,
    refused: str,
    last_blocked: str,
    first_open: str,
) -> None:
    engine = make_engine(overrides=ALWAYS_OPEN)
    number = call_facts(engine, "dialer", NPV, callee).callee.e164
    await store.record_refusal("acme-energie", number, ts(refused))
    for at, rule in ((ts(last_blocked), "frequency.refusal"), (ts(first_open), "")):
        for record in (False, True):  # the dry run and the recording path agree
            facts = call_facts(engine, "dialer", NPV, callee, at=at)
            d = await engine.decide(facts, fresh(store, at), record=record)
            assert d.verdict.rule == rule, (record, d.verdict.reason)
    facts = call_facts(engine, "dialer", NPV, callee, at=ts(last_blocked))
    d = await engine.decide(facts, store, record=False)
    assert f"no call before {first_open[:10]} 00:00" in d.verdict.reason
