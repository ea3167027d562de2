"""check_hours' memoised local-day fast path answers exactly what the datetime path answers: any instant,
callees in several zones (DST changes, overseas, a zone with another weekend), holidays and their eves."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfilter.config import Config
from sipfilter.policy.hours import HoursRules, _check_hours_slow, check_hours
from sipfilter.policy.verdict import Outcome

CALLEES = ("+33612345678", "+262692123456", "+596696123456", "+12125551234", "+447700900123")
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


def _same(rules: HoursRules, callee: str, at: float, consent: str | None) -> None:
    fast: dict[str, Outcome] = {}
    slow: dict[str, Outcome] = {}
    first = check_hours(rules, callee, at, True, consent, fast)
    zone, subdivision = rules.zone_for(callee)
    assert first == _check_hours_slow(rules, zone, subdivision, at, consent, slow)
    assert fast == slow


# The rules (and their memo) are shared across examples on purpose: the memo must hold up across calls.
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    times=st.lists(st.one_of(st.floats(START, END), st.sampled_from(EDGES)), min_size=1, max_size=8),
    callee=st.sampled_from(CALLEES),
    consent=st.sampled_from([None, "mon-sat 09:00-21:00"]),
)
def test_fast_path_matches_datetime_path(config: Config, times: list[float], callee: str,
                                         consent: str | None) -> None:
    rules = _rules(config)
    for at in times:  # several instants in a row: the memoised day is reused or replaced
        _same(rules, callee, at, consent)


def test_every_edge_in_order(config: Config) -> None:
    rules = _rules(config)
    for at in sorted(EDGES):
        for callee in CALLEES:
            _same(rules, callee, at, None)


def test_dst_days_are_not_memoised(config: Config) -> None:
    rules = _rules(config)
    paris = ZoneInfo("Europe/Paris")
    dst_day = datetime.fromisoformat("2026-03-29T12:00:00+02:00").timestamp()
    assert rules.local_day(paris, None, dst_day) is None
    day = rules.local_day(paris, None, datetime.fromisoformat("2026-03-30T12:00:00+02:00").timestamp())
    assert day is not None and day.end - day.start == 86400 and day.weekday == 0


def test_zone_memo_keeps_longer_prefixes_apart(config: Config) -> None:
    """A number settled by its first four characters is memoised under them; "+262…" is not (Mayotte's
    +262 269 / +262 639 share them with Réunion), nor are numbers no configured prefix settles."""
    rules = _rules(config)
    expected = {
        "+262692123456": ("Indian/Reunion", "974"),
        "+262269612345": ("Indian/Mayotte", "976"),
        "+262639123456": ("Indian/Mayotte", "976"),
        "+33612345678": ("Europe/Paris", None),
        "+596696123456": ("America/Martinique", "972"),
        "+12125551234": ("America/New_York", None),
        "+14155551234": ("America/Los_Angeles", None),
    }
    for _ in range(2):  # the second round answers from the memo
        for number, (zone, subdivision) in expected.items():
            got = rules.zone_for(number)
            assert (got[0].key, got[1]) == (zone, subdivision), number
