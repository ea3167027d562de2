"""What the call path asks a store, answered from this process's memory: list lookups (both backends), and
the embedded store's consents, contracts, objections and attempt counts. Compiled with the call path
(sipfilter.compiled): each call makes about a dozen of these reads.

The backends subclass these classes (interpreted): they load and swap what is read here, and answer an
incomplete copy's misses (the CLI's one-shot handles) from SQLite through the `_read_*` methods.
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
    an incomplete copy's misses."""

    health: Health
    _records: Records
    # Attempts recorded in memory, not yet handed to the writer thread, oldest first.
    _pending: list[tuple[str, str, float]]
    _flush_scheduled: object | None  # the event loop's handle of the next hand-off, while one is due
    _flush_failed: bool
    _max_window: float  # the longest frequency window asked for: the prune keeps what it needs
    _latest: float  # the latest attempt time recorded: the prune never cuts relative to a later "now"
    # One of several workers (sipfilter/workers) keeps in memory only the attempts of the callees it owns:
    # the one deciding calls to them. A miss on another callee is read from SQLite (see keeps_attempts_of).
    _attempt_worker: int = 0
    _attempt_workers: int = 1

    def keeps_attempts_of(self, number: str) -> bool:
        """Whether this copy loaded every attempt to `number` (so a miss means none): always, but in a worker,
        which keeps those of the callees it owns. Another worker's callee is one whose Request-URI spelling
        routes elsewhere than its key: rare, and read from SQLite, so the count stays exact."""
        workers = self._attempt_workers
        return workers <= 1 or number_owner(number, workers) == self._attempt_worker

    # --- consents and contracts -----------------------------------------------------------------------
    def consent_for(self, account: str, number: str, at: float) -> ConsentRecord | None:
        key = (account, number)
        records = self._records
        rows = records.consents.get(key)
        if rows is None:
            if records.complete:
                return None
            rows = self._read_consents(key)
        found = consent_in_force(rows, at)
        if found is None:
            return None
        return usable(found, self._refusals_of(key), self._opposition_of(key), at)

    def has_contract(self, account: str, number: str, at: float, purpose: str | None = None) -> bool:
        spans = self._records.contracts.get((account, number))
        if spans is None:
            if self._records.complete:
                return False
            spans = self._read_contracts((account, number))
        return contract_in_force(spans, at, purpose)

    def contract_for(self, account: str, number: str, at: float,
                     purpose: str | None = None) -> ContractRecord | None:  # fmt: skip
        spans = self._records.contracts.get((account, number))
        if spans is None:
            if self._records.complete:
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
        if value is None and not self._records.complete and key not in refusals:
            value = self._read_refusals(key)
        return value

    def _opposition_of(self, key: Key) -> float | None:
        oppositions = self._records.oppositions
        since = oppositions.get(key)
        if since is None and not self._records.complete and key not in oppositions:
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
        if times is None and not (records.complete and self.keeps_attempts_of(number)):
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
        """An incomplete copy's miss: read the key's rows (and keep them until a change to them is seen)."""
        raise NotImplementedError

    def _read_contracts(self, key: Key) -> tuple[Span, ...]:
        raise NotImplementedError

    def _read_refusals(self, key: Key) -> Refusals | None:
        raise NotImplementedError

    def _read_opposition(self, key: Key) -> float | None:
        raise NotImplementedError

    def _read_attempts(self, key: Key) -> None:
        raise NotImplementedError
