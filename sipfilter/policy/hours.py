"""Day/hour rules of D223-9 in the callee's time zone: weekly windows, public holidays, consent hours.

Pure: time zones and holidays come from the rule pack and the `holidays` package, computed once per year.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holidays_pkg
import phonenumbers
from phonenumbers import timezone as pn_timezone

from sipfilter.config import ConfigError, Section
from sipfilter.policy.verdict import FAIL, PASS, SKIP, Outcome

WINDOW_RULE = "time.window"
HOLIDAY_RULE = "time.holiday"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")

Window = tuple[tuple[int, int], ...]  # (start, end) seconds of day; start inclusive, end exclusive


@dataclass(frozen=True, slots=True)
class LocalDay:
    """One local calendar day of a zone without a UTC-offset change inside it: [start, end) in epoch seconds,
    its weekday (Monday 0) and public holiday name. Lets the hot path skip datetime arithmetic."""

    start: float
    end: float
    weekday: int
    holiday: str | None


def parse_range(text: str) -> tuple[int, int]:
    """ "10:00-13:00" → (36000, 46800); raises ValueError. 24:00 is allowed as an end."""
    m = _RANGE_RE.match(text)
    if not m:
        raise ValueError(f"expected HH:MM-HH:MM, got {text!r}")
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    start, end = h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 86400 or end <= start:
        raise ValueError(f"not a valid time range: {text!r}")
    return start, end


@lru_cache(maxsize=4096)  # consent records repeat their hours text
def parse_consent_hours(text: str) -> tuple[Window, ...]:
    """Free-text hours of a consent record, e.g. "mon-sat 09:00-21:00" or
    "mon-fri 10:00-13:00,14:00-20:00; sat 10:00-12:00" → 7 windows (Monday first); raises ValueError."""
    week: list[list[tuple[int, int]]] = [[] for _ in DAYS]
    for group in filter(None, (g.strip() for g in text.lower().split(";"))):
        days_text, _, ranges_text = group.partition(" ")
        days: list[int] = []
        for part in days_text.split(","):
            first, _, last = part.partition("-")
            if first not in DAYS or (last and last not in DAYS):
                raise ValueError(f"unknown day in {group!r}")
            a, b = DAYS.index(first), DAYS.index(last or first)
            days.extend(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
        for r in ranges_text.split(","):
            span = parse_range(r)
            for d in days:
                week[d].append(span)
    if not any(week):
        raise ValueError("no hours")
    return tuple(tuple(sorted(w)) for w in week)


@dataclass(frozen=True, slots=True)
class HoursRules:
    weekly: tuple[Window, ...]  # Monday first
    default_zone: ZoneInfo
    zones: Mapping[str, ZoneInfo]  # E.164 prefix → zone
    zone_lengths: tuple[int, ...]
    holiday_source: str  # package | file | none
    country: str
    subdivisions: Mapping[str, str]  # E.164 prefix → holidays-package subdivision
    subdivision_lengths: tuple[int, ...]
    extra_dates: frozenset[date]
    ignore_dates: frozenset[date]
    consent_hours_override: bool
    consent_lifts_holidays: bool  # [U] whether consent hours also allow public holidays (default: no)
    holiday_file: Mapping[tuple[date, str | None], str] = field(default_factory=dict)  # source: file
    # Memos (filled lazily, bounded by the number of distinct prefixes/years seen).
    _zone_memo: dict[str, tuple[ZoneInfo, str | None]] = field(default_factory=dict, compare=False)
    _holiday_memo: dict[tuple[int, str | None], Mapping[date, str]] = field(
        default_factory=dict, compare=False
    )
    _day_memo: dict[tuple[ZoneInfo, str | None], LocalDay] = field(default_factory=dict, compare=False)

    def local_day(self, zone: ZoneInfo, subdivision: str | None, at: float) -> LocalDay | None:
        """The local day holding `at` (memoised per zone: calls arrive in time order), or None on a day whose
        UTC offset changes (DST), where the caller takes the datetime path."""
        key = (zone, subdivision)
        day = self._day_memo.get(key)
        if day is not None and day.start <= at < day.end:
            return day
        today = datetime.fromtimestamp(at, zone).date()
        start = datetime.combine(today, time(0), zone)
        end = datetime.combine(today + timedelta(days=1), time(0), zone)
        start_ts, end_ts = start.timestamp(), end.timestamp()
        if (
            start.utcoffset() != datetime.fromtimestamp(end_ts - 1, zone).utcoffset()
            or not start_ts.is_integer()
            or datetime.fromtimestamp(start_ts, zone).replace(tzinfo=None) != start.replace(tzinfo=None)
        ):
            return None
        day = LocalDay(start_ts, end_ts, today.weekday(), self.holiday(today, subdivision))
        if len(self._day_memo) >= 10_000:
            self._day_memo.clear()
        self._day_memo[key] = day
        return day

    def zone_for(self, e164: str) -> tuple[ZoneInfo, str | None]:
        """The callee's zone and holiday subdivision, from its number."""
        # Most numbers are settled by their first 4 characters ("+336…": only "+33" can match), so a tiny
        # memo answers them; the others (a longer prefix may match: "+262 269…") by their first 8.
        hit = self._zone_memo.get(e164[:4])
        if hit is not None:
            return hit
        key = e164[:8]  # zone and subdivision prefixes are at most 8 characters
        hit = self._zone_memo.get(key)
        if hit is None:
            hit = (self._lookup_zone(e164), _longest(self.subdivisions, self.subdivision_lengths, e164))
            if len(self._zone_memo) < 100_000:
                short = e164[:4]
                settled = len(short) == 4 and not any(
                    len(p) > 4 and p.startswith(short) for p in (*self.zones, *self.subdivisions)
                ) and any(short.startswith(p) for p in self.zones)  # else phonenumbers may look further
                self._zone_memo[short if settled else key] = hit
        return hit

    def _lookup_zone(self, e164: str) -> ZoneInfo:
        for length in self.zone_lengths:
            zone = self.zones.get(e164[:length])
            if zone is not None:
                return zone
        try:
            names = pn_timezone.time_zones_for_number(phonenumbers.parse(e164))
        except phonenumbers.NumberParseException:
            names = ()
        if len(names) == 1:
            try:
                return ZoneInfo(names[0])
            except (ZoneInfoNotFoundError, ValueError):
                pass
        return self.default_zone

    def holiday(self, day: date, subdivision: str | None) -> str | None:
        if day in self.ignore_dates:
            return None
        if day in self.extra_dates:
            return "company closure"
        if self.holiday_source == "none":
            return None
        if self.holiday_source == "file":
            return self.holiday_file.get((day, None)) or (
                self.holiday_file.get((day, subdivision)) if subdivision else None
            )
        key = (day.year, subdivision)
        table = self._holiday_memo.get(key)
        if table is None:
            table = dict(holidays_pkg.country_holidays(self.country, subdiv=subdivision, years=day.year))
            self._holiday_memo[key] = table
        return table.get(day)


def _longest(table: Mapping[str, str], lengths: tuple[int, ...], e164: str) -> str | None:
    for length in lengths:
        hit = table.get(e164[:length])
        if hit is not None:
            return hit
    return None


def _zone(s: Section, key: str, name: object) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise s.error(key, f"unknown time zone {name!r}") from exc


def as_date(value: object) -> date | None:
    """A YAML date (or an ISO date string, as quoted YAML gives it), else None."""
    if isinstance(value, datetime):
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return None
    return None


def _dates(s: Section, key: str) -> frozenset[date]:
    out = set()
    for i, item in enumerate(s.list(key, [])):
        day = as_date(item)
        if day is None:
            raise s.item_error(key, i, f"expected an ISO date like 2026-05-14, got {item!r}")
        out.add(day)
    return frozenset(out)


def compile_hours(s: Section, h: Section) -> HoursRules:
    s.only(["weekly", "default_time_zone", "time_zones", "consent_hours_override", "consent_lifts_holidays"])
    weekly_s = s.section("weekly")
    weekly_s.only(DAYS)
    week: list[Window] = []
    for day in DAYS:
        spans = []
        for i, text in enumerate(weekly_s.str_list(day, ())):
            try:
                spans.append(parse_range(text))
            except ValueError as exc:
                raise weekly_s.item_error(day, i, str(exc)) from exc
        week.append(tuple(sorted(spans)))
    zones_s = s.section("time_zones", default_empty=True)
    zones = {str(p): _zone(zones_s, str(p), z) for p, z in zones_s.data.items()}
    h.only(["source", "country", "subdivisions", "extra_dates", "ignore_dates", "file"])
    source = h.choice("source", ("package", "file", "none"), "package")
    holiday_file = read_holiday_file(h.path_("file")) if source == "file" else {}
    country = h.str("country", "FR")
    subs_s = h.section("subdivisions", default_empty=True)
    subs = {str(p): str(v) for p, v in subs_s.data.items()}
    if source == "package":
        try:
            supported = holidays_pkg.country_holidays(country).subdivisions
        except NotImplementedError as exc:
            raise h.error("country", f"the holidays package does not know country {country!r}") from exc
        for prefix, sub in subs.items():
            if sub not in supported:
                raise subs_s.error(
                    prefix, f"unknown {country} subdivision {sub!r} (known: {', '.join(supported)})"
                )
    return HoursRules(
        weekly=tuple(week),
        default_zone=_zone(s, "default_time_zone", s.str("default_time_zone")),
        zones=zones,
        zone_lengths=tuple(sorted({len(p) for p in zones}, reverse=True)),
        holiday_source=source,
        holiday_file=holiday_file,
        country=country,
        subdivisions=subs,
        subdivision_lengths=tuple(sorted({len(p) for p in subs}, reverse=True)),
        extra_dates=_dates(h, "extra_dates"),
        ignore_dates=_dates(h, "ignore_dates"),
        consent_hours_override=s.bool("consent_hours_override", True),
        consent_lifts_holidays=s.bool("consent_lifts_holidays", False),
    )


def read_holiday_file(path: Path) -> dict[tuple[date, str | None], str]:
    """`source: file`: one holiday a line, `YYYY-MM-DD [@SUBDIVISION] name`, `#` comments."""
    table: dict[tuple[date, str | None], str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read holiday file: {exc.strerror or exc}", path) from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        first, _, rest = line.partition(" ")
        subdivision: str | None = None
        rest = rest.strip()
        if rest.startswith("@"):
            subdivision, _, rest = rest[1:].partition(" ")
        try:
            day = date.fromisoformat(first)
        except ValueError as exc:
            raise ConfigError(
                f"expected `YYYY-MM-DD [@SUBDIVISION] name`, got {line!r}", path, lineno
            ) from exc
        table[(day, subdivision)] = rest.strip() or "public holiday"
    return table


def _in_window(window: Window, second: int) -> bool:
    for start, end in window:  # noqa: SIM110 (a generator costs ~0.5 µs on the hot path)
        if start <= second < end:
            return True
    return False


_PASS = Outcome(PASS, "")
_SKIP = Outcome(SKIP, "trunk is not prospecting")


@lru_cache(maxsize=256)  # a rule pack has a handful of windows; a rejection formats one every time
def _fmt(window: Window) -> str:
    return (
        ", ".join(
            f"{a // 3600:02d}:{a % 3600 // 60:02d}-{b // 3600:02d}:{b % 3600 // 60:02d}" for a, b in window
        )
        or "closed"
    )


_DAY_ABBR = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # %a without strftime's locale cost


def _stamp(local: datetime, zone: ZoneInfo) -> str:
    return (f"{_DAY_ABBR[local.weekday()]} {local.year:04d}-{local.month:02d}-{local.day:02d} "
            f"{local.hour:02d}:{local.minute:02d}:{local.second:02d} {zone.key}")


def check_hours(
    rules: HoursRules, e164: str, at: float, applies: bool, consent_hours: str | None, out: dict[str, Outcome]
) -> str:
    """Outcomes of time.holiday and time.window; returns the first failing rule or ""."""
    if not applies:
        out[HOLIDAY_RULE] = out[WINDOW_RULE] = _SKIP
        return ""
    zone, subdivision = rules.zone_for(e164)
    day = rules.local_day(zone, subdivision, at)
    if day is not None and not consent_hours and not day.holiday:
        since_midnight = at - day.start  # exact: both within a day of each other (Sterbenz)
        second = int(since_midnight)
        # datetime rounds to the microsecond: within 0.5 µs of the next second, let it decide.
        if since_midnight - second < 0.9999995 and _in_window(rules.weekly[day.weekday], second):
            out[HOLIDAY_RULE] = out[WINDOW_RULE] = _PASS  # the common case, with no datetime at all
            return ""
    return _check_hours_slow(rules, zone, subdivision, at, consent_hours, out)


def _check_hours_slow(
    rules: HoursRules,
    zone: ZoneInfo,
    subdivision: str | None,
    at: float,
    consent_hours: str | None,
    out: dict[str, Outcome],
) -> str:
    local = datetime.fromtimestamp(at, zone)
    first = ""
    weekly, source = rules.weekly, "D223-9"
    if consent_hours and rules.consent_hours_override:
        try:
            weekly, source = parse_consent_hours(consent_hours), "consent"
        except ValueError:
            source = "D223-9 (consent hours unreadable)"
    name = rules.holiday(local.date(), subdivision)
    if not name:
        out[HOLIDAY_RULE] = _PASS
    elif source == "consent" and rules.consent_lifts_holidays:
        out[HOLIDAY_RULE] = Outcome(PASS, f"public holiday ({name}) but the callee's consent hours apply")
    else:
        out[HOLIDAY_RULE] = Outcome(FAIL, f"{_stamp(local, zone)} is a public holiday ({name})")
        first = HOLIDAY_RULE
    window = weekly[local.weekday()]
    second = local.hour * 3600 + local.minute * 60 + local.second
    if _in_window(window, second):
        out[WINDOW_RULE] = _PASS
    else:
        out[WINDOW_RULE] = Outcome(FAIL, f"{_stamp(local, zone)} is outside {source} hours ({_fmt(window)})")
        first = first or WINDOW_RULE
    return first
