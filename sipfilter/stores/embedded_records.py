"""The embedded store's in-memory copy of its per-(account, number) rows (consents, contracts, refusals,
attempts), with the pure lookups of the call path. No SQL, no clock, no asyncio: embedded.py fills it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import TypeVar

from sipfilter.stores.base import ConsentRecord

Key = tuple[str, str]  # (account, number)
Span = tuple[float, "float | None"]  # a contract: (started_at, ended_at)
T = TypeVar("T")


class Records:
    """Rows by (account, number), in insertion (id) order; attempt times sorted ascending.

    `complete`: every row of the tables is here, so a missing key means "no rows". Otherwise (the CLI's
    short-lived handles) a missing key means "not read yet" and the store reads it from SQLite on demand.
    A known refusal-free key of an incomplete copy is stored as None."""

    __slots__ = ("attempts", "complete", "consents", "contracts", "refusals")

    def __init__(self, complete: bool):
        self.complete = complete
        self.consents: dict[Key, tuple[ConsentRecord, ...]] = {}
        self.contracts: dict[Key, tuple[Span, ...]] = {}
        self.refusals: dict[Key, float | None] = {}
        self.attempts: dict[Key, list[float]] = {}

    def clear_records(self) -> None:
        """Forget consents, contracts and refusals (attempts are only ever written by this process)."""
        self.consents, self.contracts, self.refusals = {}, {}, {}

    def replace_consents(self, keys: Iterable[Key], rows: Iterable[ConsentRecord]) -> None:
        """The current rows of `keys` (rows in id order); keys without rows are known to have none."""
        grouped: dict[Key, list[ConsentRecord]] = {}
        for r in rows:
            grouped.setdefault((r.account, r.number), []).append(r)
        self._replace(self.consents, keys, {k: tuple(v) for k, v in grouped.items()})

    def replace_contracts(self, keys: Iterable[Key],
                          rows: Iterable[tuple[str, str, float, float | None]]) -> None:
        grouped: dict[Key, list[Span]] = {}
        for account, number, started, ended in rows:
            grouped.setdefault((account, number), []).append((started, ended))
        self._replace(self.contracts, keys, {k: tuple(v) for k, v in grouped.items()})

    def replace_refusals(self, keys: Iterable[Key], rows: Iterable[tuple[str, str, float]]) -> None:
        found = {(account, number): at for account, number, at in rows}
        for key in keys:
            if key in found:
                self.refusals[key] = found[key]
            elif self.complete:
                self.refusals.pop(key, None)
            elif key in self.refusals:
                self.refusals[key] = None

    def _replace(self, table: dict[Key, tuple[T, ...]], keys: Iterable[Key], found: dict[Key, tuple[T, ...]]
                 ) -> None:
        for key in keys:
            rows = found.get(key)
            if self.complete:
                if rows:
                    table[key] = rows
                else:
                    table.pop(key, None)  # a complete copy keeps no empty entries (memory)
            elif key in table:  # an incomplete copy only refreshes what it has read
                table[key] = rows or ()

    def prune_attempts(self, keys: Iterable[Key], cutoff: float) -> int:
        """Drop attempts older than `cutoff` (as the SQLite prune does: `at < cutoff`); returns how many."""
        dropped = 0
        attempts = self.attempts
        for key in keys:
            q = attempts.get(key)
            if q is None or not q or q[0] >= cutoff:
                continue
            n = bisect_left(q, cutoff)
            del q[:n]
            dropped += n
            if not q:
                del attempts[key]
        return dropped


def consent_in_force(rows: tuple[ConsentRecord, ...], at: float) -> ConsentRecord | None:
    """The latest grant at or before `at`, not revoked at `at`; among equal grant times the last recorded (as
    the SQLite query `ORDER BY granted_at DESC` over its index answered)."""
    best: ConsentRecord | None = None
    for r in rows:
        if r.granted_at <= at and (r.revoked_at is None or r.revoked_at > at) and (
                best is None or r.granted_at >= best.granted_at):
            best = r
    return best


def contract_in_force(spans: tuple[Span, ...], at: float) -> bool:
    return any(started <= at and (ended is None or ended > at) for started, ended in spans)
