"""Callee rules backed by store lists and records: do-not-call lists, stale lists, consent, contract, sector.

A contract in progress exempts only where the pack says so (the consent rule, Bloctel, some banned sectors),
never from the company's own opt-outs, and only for solicitations related to its object: a contract whose
scope names the trunk's purpose (any contract on a trunk that declares no purpose).
Reads the store synchronously (lists are in memory); never writes. A list never imported counts as stale.
"""

from __future__ import annotations

import math
import time as time_
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sipfilter.config import Section
from sipfilter.policy.hours import as_date
from sipfilter.policy.verdict import FAIL, PASS, SKIP, Outcome
from sipfilter.stores.base import ConsentRecord, Store
from sipfilter.times import iso_utc

STALE_RULE = "list.stale"
CONSENT_RULE = "callee.consent"
SECTOR_RULE = "sector.banned"
DNC_PREFIX = "callee.dnc."
# How a contract in progress bears on a banned sector: lifts it (as for consent), only when its scope names
# the trunk's purpose, or never.
SECTOR_EXEMPTIONS = ("true", "scoped", "false")

_DAY = 86400.0
_PASS = Outcome(PASS, "")
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ListRule:
    max_age_s: float | None  # an older snapshot is stale (None: no limit)
    age_until: float  # epoch seconds from which the age rule no longer applies (inf: always applies)
    age_until_date: date | None  # its last day, for messages
    contract_exempts: bool  # a contract in progress lets a listed callee through…
    exempts_until: float = float("inf")  # …until this instant (epoch seconds; inf: no end)

    def max_age_at(self, at: float) -> float | None:
        return self.max_age_s if at < self.age_until else None

    def exempts_at(self, at: float) -> bool:
        return self.contract_exempts and at < self.exempts_until


@dataclass(frozen=True, slots=True)
class ListRules:
    by_name: Mapping[str, ListRule]
    default: ListRule
    consent_from: float  # epoch seconds from which prospecting needs consent (opt-in regime)
    consent_from_date: date
    contract_exempts: bool  # from the consent rule
    banned_sectors: Mapping[str, str]  # sector → one of SECTOR_EXEMPTIONS

    def rule_for(self, name: str) -> ListRule:
        return self.by_name.get(name, self.default)

    def max_age_for(self, name: str, at: float | None = None) -> float | None:
        """The max age of `name` at `at` (default: now, for metrics and alerts), None when it has none."""
        return self.by_name.get(name, self.default).max_age_at(time_.time() if at is None else at)


def _midnight_after(day: date, tz: ZoneInfo) -> float:
    """The first instant after `day` ends, in `tz` (pack dates are legal dates in metropolitan France)."""
    return datetime.combine(day + timedelta(days=1), time(0), tz).timestamp()


def _last_day(s: Section, key: str) -> date | None:
    given = s.raw(key, None)
    day = None if given is None else as_date(given)
    if given is not None and day is None:
        raise s.error(key, f"expected an ISO date like 2026-08-10 or null, got {given!r}")
    return day


def _list_rule(lists: Section, key: str, tz: ZoneInfo) -> ListRule:
    sub = lists.section(key)
    sub.only(["max_age_days", "max_age_until", "contract_exempts", "contract_exempts_until"])
    days = sub.int("max_age_days", None, lo=1)
    until = _last_day(sub, "max_age_until")
    exempts_until = _last_day(sub, "contract_exempts_until")
    return ListRule(
        None if days is None else days * _DAY,
        float("inf") if until is None else _midnight_after(until, tz),
        until,
        sub.bool("contract_exempts", False),
        float("inf") if exempts_until is None else _midnight_after(exempts_until, tz),
    )


def _banned(sectors: Section) -> dict[str, str]:
    raw = sectors.raw("banned", None)
    if raw is None:
        return {}
    if isinstance(raw, list):  # the short form: a list of sectors a contract in progress exempts from
        return dict.fromkeys(sectors.str_list("banned"), "true")
    banned = sectors.section("banned")
    out: dict[str, str] = {}
    for name in banned.data:
        entry = banned.section(str(name))
        entry.only(["contract_exempts"])
        value = entry.raw("contract_exempts", True)
        text = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value
        if text not in SECTOR_EXEMPTIONS:
            raise entry.error("contract_exempts", f"expected true, scoped or false, got {value!r}")
        out[str(name)] = str(text)
    return out


def compile_lists(lists: Section, consent: Section, sectors: Section, tz: ZoneInfo) -> ListRules:
    by_name = {str(name): _list_rule(lists, str(name), tz) for name in lists.data if name != "default"}
    no_rule = ListRule(None, float("inf"), None, False)
    default = _list_rule(lists, "default", tz) if lists.has("default") else no_rule
    consent.only(["required_from", "contract_exempts"])
    given = consent.raw("required_from", None)
    start = date.max if given is None else as_date(given)
    if start is None:
        raise consent.error("required_from", f"expected an ISO date like 2026-08-11 or null, got {given!r}")
    # The date is a legal date in metropolitan France: midnight Paris time (or the pack's default zone).
    start_ts = datetime.combine(start, time(0), tz).timestamp() if start != date.max else float("inf")
    sectors.only(["banned"])
    return ListRules(
        by_name,
        default,
        start_ts,
        start,
        consent.bool("contract_exempts", True),
        _banned(sectors),
    )


class Lookups:
    """Per-decision memo of store reads (contract and consent are asked at most once per decision)."""

    __slots__ = ("_consent", "_contract", "account", "at", "number", "purpose", "store")

    def __init__(self, store: Store, account: str, number: str, at: float, purpose: str | None = None):
        self.store, self.account, self.number, self.at = store, account, number, at
        self.purpose = purpose  # the trunk's: a contract must name it in its scope to exempt
        self._contract: bool | None = None
        self._consent: ConsentRecord | bool | None = False  # False: not asked yet

    def contract(self) -> bool:
        """A contract in progress related to the trunk's purpose (any contract when it declares none)."""
        if self._contract is None:
            self._contract = bool(self.store.has_contract(self.account, self.number, self.at, self.purpose))
        return self._contract

    def consent(self) -> ConsentRecord | None:
        if self._consent is False:
            self._consent = self.store.consent_for(self.account, self.number, self.at)
        return self._consent  # type: ignore[return-value]

    def contract_words(self) -> str:
        return f"a contract in progress for {self.purpose!r}" if self.purpose else "a contract in progress"
    def consent_seen(self) -> ConsentRecord | None:
        """The consent a rule consulted (None when none was asked or found): the audit line's proof."""
        return None if self._consent is False else self._consent  # type: ignore[return-value]

    def contract_seen(self) -> bool:
        """Whether a rule consulted the contracts and found one in progress."""
        return bool(self._contract)


def check_stale(
    rules: ListRules,
    dnc: tuple[str, ...],
    store: Store,
    at: float,
    on_stale: str,
    out: dict[str, Outcome],
    alerts: list[str],
) -> tuple[str, frozenset[str]]:
    """Outcome of `list.stale`; returns (failing rule or "", names of lists that cannot be consulted)."""
    if not dnc:
        out[STALE_RULE] = Outcome(SKIP, "no do-not-call list on this trunk")
        return "", frozenset()
    # Fast path: every list imported and fresh (list_info is an in-memory read).
    for name in dnc:
        info = store.list_info(name)
        if info is None:
            break
        rule = rules.by_name.get(name, rules.default)
        if rule.max_age_s is not None and at < rule.age_until and at - info.imported_at > rule.max_age_s:
            break
    else:
        out[STALE_RULE] = _PASS
        return "", _NONE
    problems: list[str] = []
    missing: set[str] = set()
    for name in dnc:
        info = store.list_info(name)
        if info is None:
            problems.append(f"list {name!r} has never been imported")
            missing.add(name)
            continue
        max_age = rules.max_age_for(name, at)
        if max_age is not None and at - info.imported_at > max_age:
            problems.append(
                f"list {name!r} imported {(at - info.imported_at) / _DAY:.1f} days ago "
                f"(max {max_age / _DAY:.0f})"
            )
    if not problems:
        out[STALE_RULE] = _PASS
        return "", frozenset(missing)
    text = "; ".join(problems)
    if on_stale == "reject":
        out[STALE_RULE] = Outcome(FAIL, text)
        return STALE_RULE, frozenset(missing)
    alerts.append(f"{STALE_RULE}: {text}")
    out[STALE_RULE] = Outcome(PASS, f"allow-and-alert: {text}")
    return "", frozenset(missing)


_DNC_RULES: dict[str, str] = {}  # list name → rule id (list names come from the config: bounded)


def check_dnc(
    rules: ListRules, dnc: tuple[str, ...], missing: frozenset[str], look: Lookups, out: dict[str, Outcome]
) -> str:
    first = ""
    for name in dnc:
        rule = _DNC_RULES.get(name)
        if rule is None:
            rule = _DNC_RULES[name] = DNC_PREFIX + name
        if name in missing:
            out[rule] = Outcome(SKIP, f"list {name!r} has never been imported")
            continue
        try:
            hit = look.store.list_contains(name, look.number)
        except KeyError:
            out[rule] = Outcome(SKIP, f"list {name!r} has never been imported")
            continue
        if not hit:
            out[rule] = _PASS
        elif rules.rule_for(name).exempts_at(look.at) and look.contract():
            out[rule] = Outcome(PASS, f"{look.number} is on {name!r} but has {look.contract_words()}")
        else:
            out[rule] = Outcome(FAIL, f"{look.number} is on do-not-call list {name!r}")
            first = first or rule
    return first


_NO_SECTOR = Outcome(SKIP, "no sector on this trunk")
_NOT_PROSPECTING = Outcome(SKIP, "trunk is not prospecting")


def check_sector(
    rules: ListRules, sector: str | None, prospecting: bool, look: Lookups, out: dict[str, Outcome]
) -> str:
    """The ban concerns prospecting in the sector; a related contract in progress, where the pack allows it,
    is the only way through."""
    if sector is None:
        out[SECTOR_RULE] = _NO_SECTOR
        return ""
    if not prospecting:
        out[SECTOR_RULE] = _NOT_PROSPECTING
        return ""
    exemption = rules.banned_sectors.get(sector)
    if exemption is None:
        out[SECTOR_RULE] = Outcome(PASS, f"sector {sector!r} is not banned")
        return ""
    if exemption == "false":
        out[SECTOR_RULE] = Outcome(FAIL, f"prospecting in sector {sector!r} is banned")
        return SECTOR_RULE
    if exemption == "scoped" and not look.purpose:
        out[SECTOR_RULE] = Outcome(
            FAIL,
            f"prospecting in sector {sector!r} is banned except within a contract in progress directly "
            "related to it: the trunk declares no purpose",
        )
        return SECTOR_RULE
    if look.contract():
        out[SECTOR_RULE] = Outcome(PASS, f"sector {sector!r} is banned but {look.contract_words()} exempts")
        return ""
    out[SECTOR_RULE] = Outcome(
        FAIL, f"prospecting in sector {sector!r} is banned without {look.contract_words()}"
    )
    return SECTOR_RULE


_CONSENT_PASSES: dict[str, Outcome] = {}


def check_consent(rules: ListRules, prospecting: bool, look: Lookups, out: dict[str, Outcome]) -> str:
    if not prospecting:
        out[CONSENT_RULE] = Outcome(SKIP, "trunk is not prospecting")
        return ""
    if look.at < rules.consent_from:
        out[CONSENT_RULE] = Outcome(SKIP, f"opt-in regime starts {rules.consent_from_date.isoformat()}")
        return ""
    record = look.consent()
    if record is not None:
        outcome = _CONSENT_PASSES.get(record.proof)
        if outcome is None:  # proofs repeat (a CRM campaign, an import file): share their outcome
            if len(_CONSENT_PASSES) >= 4096:
                _CONSENT_PASSES.clear()
            outcome = Outcome(PASS, f"consent recorded (proof {record.proof})")
            _CONSENT_PASSES[record.proof] = outcome
        out[CONSENT_RULE] = outcome
        return ""
    if rules.contract_exempts and look.contract():
        out[CONSENT_RULE] = Outcome(PASS, f"no consent but {look.contract_words()}")
        return ""
    # Refusing anyway: say so when the only consent was granted after the call time (a back-dated check).
    later = look.store.consent_for(look.account, look.number, math.inf)
    if later is not None and later.granted_at > look.at:
        out[CONSENT_RULE] = Outcome(FAIL, f"the consent of {look.number} for account {look.account!r} was "
                                          f"granted at {iso_utc(later.granted_at)}, after the call time")
        return CONSENT_RULE
    out[CONSENT_RULE] = Outcome(FAIL, f"no consent recorded for {look.number} by account {look.account!r}")
    return CONSENT_RULE
