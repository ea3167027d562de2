"""Day/hour rules of D223-9 in the callee's time zones: weekly windows, public holidays, consent hours.

A callee is in one or more places (a time zone with its holidays): those of the territory its number belongs
to (several when the number is ambiguous: +262 692 is Réunion or Mayotte, 0590 27… Saint-Barthélemy or
Saint-Martin), plus the zone the dialer or the consent record gives. A call must be within the allowed hours
in every place and on a holiday in none: the intersection of the windows, the union of the holidays.

Pure: time zones and holidays come from the rule pack and the `holidays` package, computed once per year.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import holidays as holidays_pkg

from sipfilter.config import ConfigError, Section
from sipfilter.policy.territory import NumberingPlan, region_of, zones_of
from sipfilter.policy.verdict import FAIL, PASS, SKIP, Outcome

WINDOW_RULE = "time.window"
HOLIDAY_RULE = "time.holiday"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_MONTH_DAY_RE = re.compile(r"^(\d{2})-(\d{2})$")

Window = tuple[tuple[int, int], ...]  # (start, end) seconds of day; start inclusive, end exclusive


@dataclass(frozen=True, slots=True)
class LocalDay:
    """One local calendar day of a zone without a UTC-offset change inside it: [start, end) in epoch seconds,
    its weekday (Monday 0) and public holiday name. Lets the hot path skip datetime arithmetic."""

    start: float
    end: float
    weekday: int
    holiday: str | None


@dataclass(frozen=True, slots=True)
class Territory:
    """One territory of the pack's `territories`: where its people are (zones) and which days they rest."""

    code: str  # ISO 3166, as phonenumbers names regions
    zones: tuple[ZoneInfo, ...]
    subdivision: str | None  # the `holidays` package's subdivision (or a holiday file's @code)
    local_days: frozenset[tuple[int, int]]  # (month, day) blocked every year


@dataclass(frozen=True, slots=True)
class Place:
    """A time zone a callee may be in, with the holidays that apply there."""

    zone: ZoneInfo
    subdivision: str | None
    local_days: frozenset[tuple[int, int]] = frozenset()
    territory: str = ""  # "" when no territory of the pack is known (a foreign number, an unknown zone)
    # Places key the per-call memos: their hash is computed once, not on every lookup.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = (self.zone, self.subdivision, self.local_days, self.territory)
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class Placement:
    """Every place a callee may be in, and their distinct zones (the calendar days of the refusal cooldown
    are counted in each)."""

    places: tuple[Place, ...]
    zones: tuple[ZoneInfo, ...]

    @classmethod
    def of(cls, places: tuple[Place, ...]) -> Placement:
        return cls(places, tuple(dict.fromkeys(p.zone for p in places)))


_ZONE_NAMES: frozenset[str] | None = None


def zone_named(text: str) -> ZoneInfo | None:
    """An IANA time zone by its exact name (e.g. "Indian/Reunion"), or None: never a file path or a guess."""
    global _ZONE_NAMES
    if _ZONE_NAMES is None:
        _ZONE_NAMES = frozenset(available_timezones())
    if text not in _ZONE_NAMES:
        return None
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        return None


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
    plan: NumberingPlan | None  # tells which territories a number of the national plan belongs to
    territories: Mapping[str, Territory]
    zone_territories: Mapping[str, Territory]  # zone name → the territory that lists it
    holiday_source: str  # package | file | none
    country: str
    subdivisions: Mapping[str, str]  # E.164 prefix → holidays-package subdivision (within the home territory)
    subdivision_lengths: tuple[int, ...]
    extra_dates: frozenset[date]
    ignore_dates: frozenset[date]
    consent_hours_override: bool
    consent_lifts_holidays: bool  # [U] whether consent hours also allow public holidays (default: no)
    holiday_file: Mapping[tuple[date, str | None], str] = field(default_factory=dict)  # source: file
    # Memos (filled lazily, bounded).
    _places_memo: dict[object, Placement] = field(default_factory=dict, compare=False)
    _extra_memo: dict[tuple[tuple[Place, ...], tuple[ZoneInfo, ...]], Placement] = field(
        default_factory=dict, compare=False
    )
    _holiday_memo: dict[tuple[int, str | None], Mapping[date, str]] = field(
        default_factory=dict, compare=False
    )
    _day_memo: dict[Place, LocalDay] = field(default_factory=dict, compare=False)

    def local_day(self, place: Place, at: float) -> LocalDay | None:
        """The local day holding `at` (memoised per place: calls arrive in time order), or None on a day whose
        UTC offset changes (DST), where the caller takes the datetime path."""
        day = self._day_memo.get(place)
        if day is not None and day.start <= at < day.end:
            return day
        zone = place.zone
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
        day = LocalDay(start_ts, end_ts, today.weekday(), self.holiday(today, place))
        if len(self._day_memo) >= 10_000:
            self._day_memo.clear()
        self._day_memo[place] = day
        return day

    def places_for(self, e164: str, zones: tuple[ZoneInfo, ...] = ()) -> Placement:
        """Every place the callee of `e164` may be in, plus `zones` (the dialer's, the consent's) if given."""
        placement = self._number_places(e164)
        if not zones:
            return placement
        places = placement.places
        key = (places, zones)
        hit = self._extra_memo.get(key)
        if hit is None:
            more = [p for p in dict.fromkeys(self.place_of_zone(z) for z in zones) if p not in places]
            hit = Placement.of((*places, *more))
            if len(self._extra_memo) >= 10_000:
                self._extra_memo.clear()
            self._extra_memo[key] = hit
        return hit

    def place_of_zone(self, zone: ZoneInfo) -> Place:
        """A zone given for the callee, with the holidays of the territory listing it (else national ones)."""
        t = self.zone_territories.get(zone.key)
        if t is None:
            return Place(zone, None)
        return Place(zone, t.subdivision, t.local_days, t.code)

    def _number_places(self, e164: str) -> Placement:
        # A number of the plan: its territories (a handful of distinct answers) and its local subdivision;
        # any other number: itself (phonenumbers' zones). Both memos are bounded.
        plan = self.plan
        local = _longest(self.subdivisions, self.subdivision_lengths, e164) if self.subdivisions else None
        resolution = plan.resolve_e164(e164) if plan is not None else None
        key: object = e164 if resolution is None else (resolution.code, resolution.regions, local)
        hit = self._places_memo.get(key)
        if hit is not None:
            return hit
        regions: tuple[str, ...] = ()
        if resolution is not None:
            regions = resolution.regions
        else:
            region = region_of(e164)
            if region is not None and region in self.territories:
                regions = (region,)
        places: list[Place] = []
        for region in regions:
            t = self.territories.get(region)
            if t is None:
                continue
            home = plan is not None and region == plan.home
            sub = local if local is not None and home else t.subdivision
            for zone in t.zones:
                place = Place(zone, sub, t.local_days, t.code)
                if place not in places:
                    places.append(place)
        if not places:
            zones = [z for z in (zone_named(n) for n in zones_of(e164)) if z is not None]
            places = [Place(z, local) for z in dict.fromkeys(zones or [self.default_zone])]
        hit = Placement.of(tuple(places))
        if len(self._places_memo) >= 100_000:
            self._places_memo.clear()
        self._places_memo[key] = hit
        return hit

    def holiday(self, day: date, place: Place) -> str | None:
        """The holiday `day` is where `place` is: the source's (package or file), else one of the territory's
        local days of the pack (which apply with every source, as `extra_dates` do), else None."""
        if day in self.ignore_dates:
            return None
        if day in self.extra_dates:
            return "company closure"
        name = self._source_holiday(day, place.subdivision)
        if name is None and place.local_days and (day.month, day.day) in place.local_days:
            name = f"local holiday of {place.territory or place.zone.key}"
        return name

    def _source_holiday(self, day: date, subdivision: str | None) -> str | None:
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


def _territories(s: Section, country: str, source: str) -> dict[str, Territory]:
    supported: tuple[str, ...] = ()
    if source == "package":
        try:
            supported = tuple(holidays_pkg.country_holidays(country).subdivisions)
        except NotImplementedError:
            supported = ()
    out: dict[str, Territory] = {}
    for code in s.data:
        t = s.section(str(code))
        t.only(["time_zones", "holidays", "local_days"])
        if not re.fullmatch(r"[A-Z]{2}", str(code)):
            raise s.error(str(code), f"expected a 2-letter ISO 3166 code, got {code!r}")
        names = t.str_list("time_zones")
        if not names:
            raise t.error("time_zones", "list at least one IANA time zone")
        zones = []
        for i, name in enumerate(names):
            zone = zone_named(name)
            if zone is None:
                raise t.item_error("time_zones", i, f"unknown time zone {name!r}")
            zones.append(zone)
        sub = t.raw("holidays", None)
        sub = None if sub is None else str(sub)
        if sub is not None and source == "package" and sub not in supported:
            raise t.error("holidays", f"unknown {country} subdivision {sub!r} (known: {', '.join(supported)})"
                          )
        days = set()
        for i, text in enumerate(t.str_list("local_days", None)):
            m = _MONTH_DAY_RE.match(text)
            try:
                if m is None:
                    raise ValueError
                date(2000, int(m.group(1)), int(m.group(2)))  # a leap year: 02-29 is a day
            except ValueError:
                raise t.item_error("local_days", i, f"expected MM-DD like 05-27, got {text!r}") from None
            days.add((int(m.group(1)), int(m.group(2))))
        out[str(code)] = Territory(str(code), tuple(zones), sub, frozenset(days))
    return out


def compile_hours(s: Section, h: Section, territories: Section, plan: NumberingPlan | None) -> HoursRules:
    s.only(["weekly", "default_time_zone", "consent_hours_override", "consent_lifts_holidays"])
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
    terr = _territories(territories, country, source)
    if plan is not None:
        missing = [r for r in plan.regions if r not in terr]
        if missing:
            raise territories.error(
                missing[0], f"the numbering plan's territories need an entry here: {', '.join(missing)}"
            )
    zone_territories: dict[str, Territory] = {}
    for t in terr.values():
        for zone in t.zones:
            zone_territories.setdefault(zone.key, t)
    default_name = s.str("default_time_zone")
    default = zone_named(default_name)
    if default is None:
        raise s.error("default_time_zone", f"unknown time zone {default_name!r}")
    return HoursRules(
        weekly=tuple(week),
        default_zone=default,
        plan=plan,
        territories=terr,
        zone_territories=zone_territories,
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
    for start, end in window:  # noqa: SIM110 (a generator costs more on the hot path)
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
    rules: HoursRules,
    places: tuple[Place, ...],
    at: float,
    applies: bool,
    consent_hours: str | None,
    out: dict[str, Outcome],
) -> str:
    """Outcomes of time.holiday and time.window in every place; returns the first failing rule or ""."""
    if not applies:
        out[HOLIDAY_RULE] = out[WINDOW_RULE] = _SKIP
        return ""
    if not consent_hours:
        for place in places:
            day = rules.local_day(place, at)
            if day is None or day.holiday:
                break
            since_midnight = at - day.start  # exact: both within a day of each other (Sterbenz)
            second = int(since_midnight)
            # datetime rounds to the microsecond: within 0.5 µs of the next second, let it decide.
            if not (since_midnight - second < 0.9999995 and _in_window(rules.weekly[day.weekday], second)):
                break
        else:
            out[HOLIDAY_RULE] = out[WINDOW_RULE] = _PASS  # the common case, with no datetime at all
            return ""
    return _check_hours_slow(rules, places, at, consent_hours, out)


def _check_hours_slow(
    rules: HoursRules,
    places: tuple[Place, ...],
    at: float,
    consent_hours: str | None,
    out: dict[str, Outcome],
) -> str:
    weekly, source = rules.weekly, "D223-9"
    if consent_hours and rules.consent_hours_override:
        try:
            weekly, source = parse_consent_hours(consent_hours), "consent"
        except ValueError:
            source = "D223-9 (consent hours unreadable)"
    holiday_fail = holiday_lifted = window_fail = ""
    for place in places:
        local = datetime.fromtimestamp(at, place.zone)
        name = rules.holiday(local.date(), place)
        if name:
            if source == "consent" and rules.consent_lifts_holidays:
                holiday_lifted = holiday_lifted or f"public holiday ({name}), but the consent's hours apply"
            else:
                holiday_fail = holiday_fail or f"{_stamp(local, place.zone)} is a public holiday ({name})"
        window = weekly[local.weekday()]
        second = local.hour * 3600 + local.minute * 60 + local.second
        if not window_fail and not _in_window(window, second):
            window_fail = f"{_stamp(local, place.zone)} is outside {source} hours ({_fmt(window)})"
    first = ""
    if holiday_fail:
        out[HOLIDAY_RULE] = Outcome(FAIL, holiday_fail)
        first = HOLIDAY_RULE
    else:
        out[HOLIDAY_RULE] = Outcome(PASS, holiday_lifted) if holiday_lifted else _PASS
    if window_fail:
        out[WINDOW_RULE] = Outcome(FAIL, window_fail)
        first = first or WINDOW_RULE
    else:
        out[WINDOW_RULE] = _PASS
    return first


def describe_places(places: tuple[Place, ...], at: float) -> str:
    """The callee's local time in each of its places, e.g. for `sipfilter check`."""
    return "; ".join(
        f"{datetime.fromtimestamp(at, p.zone):%a %Y-%m-%d %H:%M:%S} {p.zone.key}"
        + (f" ({p.territory})" if p.territory else "")
        for p in places
    )
