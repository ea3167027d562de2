"""check_hours' memoised local-day fast path answers exactly what the datetime path answers: any instant,
callees in several zones (DST changes, overseas, a zone with another weekend, numbers in two zones, a zone
given for the callee), holidays and their eves."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfilter.config import Config
from sipfilter.policy.hours import HoursRules, Place, _check_hours_slow, check_hours
from sipfilter.policy.verdict import Outcome

CALLEES = ("+33612345678", "+262692123456", "+262262123456", "+596696123456", "+590690123456", "+12125551234",
           "+447700900123")
GIVEN_ZONES = ((), (ZoneInfo("Indian/Reunion"),), (ZoneInfo("America/New_York"),))
START = datetime(2025, 1, 1, tzinfo=ZoneInfo("UTC")).timestamp()
END = datetime(2029, 1, 1, tzinfo=ZoneInfo("UTC")).timestamp()
# Instants near the edges: windows (10:00, 13:00, 14:00, 20:00), midnights and the DST changes of 2026.
EDGES = [
    datetime.fromisoformat(t).timestamp() + d
    for t in ("2026-03-29T01:00:00+00:00", "2026-10-25T01:00:00+00:00", "2026-05-14T00:00:00+02:00",
              "2026-11-02T10:00:00+01:00", "2026-11-02T13:00:00+01:00", "2026-11-02T20:00:00+01:00",
              "2026-07-14T00:00:00+02:00", "2026-07-13T23:59:59+02:00")
    for d in (-1.0, -0.0000004, -0.0000006, 0.0, 0.5, 0.9999996)
]


def _rules(config: Config) -> HoursRules:
    return config.rules["dialer"].hours


def _same(rules: HoursRules, callee: str, at: float, consent: str | None,
          zones: tuple[ZoneInfo, ...] = ()) -> None:  # fmt: skip
    fast: dict[str, Outcome] = {}
    slow: dict[str, Outcome] = {}
    places = rules.places_for(callee, zones).places
    first = check_hours(rules, places, at, True, consent, fast)
    assert first == _check_hours_slow(rules, places, at, consent, slow)
    assert fast == slow


# The rules (and their memo) are shared across examples on purpose: the memo must hold up across calls.
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    times=st.lists(st.one_of(st.floats(START, END), st.sampled_from(EDGES)), min_size=1, max_size=8),
    callee=st.sampled_from(CALLEES),
    consent=st.sampled_from([None, "mon-sat 09:00-21:00"]),
    zones=st.sampled_from(GIVEN_ZONES),
)
def test_fast_path_matches_datetime_path(config: Config, times: list[float], callee: str,
                                         consent: str | None, zones: tuple[ZoneInfo, ...]) -> None:
    rules = _rules(config)
    for at in times:  # several instants in a row: the memoised day is reused or replaced
        _same(rules, callee, at, consent, zones)


def test_every_edge_in_order(config: Config) -> None:
    rules = _rules(config)
    for at in sorted(EDGES):
        for callee in CALLEES:
            _same(rules, callee, at, None)


def test_dst_days_are_not_memoised(config: Config) -> None:
    rules = _rules(config)
    paris = ZoneInfo("Europe/Paris")
    dst_day = datetime.fromisoformat("2026-03-29T12:00:00+02:00").timestamp()
    assert rules.local_day(Place(paris, None), dst_day) is None
    day = rules.local_day(Place(paris, None), datetime.fromisoformat("2026-03-30T12:00:00+02:00").timestamp())
    assert day is not None and day.end - day.start == 86400 and day.weekday == 0


def test_place_memo_keeps_numbers_apart(config: Config) -> None:
    """Numbers of the plan are memoised by their first digits, others by themselves: every number still gets
    its own territories' zones and holidays, the first time and from the memo."""
    rules = _rules(config)
    reunion = ("Indian/Reunion", "974")
    mayotte = ("Indian/Mayotte", "976")
    guadeloupe, barth, martin = ("America/Guadeloupe", "971"), ("America/St_Barthelemy", "BL"), (
        "America/Marigot", "MF")
    expected = {
        "+262692123456": [reunion, mayotte],  # Réunion's mobiles are used in Mayotte too
        "+262262123456": [reunion],
        "+262269612345": [mayotte],
        "+262639401234": [mayotte],
        "+33612345678": [("Europe/Paris", None)],
        "+33387123456": [("Europe/Paris", "57")],
        "+596696123456": [("America/Martinique", "972")],
        "+590690123456": [guadeloupe, barth, martin],  # one mobile plan for three territories
        "+590590271234": [barth, martin],
        "+590590011234": [guadeloupe],
        "+12125551234": [("America/New_York", None)],
        "+14155551234": [("America/Los_Angeles", None)],
        "+508411234": [("America/Miquelon", "PM")],
    }
    for _ in range(2):  # the second round answers from the memo
        for number, places in expected.items():
            got = [(p.zone.key, p.subdivision) for p in rules.places_for(number).places]
            assert got == places, number
