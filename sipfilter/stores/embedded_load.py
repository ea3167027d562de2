"""The embedded store's in-memory copy read from SQLite: the whole copy at start, and the rows the change log
names since a position. Reads only, inside the caller's connection; the store (embedded.py) decides when.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from sipfilter.stores.base import ConsentRecord
from sipfilter.stores.embedded_records import Attempts, Consents, Key, Records, Span, refusals_value, span
from sipfilter.stores.embedded_sql import reading


def change_seq(db: sqlite3.Connection) -> int:
    """The change log's latest entry: the position a copy read now is at."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='changes'").fetchone()
    return int(row[0]) if row else 0


def read_all(db: sqlite3.Connection, attempts: Attempts | None = None,
             keeps: Callable[[str], bool] | None = None) -> tuple[Records, int]:
    """Every consent, contract, refusal and opposition in force, and the attempts (unless `attempts`, the
    ones already in memory, are given: kept as they are), of the numbers `keeps` accepts (all when it is
    None), read in one read transaction so that the copy and the change log position returned with it
    agree."""
    records = Records(complete=True, keeps=keeps)
    kept: Callable[[str], bool] = records.holds_all_of
    with reading(db):
        seen = change_seq(db)
        # Millions of rows under the opt-in regime: one record per number, not a tuple of one, and the
        # account, proof and hours texts shared (SQLite hands out new strings for every row).
        consents: dict[Key, Consents] = {}
        shared: dict[str, str] = {}
        for account, number, granted, proof, revoked, hours, zone in db.execute(
                "SELECT account, number, granted_at, proof, revoked_at, hours, time_zone FROM consents"
                " WHERE undone_at IS NULL ORDER BY id"):
            if not kept(number):
                continue
            account = shared.setdefault(account, account)
            proof = shared.setdefault(proof, proof)
            if hours is not None:
                hours = shared.setdefault(hours, hours)
            if zone is not None:
                zone = shared.setdefault(zone, zone)
            key = (account, number)
            record = ConsentRecord(account, number, granted, proof, revoked, hours, zone)
            before = consents.get(key)
            if before is None:
                consents[key] = record
            else:
                consents[key] = (*before, record) if isinstance(before, tuple) else (before, record)
        records.consents = consents
        contracts: dict[Key, list[Span]] = {}
        for account, number, started, ended, scope, reference in db.execute(
                "SELECT account, number, started_at, ended_at, scope, reference FROM contracts"
                " ORDER BY id"):
            if kept(number):
                reference = shared.setdefault(reference, reference)
                contracts.setdefault((account, number), []).append(span(started, ended, scope, reference))
        records.contracts = {k: tuple(v) for k, v in contracts.items()}
        refusals: dict[Key, list[float]] = {}
        for account, number, at in db.execute("SELECT account, number, at FROM refusal_log"
                                              " WHERE undone_at IS NULL ORDER BY account, number, at"):
            if kept(number):
                refusals.setdefault((account, number), []).append(at)
        records.refusals = {k: refusals_value(v) for k, v in refusals.items()}
        records.oppositions = {(account, number): at for account, number, at in db.execute(
            "SELECT account, number, min(at) FROM oppositions WHERE undone_at IS NULL"
            " GROUP BY account, number") if kept(number)}
        if attempts is not None:
            records.attempts = attempts
        else:
            for account, number, at in db.execute("SELECT account, number, at FROM attempts"
                                                  " ORDER BY account, number, at"):  # no sort: the index's
                if kept(number):
                    records.attempts.add(account, number, at)
    return records, seen


def apply_changes(db: sqlite3.Connection, records: Records, seen: int,
                  log_rows: list[tuple[int, str, str, str]]) -> int:
    """Re-read into `records`, in the caller's read transaction, the rows of every key that the change log
    entries `log_rows` (read after position `seen`, ascending) name. Returns the new position."""
    lo, hi = seen, log_rows[-1][0]
    keys: dict[str, set[Key]] = {kind: set() for kind in ("consent", "contract", "refusal", "opposition")}
    for _, kind, account, number in log_rows:
        keys.setdefault(kind, set()).add((account, number))
    named = "(account, number) IN (SELECT account, number FROM changes WHERE kind=? AND seq>? AND seq<=?)"
    if keys["consent"]:
        records.replace_consents(keys["consent"], (ConsentRecord(*row) for row in db.execute(
            "SELECT account, number, granted_at, proof, revoked_at, hours, time_zone FROM consents WHERE "
            "undone_at IS NULL AND " + named + " ORDER BY id", ("consent", lo, hi))))
    if keys["contract"]:
        records.replace_contracts(keys["contract"], db.execute(
            "SELECT account, number, started_at, ended_at, scope, reference FROM contracts WHERE " + named
            + " ORDER BY id", ("contract", lo, hi)))
    if keys["refusal"]:
        records.replace_refusals(keys["refusal"], db.execute(
            "SELECT account, number, at FROM refusal_log WHERE undone_at IS NULL AND " + named
            + " ORDER BY at", ("refusal", lo, hi)))
    if keys["opposition"]:
        records.replace_oppositions(keys["opposition"], db.execute(
            "SELECT account, number, min(at) FROM oppositions WHERE undone_at IS NULL AND " + named
            + " GROUP BY account, number", ("opposition", lo, hi)))
    return hi
