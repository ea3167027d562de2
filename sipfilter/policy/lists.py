"""Callee rules backed by store lists and records: do-not-call lists, stale lists, consent, contract, sector.

Reads the store synchronously (lists are in memory); never writes. A list never imported counts as stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from sipfilter.config import Section
from sipfilter.policy.hours import as_date
from sipfilter.policy.verdict import FAIL, PASS, SKIP, Outcome
from sipfilter.stores.base import ConsentRecord, Store

STALE_RULE = "list.stale"
CONSENT_RULE = "callee.consent"
SECTOR_RULE = "sector.banned"
DNC_PREFIX = "callee.dnc."

_DAY = 86400.0
_PASS = Outcome(PASS, "")
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ListRules:
    max_age_s: Mapping[str, float | None]  # list name → max age in seconds (None: no limit)
    default_max_age_s: float | None
    consent_from: float  # epoch seconds from which prospecting needs consent (opt-in regime)
    consent_from_date: date
    contract_exempts: bool
    banned_sectors: frozenset[str]

    def max_age_for(self, name: str) -> float | None:
        return self.max_age_s.get(name, self.default_max_age_s)


def _age(s: Section, key: str) -> float | None:
    sub = s.section(key)
    sub.only(["max_age_days"])
    days = sub.int("max_age_days", None, lo=1)
    return None if days is None else days * _DAY


def compile_lists(lists: Section, consent: Section, sectors: Section, tz: ZoneInfo) -> ListRules:
    ages = {str(name): _age(lists, str(name)) for name in lists.data if name != "default"}
    default = _age(lists, "default") if lists.has("default") else None
    consent.only(["required_from", "contract_exempts"])
    given = consent.raw("required_from", None)
    start = date.max if given is None else as_date(given)
    if start is None:
        raise consent.error("required_from", f"expected an ISO date like 2026-08-11 or null, got {given!r}")
    # The date is a legal date in metropolitan France: midnight Paris time (or the pack's default zone).
    start_ts = datetime.combine(start, time(0), tz).timestamp() if start != date.max else float("inf")
    sectors.only(["banned"])
    return ListRules(
        ages,
        default,
        start_ts,
        start,
        consent.bool("contract_exempts", True),
        frozenset(sectors.str_list("banned", ())),
    )


class Lookups:
    """Per-decision memo of store reads (contract and consent are asked at most once per decision)."""

    __slots__ = ("_consent", "_contract", "account", "at", "number", "store")

    def __init__(self, store: Store, account: str, number: str, at: float):
        self.store, self.account, self.number, self.at = store, account, number, at
        self._contract: bool | None = None
        self._consent: ConsentRecord | bool | None = False  # False: not asked yet

    def contract(self) -> bool:
        if self._contract is None:
            self._contract = bool(self.store.has_contract(self.account, self.number, self.at))
        return self._contract

    def consent(self) -> ConsentRecord | None:
        if self._consent is False:
            self._consent = self.store.consent_for(self.account, self.number, self.at)
        return self._consent  # type: ignore[return-value]

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
        max_age = rules.max_age_s.get(name, rules.default_max_age_s)
        if max_age is not None and at - info.imported_at > max_age:
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
        max_age = rules.max_age_for(name)
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
        elif rules.contract_exempts and look.contract():
            out[rule] = Outcome(PASS, f"{look.number} is on {name!r} but has a contract in progress")
        else:
            out[rule] = Outcome(FAIL, f"{look.number} is on do-not-call list {name!r}")
            first = first or rule
    return first


_NO_SECTOR = Outcome(SKIP, "no sector on this trunk")
_NOT_PROSPECTING = Outcome(SKIP, "trunk is not prospecting")


def check_sector(
    rules: ListRules, sector: str | None, prospecting: bool, look: Lookups, out: dict[str, Outcome]
) -> str:
    """The ban concerns prospecting in the sector; a contract in progress is the only way through."""
    if sector is None:
        out[SECTOR_RULE] = _NO_SECTOR
        return ""
    if not prospecting:
        out[SECTOR_RULE] = _NOT_PROSPECTING
        return ""
    if sector not in rules.banned_sectors:
        out[SECTOR_RULE] = Outcome(PASS, f"sector {sector!r} is not banned")
        return ""
    if look.contract():
        out[SECTOR_RULE] = Outcome(PASS, f"sector {sector!r} is banned but a contract is in progress")
        return ""
    out[SECTOR_RULE] = Outcome(
        FAIL, f"prospecting in sector {sector!r} is banned without a contract in progress"
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
        out[CONSENT_RULE] = Outcome(PASS, "no consent but a contract is in progress")
        return ""
    out[CONSENT_RULE] = Outcome(FAIL, f"no consent recorded for {look.number} by account {look.account!r}")
    return CONSENT_RULE
