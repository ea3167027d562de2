"""What the call path asks a store, answered from this process's memory: list lookups (both backends), and
the embedded store's consents, contracts, objections and attempt counts. Compiled with the call path
(sipfilter.compiled): each call makes about a dozen of these reads.

The backends subclass these classes (interpreted): they load and swap what is read here, and answer from
SQLite, through the `_read_*` methods, the misses on keys a copy does not hold every row of (the CLI's
one-shot handles; a worker's copy for another worker's callees).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from types import MappingProxyType

from mypy_extensions import mypyc_attr

from sipfilter.stores.base import AttemptDecision, ConsentRecord, ContractRecord, ListInfo
from sipfilter.stores.embedded_records import (
    Consents,
    Key,
    Records,
    Refusals,
    Span,
    add_time,
    consent_in_force,
    contract_at,
    contract_in_force,
    count_after,
    latest_refusal,
)
from sipfilter.stores.history import usable
from sipfilter.stores.numberset import NumberSet
from sipfilter.stores.writable import Health
from sipfilter.workers.routing import number_owner

MAX_PENDING = 100_000  # attempts kept in memory while SQLite refuses writes, before calls get on_store_error


@mypyc_attr(allow_interpreted_subclasses=True)
class LocalLists:
    """The call path's list lookups, answered from this process's memory in both backends.

    A backend loads each list version into `_sets`/`_infos` and swaps the dicts whole, so readers never
    see a half-loaded list."""

    _sets: dict[str, NumberSet]
    _infos: dict[str, ListInfo]
    _versions_memo: tuple[dict[str, ListInfo], dict[tuple[str, ...], Mapping[str, int]]] | None = None

    def list_contains(self, list_name: str, number: str) -> bool:
        return number in self._sets[list_name]

    def list_info(self, list_name: str) -> ListInfo | None:
        return self._infos.get(list_name)

    def list_names(self) -> list[str]:
        return sorted(self._infos)

    def list_numbers(self, name: str) -> NumberSet:
        return self._sets[name]

    def list_versions(self, names: tuple[str, ...]) -> Mapping[str, int]:
        # On every call's audit line: memoised per `names` until the next swap of `_infos`.
        infos = self._infos
        memo = self._versions_memo
        if memo is None or memo[0] is not infos:
            memo = self._versions_memo = (infos, {})
        versions = memo[1].get(names)
        if versions is None:
            versions = memo[1][names] = MappingProxyType({n: infos[n].version for n in names if n in infos})
        return versions


@mypyc_attr(allow_interpreted_subclasses=True)
class EmbeddedCallPath(LocalLists):
    """The embedded store's call-path reads and its check-and-record of attempts, over `_records` (the
    in-memory copy of its rows). The store (embedded.py) fills `_records`, writes `_pending` behind and reads
    the misses on keys the copy does not hold every row of."""

    health: Health
    _records: Records
    # Attempts recorded in memory, not yet handed to the writer thread, oldest first.
    _pending: list[tuple[str, str, float]]
    _flush_scheduled: object | None  # the event loop's handle of the next hand-off, while one is due
    _flush_failed: bool
    _max_window: float  # the longest frequency window asked for: the prune keeps what it needs
    _latest: float  # the latest attempt time recorded: the prune never cuts relative to a later "now"
    # One of several workers (sipfilter/workers) keeps in memory only the rows of the callees it owns: the
    # one deciding calls to them. A miss on another callee is read from SQLite (see owns).
    _worker: int = 0
    _workers: int = 1
    _owns_number: str = ""  # the last number asked about, and the answer: a call asks up to five times
    _owns_answer: bool = True

    def owns(self, number: str) -> bool:
        """Whether this process decides new calls to `number` (the owner of `INVITE sip:<number>@…`):
        always, but in one of several workers. A worker's copy holds every row of the numbers it owns, so
        only their misses mean "none". Another worker's callee reaches this one when its Request-URI spelling
        routes elsewhere than its key: rare, and read from SQLite, so every answer stays exact."""
        workers = self._workers
        if workers <= 1:
            return True
        if number != self._owns_number:
            self._owns_answer = number_owner(number, workers) == self._worker
            self._owns_number = number
        return self._owns_answer

    # --- consents and contracts -----------------------------------------------------------------------
    def consent_for(self, account: str, number: str, at: float) -> ConsentRecord | None:
        key = (account, number)
        records = self._records
        rows = records.consents.get(key)
        if rows is None:
            if records.holds_all_of(number):
                return None
            rows = self._read_consents(key)
        found = consent_in_force(rows, at)
        if found is None:
            return None
        return usable(found, self._refusals_of(key), self._opposition_of(key), at)

    def has_contract(self, account: str, number: str, at: float, purpose: str | None = None) -> bool:
        spans = self._records.contracts.get((account, number))
        if spans is None:
            if self._records.holds_all_of(number):
                return False
            spans = self._read_contracts((account, number))
        return contract_in_force(spans, at, purpose)

    def contract_for(self, account: str, number: str, at: float,
                     purpose: str | None = None) -> ContractRecord | None:  # fmt: skip
        spans = self._records.contracts.get((account, number))
        if spans is None:
            if self._records.holds_all_of(number):
                return None
            spans = self._read_contracts((account, number))
        found = contract_at(spans, at, purpose)
        if found is None:
            return None
        started, ended, scope, reference = found
        return ContractRecord(account, number, started, ended, reference, tuple(sorted(scope)))

    # --- objections ---------------------------------------------------------------------------------
    def opposition_for(self, account: str, number: str, at: float) -> float | None:
        since = self._opposition_of((account, number))
        return since if since is not None and since <= at else None

    def _refusals_of(self, key: Key) -> Refusals | None:
        refusals = self._records.refusals
        value = refusals.get(key)
        if value is None and not self._records.holds_all_of(key[1]) and key not in refusals:
            value = self._read_refusals(key)
        return value

    def _opposition_of(self, key: Key) -> float | None:
        oppositions = self._records.oppositions
        since = oppositions.get(key)
        if since is None and not self._records.holds_all_of(key[1]) and key not in oppositions:
            since = self._read_opposition(key)
        return since

    # --- attempts: counted in memory, written behind --------------------------------------------------
    async def check_and_record_attempt(
        self, account: str, number: str, now: float, cap: int, window_s: float, refusal_cooldown_s: float
    ) -> AttemptDecision:
        # No await in here: check and record are atomic for this process, the only writer of attempts.
        if window_s > self._max_window:
            self._max_window = window_s
        key = (account, number)
        records = self._records
        refused_at = latest_refusal(self._refusals_of(key))
        table = records.attempts.of(account)
        times = table.get(number)
        if times is None and not self._records.holds_all_of(number):
            self._read_attempts(key)
            times = table.get(number)
        n = 0 if times is None else count_after(times, now - window_s)
        allowed = n < cap and (refused_at is None or refused_at <= now - refusal_cooldown_s)
        if allowed:
            if len(self._pending) >= MAX_PENDING:  # writes have failed for a long while: do not record blind
                raise self.health.failed(
                    sqlite3.OperationalError(f"{len(self._pending)} recorded attempts could not be written"),
                    "attempt",
                )
            if times is None:
                table[number] = now  # add_time's first case, inlined: nearly every relayed call
            else:
                add_time(table, number, now)
            if now > self._latest:
                self._latest = now
            n += 1
            self._pending.append((account, number, now))
            if self._flush_scheduled is None and not self._flush_failed:
                self._schedule_flush()
        return AttemptDecision(allowed, n, refused_at)

    # --- what the store provides ---------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        """Have the pending attempts written behind."""
        raise NotImplementedError

    def _read_consents(self, key: Key) -> Consents:
        """A miss on a key this copy does not hold every row of: read its rows (and keep them, refreshed by
        the change log like every key held)."""
        raise NotImplementedError

    def _read_contracts(self, key: Key) -> tuple[Span, ...]:
        raise NotImplementedError

    def _read_refusals(self, key: Key) -> Refusals | None:
        raise NotImplementedError

    def _read_opposition(self, key: Key) -> float | None:
        raise NotImplementedError

    def _read_attempts(self, key: Key) -> None:
        raise NotImplementedError
