"""Recording what a consumer said (refusal, permanent opposition), consents, contracts and the undoing of
mistaken records, the same way from the CLI, the admin API and the dialer: checks the account and the times,
writes the store, and returns the audit line that proves it (the caller appends it to the audit log).

No I/O of its own beyond the store; never on the INVITE path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sipfilter.audit import iso_ms
from sipfilter.stores.base import ConsentRecord, ContractRecord
from sipfilter.stores.history import Objection
from sipfilter.stores.writable import StoreError, WritableStore

# A refusal or an opposition is said now or in the past; this much ahead covers clocks that disagree.
CLOCK_SKEW_S = 300.0
MAX_REASON = 500
LAST_TIME = 253402300800.0  # 10000-01-01T00:00:00Z: what ISO-8601 and the audit log can write

Event = dict[str, Any]


class RecordError(StoreError):
    """A record the caller asked for cannot be made as given (unknown account, time, missing reason)."""


def accounts_of(config: Any) -> list[str]:
    """The professional accounts the config's trunks use (records for any other account block nothing)."""
    return sorted({t.account for t in config.trunks.values()})


def check_account(account: str, known: Collection[str]) -> str:
    if account not in known:
        raise RecordError(f"unknown account {account!r}: no trunk uses it (accounts: "
                          f"{', '.join(sorted(known)) or 'none'})")
    return account


def check_time(at: float, what: str, now: float | None = None, *, past_only: bool = True) -> float:
    """A finite epoch time; with `past_only`, not later than now (+ CLOCK_SKEW_S): a consumer's words are
    recorded after they are said."""
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        raise RecordError(f"{what}: expected a finite time, got {at!r}")
    if not 0 <= at < LAST_TIME:
        raise RecordError(f"{what}: {at!r} is not a time between 1970 and 9999")
    now = time.time() if now is None else now
    if past_only and at > now + CLOCK_SKEW_S:
        raise RecordError(f"{what}: {iso_ms(at)} is in the future (now {iso_ms(now)})")
    return float(at)


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise RecordError("reason: required (why the record was a mistake; it goes to the audit log)")
    if len(reason) > MAX_REASON:
        raise RecordError(f"reason: at most {MAX_REASON} characters")
    return reason.strip()


def event(kind: str, account: str, number: str, source: str, **details: Any) -> Event:
    """An audit line for a record: `event` names it, `to` the consumer (as on decision lines)."""
    return {"time": iso_ms(time.time()), "event": kind, "account": account, "to": number, "source": source,
            **details}


def _times(values: Iterable[float]) -> list[str]:
    return [iso_ms(t) for t in values]


async def refuse(store: WritableStore, account: str, number: str, at: float, source: str) -> Event:
    """The consumer refused during a call: cooldown, and the end of the consents given before."""
    at = check_time(at, "at")
    await store.record_refusal(account, number, at, source)
    return event("refusal", account, number, source, at=iso_ms(at))


async def oppose(store: WritableStore, account: str, number: str, at: float, source: str) -> Event:
    """The consumer said "never call me again": every call from `account` is refused from `at` on."""
    at = check_time(at, "at")
    await store.add_opposition(account, number, at, source)
    return event("opposition", account, number, source, at=iso_ms(at))


async def undo_refusal(store: WritableStore, account: str, number: str, at: float | None, reason: Any,
                       source: str) -> tuple[tuple[Objection, ...], Event | None]:
    reason = check_reason(reason)
    if at is not None:
        at = check_time(at, "at", past_only=False)
    undone = await store.undo_refusal(account, number, at, reason, time.time())
    return undone, _undo_event("refusal.undo", account, number, source, reason,
                               refusals=_times(r.at for r in undone)) if undone else None


async def undo_opposition(store: WritableStore, account: str, number: str, reason: Any,
                          source: str) -> tuple[tuple[Objection, ...], Event | None]:
    reason = check_reason(reason)
    undone = await store.undo_opposition(account, number, reason, time.time())
    return undone, _undo_event("opposition.undo", account, number, source, reason,
                               oppositions=_times(o.at for o in undone)) if undone else None


async def undo_consent(store: WritableStore, account: str, number: str, proof: str | None,
                       granted_at: float | None, reason: Any,
                       source: str) -> tuple[tuple[ConsentRecord, ...], Event | None]:
    reason = check_reason(reason)
    if granted_at is not None:
        granted_at = check_time(granted_at, "granted_at", past_only=False)
    undone = await store.undo_consent(account, number, proof, granted_at, reason, time.time())
    consents = [{"proof": c.proof, "granted_at": iso_ms(c.granted_at)} for c in undone]
    return undone, _undo_event("consent.undo", account, number, source, reason,
                               consents=consents) if undone else None


def _undo_event(kind: str, account: str, number: str, source: str, reason: str, **what: Any) -> Event:
    return event(kind, account, number, source, reason=reason, **what)


async def add_consent(store: WritableStore, record: ConsentRecord, source: str) -> Event:
    check_time(record.granted_at, "granted_at", past_only=False)
    await store.add_consent(record)
    return event("consent", record.account, record.number, source, proof=record.proof,
                 granted_at=iso_ms(record.granted_at), hours=record.hours, time_zone=record.time_zone)


async def revoke_consent(store: WritableStore, account: str, number: str, at: float,
                         source: str) -> tuple[int, Event | None]:
    at = check_time(at, "at", past_only=False)
    n = await store.revoke_consent(account, number, at)
    return n, event("consent.revoke", account, number, source, at=iso_ms(at), revoked=n) if n else None


def import_event(account: str, source: str, file: str, count: int, bad: int) -> Event:
    """One line for a bulk consent import (the consents themselves are in the store)."""
    return {"time": iso_ms(time.time()), "event": "consent.import", "account": account, "source": source,
            "file": file, "consents": count, "bad_lines": bad}


async def add_contract(store: WritableStore, record: ContractRecord, source: str) -> Event:
    check_time(record.started_at, "started_at", past_only=False)
    if record.ended_at is not None:
        check_time(record.ended_at, "ended_at", past_only=False)
    await store.add_contract(record)
    return event("contract", record.account, record.number, source, reference=record.reference,
                 started_at=iso_ms(record.started_at),
                 ended_at=None if record.ended_at is None else iso_ms(record.ended_at),
                 scope=list(record.scope))


async def end_contract(store: WritableStore, account: str, number: str, at: float,
                       source: str) -> tuple[int, Event | None]:
    at = check_time(at, "at", past_only=False)
    n = await store.end_contract(account, number, at)
    return n, event("contract.end", account, number, source, at=iso_ms(at), ended=n) if n else None


def objection_dicts(records: Sequence[Objection]) -> list[dict[str, Any]]:
    """Refusals or oppositions as JSON for the CLI and the API (epoch and ISO-8601 times)."""
    return [{"at": r.at, "at_iso": iso_ms(r.at), "source": r.source, "recorded_at": r.recorded_at,
             "undone_at": r.undone_at, "undo_reason": r.undo_reason or None} for r in records]
