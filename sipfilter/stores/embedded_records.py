"""The embedded store's in-memory copy of its per-(account, number) rows (consents, contracts, refusals,
oppositions, attempts), with the pure lookups of the call path. No SQL, no clock, no asyncio: embedded.py
fills it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from sipfilter.stores.base import ConsentRecord

Key = tuple[str, str]  # (account, number)
# A contract: (started_at, ended_at, scope, reference).
Span = tuple[float, "float | None", "frozenset[str]", str]
# A number's consents: the record itself when there is one (nearly always: no tuple to keep), else a tuple.
Consents = ConsentRecord | tuple[ConsentRecord, ...]
# A number's refusals in force (not undone): one time, or ascending times when there are several.
Refusals = float | tuple[float, ...]
V = TypeVar("V")


class Records:
    """Rows by (account, number), in insertion (id) order; attempt times sorted ascending.

    `complete`: every row of the numbers `keeps` accepts (all of them when it is None) is here, so a missing
    key of such a number means "no rows". Any other key (the CLI's short-lived handles; a worker's copy for
    another worker's callees) is read from SQLite on demand, and a missing key means "not read yet". A known
    refusal-free (opposition-free) key read that way is stored as None. Undone records are not kept: they
    never count."""

    __slots__ = ("attempts", "complete", "consents", "contracts", "keeps", "oppositions", "refusals")

    def __init__(self, complete: bool, keeps: Callable[[str], bool] | None = None):
        self.complete = complete
        self.keeps = keeps
        self.consents: dict[Key, Consents] = {}
        self.contracts: dict[Key, tuple[Span, ...]] = {}
        self.refusals: dict[Key, Refusals | None] = {}
        self.oppositions: dict[Key, float | None] = {}  # the earliest opposition in force
        self.attempts = Attempts()

    def holds_all_of(self, number: str) -> bool:
        """Whether every row of `number` is here (a missing key means none)."""
        keeps = self.keeps
        return self.complete and (keeps is None or keeps(number))

    def clear_records(self) -> None:
        """Forget consents, contracts and objections (attempts are only ever written by this process)."""
        self.consents, self.contracts, self.refusals, self.oppositions = {}, {}, {}, {}

    def replace_consents(self, keys: Iterable[Key], rows: Iterable[ConsentRecord]) -> None:
        """The current rows of `keys` (rows in id order); keys without rows are known to have none."""
        grouped: dict[Key, list[ConsentRecord]] = {}
        for r in rows:
            grouped.setdefault((r.account, r.number), []).append(r)
        self._replace(self.consents, keys, {k: consents_value(v) for k, v in grouped.items()})

    def replace_contracts(self, keys: Iterable[Key],
                          rows: Iterable[tuple[str, str, float, float | None, str | None, str]]) -> None:
        grouped: dict[Key, list[Span]] = {}
        for account, number, started, ended, scope, reference in rows:
            grouped.setdefault((account, number), []).append(span(started, ended, scope, reference))
        self._replace(self.contracts, keys, {k: tuple(v) for k, v in grouped.items()})

    def replace_refusals(self, keys: Iterable[Key], rows: Iterable[tuple[str, str, float]]) -> None:
        """The refusals in force of `keys`, from rows in ascending time order."""
        grouped: dict[Key, list[float]] = {}
        for account, number, at in rows:
            grouped.setdefault((account, number), []).append(at)
        self._replace_times(self.refusals, keys, {k: refusals_value(v) for k, v in grouped.items()})

    def replace_oppositions(self, keys: Iterable[Key], rows: Iterable[tuple[str, str, float]]) -> None:
        """The earliest opposition in force of `keys` (rows: account, number, min(at))."""
        self._replace_times(self.oppositions, keys, {(a, n): at for a, n, at in rows})

    def _replace_times(self, table: dict[Key, V | None], keys: Iterable[Key], found: dict[Key, V]) -> None:
        for key in keys:
            if self.holds_all_of(key[1]):
                if key in found:
                    table[key] = found[key]
                else:
                    table.pop(key, None)
            elif key in table:  # read on demand: refreshed, never added
                table[key] = found.get(key)

    def _replace(self, table: dict[Key, V | tuple[()]], keys: Iterable[Key], found: dict[Key, V]) -> None:
        for key in keys:
            rows = found.get(key)
            if self.holds_all_of(key[1]):
                if rows:
                    table[key] = rows
                else:
                    table.pop(key, None)  # a complete copy keeps no empty entries (memory)
            elif key in table:  # read on demand: refreshed, never added
                table[key] = rows or ()


class Attempts:
    """Attempt times by account, then number: one float for a callee called once in the window (nearly all of
    them), a list sorted ascending for more. This table grows with every relayed call for the whole window
    (30 days): ~130 bytes a callee, where (account, number) tuples to lists cost ~310.

    An incomplete copy (CLI handles) stores [] for a number read from SQLite with no attempts."""

    __slots__ = ("_by_account",)

    def __init__(self) -> None:
        self._by_account: dict[str, dict[str, float | list[float]]] = {}

    def of(self, account: str) -> dict[str, float | list[float]]:
        """The account's number → times table (created empty): the call path works on it directly."""
        table = self._by_account.get(account)
        if table is None:
            table = self._by_account[account] = {}
        return table

    def __getitem__(self, key: Key) -> list[float]:
        """A copy of the times of (account, number); KeyError when none are known."""
        value = self._by_account.get(key[0], {})[key[1]]
        return list(value) if isinstance(value, list) else [value]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 2 and key[1] in self._by_account.get(key[0], {})

    def __len__(self) -> int:
        return sum(len(table) for table in self._by_account.values())

    def __iter__(self) -> Iterator[Key]:
        return ((account, number) for account, table in self._by_account.items() for number in table)

    def set(self, account: str, number: str, times: list[float]) -> None:
        """Replace the times of (account, number) (ascending) with what SQLite holds."""
        self.of(account)[number] = times[0] if len(times) == 1 else times

    def add(self, account: str, number: str, at: float) -> None:
        """One more attempt (loading rows in order, or recording one)."""
        add_time(self.of(account), number, at)

    def prune(self, keys: Iterable[Key], cutoff: float) -> int:
        """Drop attempts older than `cutoff` (as the SQLite prune does: `at < cutoff`); returns how many."""
        dropped = 0
        by_account = self._by_account
        for account, number in keys:
            table = by_account.get(account)
            value = None if table is None else table.get(number)
            if table is None or value is None:
                continue
            if not isinstance(value, list):
                if value < cutoff:
                    del table[number]
                    dropped += 1
                continue
            if not value or value[0] >= cutoff:
                continue
            n = bisect_left(value, cutoff)
            del value[:n]
            dropped += n
            if not value:
                del table[number]
            elif len(value) == 1:
                table[number] = value[0]
        return dropped


def count_after(value: float | list[float], since: float) -> int:
    """How many of the times are strictly after `since` (as the SQL `at > ?` counts)."""
    if not isinstance(value, list):
        return 1 if value > since else 0
    n = len(value)
    if n and value[0] <= since:
        n -= bisect_right(value, since)
    return n


def add_time(table: dict[str, float | list[float]], number: str, at: float) -> None:
    """Add one time to a number of an account's table, keeping its times sorted (the clock may go back)."""
    value = table.get(number)
    if value is None:
        table[number] = at
    elif not isinstance(value, list):
        table[number] = [value, at] if value <= at else [at, value]
    elif not value or value[-1] <= at:
        value.append(at)
    else:
        insort(value, at)


def consents_value(rows: list[ConsentRecord]) -> Consents:
    """What the table keeps for a number's rows (in id order)."""
    return rows[0] if len(rows) == 1 else tuple(rows)


def consent_in_force(rows: Consents, at: float) -> ConsentRecord | None:
    """The latest grant at or before `at`, not revoked at `at`; among equal grant times the last recorded (as
    the SQLite query `ORDER BY granted_at DESC` over its index answered)."""
    if isinstance(rows, ConsentRecord):  # the usual case, without the loop
        return rows if rows.granted_at <= at and (rows.revoked_at is None or rows.revoked_at > at) else None
    best: ConsentRecord | None = None
    for r in rows:
        if r.granted_at <= at and (r.revoked_at is None or r.revoked_at > at) and (
                best is None or r.granted_at >= best.granted_at):
            best = r
    return best


_NO_SCOPE: frozenset[str] = frozenset()


def span(started: float, ended: float | None, scope: str | None, reference: str) -> Span:
    """A contract row as the call path keeps it (its scope column: purposes separated by spaces)."""
    return (started, ended, frozenset(scope.split()) if scope else _NO_SCOPE, reference)


def contract_in_force(spans: tuple[Span, ...], at: float, purpose: str | None = None) -> bool:
    """A contract in force at `at`, whose scope names `purpose` when one is given."""
    return any(
        started <= at and (ended is None or ended > at) and (purpose is None or purpose in scope)
        for started, ended, scope, _ in spans
    )


def contract_at(spans: tuple[Span, ...], at: float, purpose: str | None = None) -> Span | None:
    """The contract in force at `at` (whose scope names `purpose` when one is given) that started last."""
    best: Span | None = None
    for found in spans:
        started, ended, scope, _ = found
        if started <= at and (ended is None or ended > at) and (purpose is None or purpose in scope) and (
                best is None or started >= best[0]):  # fmt: skip
            best = found
    return best


def refusals_value(times: list[float]) -> Refusals:
    """What the table keeps for a number's refusal times (ascending)."""
    return times[0] if len(times) == 1 else tuple(times)


def latest_refusal(value: Refusals | None) -> float | None:
    return value[-1] if isinstance(value, tuple) else value
