"""time.window and time.holiday: D223-9 boundaries in the callee's own time zone, holidays, consent hours."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from memstore import MemoryStore
from policy_helpers import call_facts, ts

from sipfilter.config import ConfigError
from sipfilter.policy.engine import PolicyEngine
from sipfilter.policy.hours import parse_consent_hours
from sipfilter.stores.base import ConsentRecord

NO_OPT_IN = {"consent": {"required_from": None}}  # isolate the time rules from the consent rule
METRO = "0611223344"
REUNION = "0262123456"  # a Réunion landline (its mobiles may be in Mayotte too: test_territories.py)
MARTINIQUE = "0696123456"
GUADELOUPE = "0690123456"
MAYOTTE = "0639401234"


@pytest.fixture
def engine(make_engine: Callable[..., PolicyEngine]) -> PolicyEngine:
    return make_engine(overrides=NO_OPT_IN)


def fresh(store: MemoryStore, at: float) -> MemoryStore:
    """Lists imported an hour before `at`, so list.stale stays out of the way."""
    for name in list(store.lists):
        store.add_list(name, store.lists[name], imported_at=at - 3600)
    return store


async def rule_at(engine: PolicyEngine, store: MemoryStore, callee: str, when: str) -> str:
    d = await engine.decide(
        call_facts(engine, "dialer", "0162123456", callee, at=ts(when)), fresh(store, ts(when)), record=False
    )
    return d.verdict.rule


@pytest.mark.parametrize(
    ("when", "rule"),
    [
        ("2026-09-16T09:59:59+02:00", "time.window"),
        ("2026-09-16T10:00:00+02:00", ""),
        ("2026-09-16T12:59:59+02:00", ""),
        ("2026-09-16T13:00:00+02:00", "time.window"),
        ("2026-09-16T13:30:00+02:00", "time.window"),
        ("2026-09-16T13:59:59+02:00", "time.window"),
        ("2026-09-16T14:00:00+02:00", ""),
        ("2026-09-16T19:59:59+02:00", ""),
        ("2026-09-16T20:00:00+02:00", "time.window"),
        ("2026-09-16T23:00:00+02:00", "time.window"),
        ("2026-09-16T08:00:00Z", ""),  # 10:00 in Paris (the offset given does not matter, the callee's does)
        ("2026-09-16T07:59:59Z", "time.window"),
        ("2026-09-18T19:59:59+02:00", ""),  # Friday
        ("2026-09-19T11:00:00+02:00", "time.window"),  # Saturday
        ("2026-09-20T11:00:00+02:00", "time.window"),  # Sunday
        ("2026-12-16T10:00:00+01:00", ""),  # winter time
        ("2026-12-16T09:59:59+01:00", "time.window"),
    ],
)
async def test_metropolitan_window(engine: PolicyEngine, store: MemoryStore, when: str, rule: str) -> None:
    assert await rule_at(engine, store, METRO, when) == rule


@pytest.mark.parametrize(
    ("day", "name"),
    [
        ("2026-04-06", "Easter Monday"),
        ("2026-05-14", "Ascension"),
        ("2026-05-25", "Whit Monday"),
        ("2027-03-29", "Easter Monday"),
        ("2027-05-06", "Ascension"),
        ("2027-05-17", "Whit Monday"),
        ("2026-11-11", "Armistice"),
        ("2026-07-14", "14 July"),
    ],
)
async def test_public_holidays(engine: PolicyEngine, store: MemoryStore, day: str, name: str) -> None:
    at = ts(f"{day}T11:00:00+02:00")
    d = await engine.decide(
        call_facts(engine, "dialer", "0162123456", METRO, at=at), fresh(store, at), record=False
    )
    assert d.verdict.rule == "time.holiday", name
    assert d.verdict.status == 603
    assert d.outcomes["time.window"].result == "pass"


@pytest.mark.parametrize("day", ["2026-04-07", "2026-05-13", "2026-05-26", "2027-03-30", "2027-05-18"])
async def test_days_around_holidays_are_open(engine: PolicyEngine, store: MemoryStore, day: str) -> None:
    assert await rule_at(engine, store, METRO, f"{day}T11:00:00+02:00") == ""


@pytest.mark.parametrize(
    ("callee", "when", "rule"),
    [
        # Réunion is UTC+4: 08:30 Paris (summer) = 10:30 there; 18:30 Paris = 20:30 there.
        (REUNION, "2026-09-16T08:30:00+02:00", ""),
        (REUNION, "2026-09-16T07:59:59+02:00", "time.window"),  # 09:59:59 in Réunion
        (REUNION, "2026-09-16T08:00:00+02:00", ""),  # 10:00:00 in Réunion
        (REUNION, "2026-09-16T18:30:00+02:00", "time.window"),  # fine in Paris, too late in Réunion
        (REUNION, "2026-09-16T17:59:59+02:00", ""),  # 19:59:59 in Réunion
        # Martinique is UTC−4: 15:30 Paris = 09:30 there; 21:30 Paris = 15:30 there.
        (MARTINIQUE, "2026-09-16T15:30:00+02:00", "time.window"),
        (MARTINIQUE, "2026-09-16T16:00:00+02:00", ""),
        (MARTINIQUE, "2026-09-16T21:30:00+02:00", ""),  # after 20:00 in Paris, fine in Martinique
        (MARTINIQUE, "2026-09-17T02:00:00+02:00", "time.window"),  # 20:00 in Martinique
        (GUADELOUPE, "2026-09-16T21:30:00+02:00", ""),
        (MAYOTTE, "2026-09-16T09:00:00+02:00", ""),  # 10:00 in Mayotte (UTC+3)
        (MAYOTTE, "2026-09-16T08:59:59+02:00", "time.window"),
        ("+33611223344", "2026-09-16T08:30:00+02:00", "time.window"),
    ],
)
async def test_callee_time_zone(
    engine: PolicyEngine, store: MemoryStore, callee: str, when: str, rule: str
) -> None:
    assert await rule_at(engine, store, callee, when) == rule


async def test_local_overseas_holiday(engine: PolicyEngine, store: MemoryStore) -> None:
    # 22 May: abolition of slavery in Martinique, an ordinary Friday in Paris.
    assert await rule_at(engine, store, MARTINIQUE, "2026-05-22T18:00:00+02:00") == "time.holiday"
    assert await rule_at(engine, store, METRO, "2026-05-22T11:00:00+02:00") == ""
    # 20 December: Réunion.
    assert await rule_at(engine, store, REUNION, "2027-12-20T08:00:00+01:00") == "time.holiday"


async def test_alsace_moselle_holidays(engine: PolicyEngine, store: MemoryStore) -> None:
    # Good Friday and 26 December are public holidays in Moselle, Bas-Rhin and Haut-Rhin only (L3134-13);
    # their geographic numbers (03 87 / 03 88 / 03 89) say where the callee is. A mobile cannot.
    for callee in ("+33387123456", "+33388123456", "+33389123456"):
        assert await rule_at(engine, store, callee, "2026-04-03T11:00:00+02:00") == "time.holiday", callee
        assert await rule_at(engine, store, callee, "2025-12-26T11:00:00+01:00") == "time.holiday", callee
        assert await rule_at(engine, store, callee, "2026-04-02T11:00:00+02:00") == "", callee
    for callee in ("+33386123456", "+33140000000", METRO):
        assert await rule_at(engine, store, callee, "2026-04-03T11:00:00+02:00") == "", callee


async def test_window_override_per_trunk(
    make_engine: Callable[..., PolicyEngine], store: MemoryStore
) -> None:
    engine = make_engine(overrides={**NO_OPT_IN, "hours": {"weekly": {"sat": ["10:00-12:00"]}}})
    assert await rule_at(engine, store, METRO, "2026-09-19T11:00:00+02:00") == ""
    assert await rule_at(engine, store, METRO, "2026-09-19T12:00:00+02:00") == "time.window"
    assert await rule_at(engine, store, METRO, "2026-09-16T11:00:00+02:00") == ""  # weekdays unchanged


async def test_extra_and_ignored_dates(make_engine: Callable[..., PolicyEngine], store: MemoryStore) -> None:
    engine = make_engine(
        overrides={**NO_OPT_IN, "holidays": {"extra_dates": ["2026-09-16"], "ignore_dates": ["2026-05-14"]}}
    )
    assert await rule_at(engine, store, METRO, "2026-09-16T11:00:00+02:00") == "time.holiday"
    assert await rule_at(engine, store, METRO, "2026-05-14T11:00:00+02:00") == ""


async def test_consent_hours_allow_outside_the_legal_window(
    make_engine: Callable[..., PolicyEngine], store: MemoryStore
) -> None:
    engine = make_engine()
    store.consents.append(
        ConsentRecord(
            "acme-energie", "+33611223344", ts("2026-01-01T00:00:00Z"), "rec-9", hours="mon-sat 09:00-21:00"
        )
    )
    assert await rule_at(engine, store, METRO, "2026-09-16T20:30:00+02:00") == ""
    assert await rule_at(engine, store, METRO, "2026-09-19T09:30:00+02:00") == ""  # Saturday
    assert await rule_at(engine, store, METRO, "2026-09-16T21:00:00+02:00") == "time.window"
    assert await rule_at(engine, store, METRO, "2026-09-20T11:00:00+02:00") == "time.window"  # Sunday
    d = await engine.decide(
        call_facts(engine, "dialer", "0162123456", METRO, at=ts("2026-09-16T21:00:00+02:00")),
        store,
        record=False,
    )
    assert "consent hours" in d.verdict.reason


@pytest.mark.parametrize(("lifts", "rule"), [(False, "time.holiday"), (True, "")])
async def test_consent_hours_on_a_holiday(
    make_engine: Callable[..., PolicyEngine], store: MemoryStore, lifts: bool, rule: str
) -> None:
    engine = make_engine(overrides={"hours": {"consent_lifts_holidays": lifts}})
    store.consents.append(
        ConsentRecord(
            "acme-energie", "+33611223344", ts("2026-01-01T00:00:00Z"), "rec-9", hours="mon-sun 09:00-21:00"
        )
    )
    assert await rule_at(engine, store, METRO, "2026-11-11T11:00:00+01:00") == rule  # Armistice, a Wednesday
    late = await rule_at(engine, store, METRO, "2026-11-11T21:30:00+01:00")
    assert late == ("time.window" if lifts else "time.holiday")


async def test_holidays_from_a_data_file(
    make_engine: Callable[..., PolicyEngine], store: MemoryStore, tmp_path: Path
) -> None:
    days = tmp_path / "holidays.txt"
    days.write_text("# company calendar\n2026-09-16 Journée test\n2026-09-17 @972 Local day\n")
    engine = make_engine(overrides={**NO_OPT_IN, "holidays": {"source": "file", "file": str(days)}})
    assert await rule_at(engine, store, METRO, "2026-09-16T11:00:00+02:00") == "time.holiday"
    assert await rule_at(engine, store, METRO, "2026-09-17T11:00:00+02:00") == ""
    assert await rule_at(engine, store, MARTINIQUE, "2026-09-17T18:00:00+02:00") == "time.holiday"
    assert await rule_at(engine, store, METRO, "2026-04-06T11:00:00+02:00") == ""  # the package is not used
    days.write_text("2026-09-16 ok\n16/09/2026 bad\n")
    with pytest.raises(ConfigError) as err:
        make_engine(overrides={**NO_OPT_IN, "holidays": {"source": "file", "file": str(days)}})
    assert (err.value.file, err.value.line) == (str(days), 2)


def test_parse_consent_hours() -> None:
    week = parse_consent_hours("mon-fri 10:00-13:00,14:00-20:00; sat 10:00-12:00")
    assert week[0] == ((36000, 46800), (50400, 72000))
    assert week[5] == ((36000, 43200),)
    assert week[6] == ()
    assert parse_consent_hours("sat-mon 08:00-09:00")[6] == ((28800, 32400),)
    for bad in ("", "someday 10:00-11:00", "mon 11:00-10:00", "mon 25:00-26:00"):
        with pytest.raises(ValueError):
            parse_consent_hours(bad)
