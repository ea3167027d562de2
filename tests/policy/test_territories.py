"""Hours and holidays follow the callee's territory for every French number (overseas ranges in national form,
overseas NPV, numbers two territories share), and the zone the dialer or the consent record gives for the
callee: the hours every candidate zone allows, the holidays of all."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from memstore import MemoryStore
from policy_helpers import call_facts, ts

from sipfilter.b2bua.facts import read_invite
from sipfilter.policy.engine import PolicyEngine
from sipfilter.policy.verdict import FAIL
from sipfilter.sip import parse
from sipfilter.stores.base import ConsentRecord

NO_OPT_IN = {"consent": {"required_from": None}}  # isolate the time rules from the consent rule


@pytest.fixture
def engine(make_engine: Callable[..., PolicyEngine]) -> PolicyEngine:
    return make_engine(overrides=NO_OPT_IN)


def fresh(store: MemoryStore, at: float) -> MemoryStore:
    for name in list(store.lists):
        store.add_list(name, store.lists[name], imported_at=at - 3600)
    return store


async def rule_at(engine: PolicyEngine, store: MemoryStore, callee: str, when: str, zone: str = "") -> str:
    at = ts(when)
    facts = call_facts(engine, "dialer", "0162123456", callee, at=at, callee_zone=zone)
    d = await engine.decide(facts, fresh(store, at), record=False)
    return d.verdict.rule


# 2026-09-16 is a Wednesday; Paris is UTC+2, Réunion UTC+4, Mayotte UTC+3, the Antilles UTC−4, Guyane UTC−3.
@pytest.mark.parametrize(
    ("callee", "when", "rule"),
    [
        # Réunion ranges beyond 0262/0692: mobiles 07 09 2x, VoIP 09 76 2x and 09 39 9x (10:30 there).
        ("0709212345", "2026-09-16T08:30:00+02:00", ""),
        ("0709212345", "2026-09-16T18:30:00+02:00", "time.window"),  # 20:30 in Réunion
        ("0976221234", "2026-09-16T08:30:00+02:00", ""),
        ("0976221234", "2026-09-16T18:30:00+02:00", "time.window"),
        ("0939912345", "2026-09-16T18:30:00+02:00", "time.window"),
        ("+33709212345", "2026-09-16T18:30:00+02:00", "time.window"),  # the +33 form a carrier may send
        # Mayotte: 09 76 9x, 0269.
        ("0976912345", "2026-09-16T19:00:00+02:00", "time.window"),  # 20:00 in Mayotte
        ("0976912345", "2026-09-16T18:30:00+02:00", ""),  # 19:30 in Mayotte
        ("0269001234", "2026-09-16T18:59:59+02:00", ""),
        ("0269001234", "2026-09-16T19:00:00+02:00", "time.window"),  # 20:00 in Mayotte
        # Guyane mobile 07 09 3x: 16:00 Paris is 11:00 there; 14:00 Paris is 09:00.
        ("0709312345", "2026-09-16T16:00:00+02:00", ""),
        ("0709312345", "2026-09-16T14:00:00+02:00", "time.window"),
        # A number no territory lists is refused as such, never checked against Paris hours.
        ("0712345678", "2026-09-16T11:00:00+02:00", "number.invalid"),
        ("0596123456", "2026-09-16T11:00:00+02:00", "number.invalid"),
        ("+33700000000", "2026-09-16T11:00:00+02:00", "number.invalid"),
    ],
)
async def test_every_french_number_in_its_territory_s_zone(
    engine: PolicyEngine, store: MemoryStore, callee: str, when: str, rule: str
) -> None:
    assert await rule_at(engine, store, callee, when) == rule


@pytest.mark.parametrize(
    ("when", "rule"),
    [
        # A Réunion mobile may be in Mayotte: only the hours both allow (Réunion 10:00 is Mayotte 09:00).
        ("2026-09-16T08:00:00+02:00", "time.window"),  # 10:00 Réunion, 09:00 Mayotte
        ("2026-09-16T08:59:59+02:00", "time.window"),
        ("2026-09-16T09:00:00+02:00", ""),  # 11:00 Réunion, 10:00 Mayotte
        ("2026-09-16T10:59:59+02:00", ""),  # 12:59:59 Réunion
        ("2026-09-16T11:00:00+02:00", "time.window"),  # 13:00 Réunion
        ("2026-09-16T11:59:59+02:00", "time.window"),  # 12:59:59 Mayotte, 13:59:59 Réunion
        ("2026-09-16T12:00:00+02:00", "time.window"),  # 14:00 Réunion, 13:00 Mayotte
        ("2026-09-16T13:00:00+02:00", ""),  # 15:00 Réunion, 14:00 Mayotte
        ("2026-09-16T17:59:59+02:00", ""),  # 19:59:59 Réunion
        ("2026-09-16T18:00:00+02:00", "time.window"),  # 20:00 Réunion
    ],
)
async def test_a_number_of_two_zones_gets_the_hours_both_allow(
    engine: PolicyEngine, store: MemoryStore, when: str, rule: str
) -> None:
    assert await rule_at(engine, store, "0692123456", when) == rule
    assert await rule_at(engine, store, "+262693001234", when) == rule


@pytest.mark.parametrize(
    ("callee", "day", "rule"),
    [
        # Saint-Barthélemy's abolition day (9 October; a Friday in 2026): its numbers, and the mobiles and
        # numbers it shares with Guadeloupe and Saint-Martin; not Guadeloupe's own landlines.
        ("0590271234", "2026-10-09", "time.holiday"),  # Saint-Barthélemy or Saint-Martin
        ("0690001234", "2026-10-09", "time.holiday"),  # Guadeloupe, Saint-Barthélemy or Saint-Martin
        ("0590011234", "2026-10-09", ""),  # Guadeloupe only
        ("0596301234", "2026-10-09", ""),  # Martinique
        # Saint-Martin: 27 May (décret 83-1003) and 28 May (circular), both blocked (Thursday/Friday in 2027).
        ("0590771234", "2027-05-27", "time.holiday"),
        ("0590771234", "2027-05-28", "time.holiday"),
        ("0590271234", "2027-05-28", "time.holiday"),
        ("0590011234", "2027-05-27", "time.holiday"),  # Guadeloupe's own day
        ("0590011234", "2027-05-28", ""),
        # Mayotte (27 April; a Tuesday in 2027) for Réunion's shared mobiles too; Réunion (20 December).
        ("0692123456", "2027-04-27", "time.holiday"),
        ("0262123456", "2027-04-27", ""),
        ("0692123456", "2027-12-20", "time.holiday"),
        ("0269001234", "2027-12-20", ""),
        # Guyane (10 June), Martinique (22 May).
        ("0709312345", "2027-06-10", "time.holiday"),
        ("0596301234", "2026-05-22", "time.holiday"),
    ],
)
async def test_overseas_holidays_of_every_candidate_territory(
    engine: PolicyEngine, store: MemoryStore, callee: str, day: str, rule: str
) -> None:
    # 15:00 UTC: within the hours of every overseas zone concerned (Antilles 11:00, Guyane 12:00,
    # Réunion 19:00, Mayotte 18:00), so only the holiday rule can refuse.
    assert await rule_at(engine, store, callee, f"{day}T15:00:00+00:00") == rule


@pytest.mark.parametrize(
    ("callee", "zone_key", "holiday"),
    [
        ("0947512345", "America/Guadeloupe", "2026-10-09"),  # 09 475: Guadeloupe, Saint-Martin, St-Barth
        ("0947612345", "America/Cayenne", "2027-06-10"),
        ("0947712345", "America/Martinique", "2026-05-22"),
        ("0947812345", "Indian/Mayotte", "2027-04-27"),
        ("0947912345", "Indian/Reunion", "2027-12-20"),
    ],
)
async def test_overseas_npv_numbers_follow_their_territory(
    engine: PolicyEngine, store: MemoryStore, callee: str, zone_key: str, holiday: str
) -> None:
    e164 = call_facts(engine, "dialer", "0162123456", callee).callee.e164
    assert not e164.startswith("+33")
    zones = {z.key for z in engine.rules_for("dialer").hours.places_for(e164).zones}
    assert zone_key in zones
    assert await rule_at(engine, store, callee, f"{holiday}T15:00:00+00:00") == "time.holiday"


async def test_mayotte_npv_hours(engine: PolicyEngine, store: MemoryStore) -> None:
    assert await rule_at(engine, store, "0947812345", "2026-09-16T19:00:00+02:00") == "time.window"  # 20:00
    assert await rule_at(engine, store, "0947812345", "2026-09-16T18:30:00+02:00") == ""


# -- the callee's own zone, from the dialer's CRM or the consent record ------------------------------------


@pytest.mark.parametrize(
    ("callee", "zone", "when", "rule"),
    [
        # A metropolitan mobile whose holder lives in Guyane: 11:00 Paris is 06:00 there.
        ("0611223344", "America/Cayenne", "2026-09-16T11:00:00+02:00", "time.window"),
        ("0611223344", "America/Cayenne", "2026-09-16T16:00:00+02:00", ""),  # 11:00 in Guyane
        ("0611223344", "America/Cayenne", "2026-09-16T20:30:00+02:00", "time.window"),  # Paris is closed
        ("0611223344", "Europe/Paris", "2026-09-16T11:00:00+02:00", ""),
        # The stricter of the two: a Réunion landline said to be in Paris.
        ("0262123456", "Europe/Paris", "2026-09-16T08:30:00+02:00", "time.window"),  # 08:30 in Paris
        ("0262123456", "Europe/Paris", "2026-09-16T10:30:00+02:00", ""),
        ("0262123456", "Europe/Paris", "2026-09-16T18:30:00+02:00", "time.window"),  # 20:30 in Réunion
        # A zone that is not an IANA name is refused (a dialer bug must not silently drop the rule).
        ("0611223344", "Mars/Olympus", "2026-09-16T11:00:00+02:00", "time.window"),
        ("0611223344", "../../etc/passwd", "2026-09-16T11:00:00+02:00", "time.window"),
        ("0611223344", "UTC+4", "2026-09-16T11:00:00+02:00", "time.window"),
    ],
)
async def test_zone_given_by_the_dialer(
    engine: PolicyEngine, store: MemoryStore, callee: str, zone: str, when: str, rule: str
) -> None:
    assert await rule_at(engine, store, callee, when, zone) == rule


async def test_an_unreadable_zone_names_itself(engine: PolicyEngine, store: MemoryStore) -> None:
    at = ts("2026-09-16T11:00:00+02:00")
    facts = call_facts(engine, "dialer", "0162123456", "0611223344", at=at, callee_zone="Mars/Olympus")
    d = await engine.decide(facts, fresh(store, at), record=False)
    assert d.outcomes["time.window"] == d.outcomes["time.window"].__class__(
        FAIL, "the callee's time zone 'Mars/Olympus' given by the dialer is not an IANA time zone name"
    )


async def test_the_given_zone_brings_its_territory_s_holidays(
    engine: PolicyEngine, store: MemoryStore
) -> None:
    # 20 December 2027 (a Monday): Réunion's abolition day, an ordinary day in Paris.
    when = "2027-12-20T11:00:00+01:00"  # 14:00 in Réunion
    assert await rule_at(engine, store, "0611223344", when) == ""
    assert await rule_at(engine, store, "0611223344", when, "Indian/Reunion") == "time.holiday"
    # A zone of no territory of the pack: the national holidays on its own calendar day.
    assert await rule_at(engine, store, "0611223344", "2026-07-14T11:00:00-04:00", "America/New_York") == (
        "time.holiday"
    )


async def test_zone_from_the_consent_record(
    make_engine: Callable[..., PolicyEngine], store: MemoryStore
) -> None:
    engine = make_engine()  # the opt-in regime: the consent is the callee's own record
    store.consents.append(
        ConsentRecord(
            "acme-energie", "+33611223344", ts("2026-01-01T00:00:00Z"), "crm-1", time_zone="America/Cayenne"
        )
    )
    assert await rule_at(engine, store, "0611223344", "2026-09-16T11:00:00+02:00") == "time.window"
    assert await rule_at(engine, store, "0611223344", "2026-09-16T16:00:00+02:00") == ""
    store.consents[0] = ConsentRecord(
        "acme-energie", "+33611223344", ts("2026-01-01T00:00:00Z"), "crm-1", time_zone="Nowhere/Land"
    )
    assert await rule_at(engine, store, "0611223344", "2026-09-16T16:00:00+02:00") == "time.window"


async def test_non_prospecting_trunks_ignore_the_zones(
    make_engine: Callable[..., PolicyEngine], store: MemoryStore
) -> None:
    engine = make_engine(prospecting=False)
    assert await rule_at(engine, store, "0611223344", "2026-09-16T23:00:00+02:00", "Mars/Olympus") == ""


def _invite(extra: str = "") -> bytes:
    return (
        "INVITE sip:0611223344@sipfilter.local SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-tz1\r\n"
        "From: <sip:0162123456@dialer>;tag=1\r\n"
        "To: <sip:0611223344@sipfilter.local>\r\n"
        "Call-ID: tz-1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Max-Forwards: 70\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_the_zone_header_reaches_the_facts(make_engine: Callable[..., PolicyEngine]) -> None:
    """The trunk names the header; the facts of a parsed INVITE carry its value as given (the engine
    validates it), and nothing when the trunk names no header."""
    engine = make_engine(callee_zone_header="X-Callee-TZ")
    header = engine.trunk("dialer").callee_zone_header
    request = parse(_invite("x-callee-tz: Indian/Reunion\r\n"))  # header names are case-insensitive
    reader = engine.reader("dialer")
    facts = read_invite(reader, "dialer", request, 0.0, header).facts
    assert (facts.callee.e164, facts.callee_zone) == ("+33611223344", "Indian/Reunion")
    assert read_invite(reader, "dialer", parse(_invite()), 0.0, header).facts.callee_zone == ""
    other = make_engine()
    no_header = other.trunk("dialer").callee_zone_header
    assert read_invite(other.reader("dialer"), "dialer", request, 0.0, no_header).facts.callee_zone == ""


def test_the_zone_header_name_is_validated(make_engine: Callable[..., PolicyEngine]) -> None:
    from sipfilter.config import ConfigError

    with pytest.raises(ConfigError) as err:
        make_engine(callee_zone_header="X Callee TZ")
    assert "trunks.dialer.callee_zone_header" in str(err.value)
