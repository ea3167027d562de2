"""The embedded store: lists as Roaring bitmap files in the data directory, records and counters in SQLite.

For one sipfilter instance (the CLI may write at the same time: SQLite WAL + a change poll); not shared by
several instances (use Redis for that). The call path answers from memory and never waits on SQLite: lists as
bitmaps, consents/contracts/refusals/attempts as a copy of their rows (embedded_records) kept in step through
a change log the tables' triggers write; attempts are written behind, once per event-loop iteration.

Freshness: the proxy's own writes (admin API) answer at once; another process's (the CLI's) within
`poll_interval` (1 s by default), when the watcher sees PRAGMA data_version move and applies the change log.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sipfilter.stores.base import ConsentRecord, ContractRecord, ListInfo, StoreUnavailable
from sipfilter.stores.call_path import EmbeddedCallPath
from sipfilter.stores.embedded_load import apply_changes, change_seq, read_all
from sipfilter.stores.embedded_records import (
    Consents,
    Key,
    Records,
    Refusals,
    Span,
    refusals_value,
    span,
)
from sipfilter.stores.embedded_sql import (
    INSERT_CHUNK,
    SCHEMA,
    connect,
    immediate,
    insert_attempts_sql,
    migrate,
    reading,
    write_atomically,
)
from sipfilter.stores.history import (
    History,
    Objection,
    UndoneConsent,
    consent_undo_targets,
    undo_targets,
)
from sipfilter.stores.importer import SourceInfo
from sipfilter.stores.numberset import NumberSet
from sipfilter.stores.writable import Health, StoreError, check_list_name, log, scope_text

DB_NAME = "sipfilter.sqlite"
LISTS_DIR = "lists"
PRUNE_EVERY_S = 600.0
FLUSH_INTERVAL_S = 0.05  # recorded attempts are written at most this long after the decision
CATCH_UP_CHUNK = 20_000  # change log entries applied between two event-loop iterations


class EmbeddedStore(EmbeddedCallPath):
    """See the module docstring. Open with `await EmbeddedStore.open(data_dir)`; `close()` when done."""

    def __init__(self, data_dir: Path, poll_interval: float = 1.0, busy_timeout_ms: int = 250,
                 flush_interval: float = FLUSH_INTERVAL_S):
        self.data_dir = Path(data_dir)
        self.poll_interval = poll_interval
        self.flush_interval = flush_interval
        self.health = Health(f"embedded store {self.data_dir}")
        (self.data_dir / LISTS_DIR).mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.data_dir / DB_NAME, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            # How long a write waits for another process's lock (the CLI's, briefly). The proxy keeps it
            # short: its own writes (admin API) run on the event loop; attempts are written off it.
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._db.executescript(SCHEMA)
            migrate(self._db)
            # Attempts are written by a thread of their own on a connection of its own: the event loop never
            # waits on a lock, an insert or a checkpoint for them (see _hand_off).
            self._writer_db = connect(self.data_dir / DB_NAME, busy_timeout_ms)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.data_dir / DB_NAME}: {exc}") from exc
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sipfilter-attempts")
        self._sets: dict[str, NumberSet] = {}
        self._infos: dict[str, ListInfo] = {}
        self._max_window = 0.0
        self._last_prune = 0.0
        self._applied_at_last_prune = 0  # the change log position pruned to at the next prune
        self._watcher: asyncio.Task[None] | None = None
        self._load_lock = asyncio.Lock()  # a slower load must never swap in an older snapshot
        self._catch_up_lock = asyncio.Lock()  # one reader of the change log at a time (_seen)
        self._records = Records(complete=False)
        self._seen = 0  # the last change log entry applied to _records
        self._data_version = 0
        # Attempts recorded in memory, not yet in SQLite (see _schedule_flush), and those being written.
        self._pending: list[tuple[str, str, float]] = []
        self._writing: list[tuple[str, str, float]] = []
        self._write_done: Future[None] | None = None
        self._flush_scheduled: asyncio.Handle | None = None
        self._flush_failed = False
        self._latest = 0.0  # the latest attempt time recorded: the prune never cuts relative to a later "now"

    @classmethod
    async def open(cls, data_dir: Path, *, watch: bool = True, poll_interval: float = 1.0,
                   busy_timeout_ms: int | None = None, preload: bool | None = None,
                   flush_interval: float = FLUSH_INTERVAL_S,
                   worker: tuple[int, int] = (0, 1)) -> EmbeddedStore:
        """`busy_timeout_ms`: 250 by default for a watching (proxy) instance, 10 s for the CLI (no watch).
        `preload` (default: `watch`): read every record into memory now, so the call path never reads SQLite;
        otherwise (the CLI's one-shot handles) each (account, number) is read on first use.
        `flush_interval`: how long recorded attempts may wait in memory (0: until the end of the event-loop
        iteration); a crash loses at most that much. `worker`: (index, count) of a worker process, which
        keeps in memory the records and attempts of its own callees only (see `owns`)."""
        store = cls(data_dir, poll_interval, busy_timeout_ms if busy_timeout_ms is not None else
                    (250 if watch else 10_000), flush_interval)
        store._worker, store._workers = worker
        try:
            store._others_committed()
            if watch if preload is None else preload:
                store._load_all()
                if watch:
                    with contextlib.suppress(sqlite3.Error):  # the CLI holds the lock: the watcher will
                        store._prune_changes(store._db, store._seen)  # (in memory: its log is not needed)
            else:
                with reading(store._db):
                    store._seen = change_seq(store._db)
        except sqlite3.Error as exc:
            store._writer.shutdown()
            store._writer_db.close()
            store._db.close()
            raise StoreUnavailable(f"cannot read {store.data_dir / DB_NAME}: {exc}") from exc
        await store._load_lists()
        store._remove_orphans()
        if watch:
            store._watcher = asyncio.get_running_loop().create_task(store._watch())
        return store

    # --- lists: loading (the read side is call_path.LocalLists) ------------------------------------
    async def _load_lists(self) -> None:
        """Load every list whose version changed; the old set answers until the new one is in memory."""
        async with self._load_lock:
            await self._load_lists_locked()

    async def _load_lists_locked(self) -> None:
        rows = self._db.execute("SELECT name, version, count, imported_at, source_name, source_size,"
                                " source_sha256, file FROM lists").fetchall()
        sets, infos = dict(self._sets), dict(self._infos)
        for name, version, count, imported_at, source_name, size, sha, file in rows:
            known = infos.get(name)
            if known is not None and known.version == version:
                continue
            try:
                data = await asyncio.to_thread((self.data_dir / LISTS_DIR / file).read_bytes)
            except FileNotFoundError:
                continue  # replaced again since we read the row: the next poll sees the newer one
            sets[name] = NumberSet.deserialize(data)
            infos[name] = ListInfo(name, version, count, imported_at, source_name, size, sha)
        names = {row[0] for row in rows}
        for gone in set(infos) - names:
            del infos[gone], sets[gone]
        # Swap the sets first: a name is only ever listed once its numbers are there.
        self._sets, self._infos = sets, infos

    def _remove_orphans(self, min_age_s: float = 3600.0) -> None:
        """List files no row points at (an import that died before its switch), once old enough."""
        with contextlib.suppress(sqlite3.Error):
            used = {row[0] for row in self._db.execute("SELECT file FROM lists")}
            now = time.time()
            for path in (self.data_dir / LISTS_DIR).iterdir():
                with contextlib.suppress(OSError):
                    if path.name not in used and now - path.stat().st_mtime > min_age_s:
                        path.unlink()

    async def refresh(self) -> None:
        try:
            await self._load_lists()
            self._others_committed()
            await self._catch_up()
        except (sqlite3.Error, OSError) as exc:
            raise self.health.failed(exc, "sync") from exc

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self._hand_off()  # retries attempts a failed write left pending
                await self._load_lists()
                if self._others_committed():
                    await self._catch_up()
                now = time.time()
                if now - self._last_prune > PRUNE_EVERY_S:
                    self._last_prune = now
                    await self._prune(now)
                if not self._flush_failed:
                    self.health.ok()
            except StoreUnavailable:
                pass  # health has it
            except (sqlite3.Error, OSError) as exc:
                self.health.failed(exc, "sync")
            except Exception:  # never let the watcher die: lists would silently freeze
                log.exception("embedded store watcher")

    async def _prune(self, now: float) -> None:
        """Attempts older than the longest window any trunk asked about, in SQLite and in memory (in chunks:
        millions of keys must not stall the event loop); and the change log already applied."""
        if self._max_window and self._latest:
            cutoff = min(now, self._latest) - self._max_window
            # In the writer thread, after the batch in flight (FIFO); pending ones that old go unwritten.
            self._pending = [row for row in self._pending if row[2] >= cutoff]
            await asyncio.wrap_future(self._writer.submit(self._delete_attempts_before, cutoff))
            keys = list(self._records.attempts)
            for start in range(0, len(keys), CATCH_UP_CHUNK):
                self._records.attempts.prune(keys[start : start + CATCH_UP_CHUNK], cutoff)
                await asyncio.sleep(0)
        if self._records.complete:
            async with self._catch_up_lock:
                # Other proxies on this data dir (sip.workers) apply the log a poll later than this one: prune
                # what this one had applied at the previous prune, long since applied by every poller.
                upto, self._applied_at_last_prune = self._applied_at_last_prune, self._seen
                done = self._writer.submit(self._prune_changes, self._writer_db, upto)
                await asyncio.wrap_future(done)

    # --- lists: write side ---------------------------------------------------------------------------
    async def put_list(self, name: str, numbers: NumberSet, source: SourceInfo,
                       imported_at: float | None = None) -> ListInfo:
        check_list_name(name)
        imported_at = time.time() if imported_at is None else imported_at
        data = numbers.serialize()
        db = self._db
        old: str | None = None
        try:
            # Three short steps, so the proxy's counters never wait on our file write for the write lock:
            # take a version number, write the file aside, then switch the row (the atomic moment).
            with self._tx():
                db.execute("INSERT INTO meta VALUES('list_seq', 1)"
                           " ON CONFLICT(key) DO UPDATE SET value=value+1")
                version = int(db.execute("SELECT value FROM meta WHERE key='list_seq'").fetchone()[0])
            file = f"{name}.v{version}.roaring"
            await asyncio.to_thread(write_atomically, self.data_dir / LISTS_DIR / file, data)
            with self._tx():
                row = db.execute("SELECT file, version FROM lists WHERE name=?", (name,)).fetchone()
                if row is not None and row[1] > version:
                    old = file  # a concurrent import switched to a newer version: ours is already stale
                else:
                    old = row[0] if row else None
                    db.execute("INSERT OR REPLACE INTO lists VALUES(?,?,?,?,?,?,?,?)",
                               (name, version, len(numbers), imported_at, source.name, source.size,
                                source.sha256, file))
                    db.execute("INSERT OR REPLACE INTO list_versions VALUES(?,?,?,?,?,?,?)",
                               (name, version, len(numbers), imported_at, source.name, source.size,
                                source.sha256))
        except (sqlite3.Error, OSError) as exc:
            raise self.health.failed(exc, "list_write") from exc
        if old:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / LISTS_DIR / old).unlink()
        await self._load_lists()
        return self._infos[name]

    async def delete_list(self, name: str) -> bool:
        self._flush()
        try:
            row = self._db.execute("DELETE FROM lists WHERE name=? RETURNING file", (name,)).fetchone()
        except sqlite3.Error as exc:
            raise self.health.failed(exc, "list_write") from exc
        if row is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / LISTS_DIR / row[0]).unlink()
        await self._load_lists()
        return True

    # --- consents and contracts (the call path reads them from memory: call_path.py, kept by _catch_up) --
    async def add_consent(self, record: ConsentRecord) -> None:
        self._write("INSERT INTO consents(account, number, granted_at, proof, revoked_at, hours, time_zone)"
                    " VALUES(?,?,?,?,?,?,?)", (record.account, record.number, record.granted_at, record.proof,
                                               record.revoked_at, record.hours, record.time_zone))
        await self._catch_up()

    async def add_consents(self, records: Sequence[ConsentRecord]) -> None:
        db = self._db
        rows = [(r.account, r.number, r.granted_at, r.proof, r.revoked_at, r.hours, r.time_zone)
                for r in records]
        try:
            for start in range(0, len(rows), 5000):  # short transactions: the proxy's writes interleave
                with self._tx():
                    db.executemany("INSERT INTO consents(account, number, granted_at, proof, revoked_at,"
                                   " hours, time_zone) VALUES(?,?,?,?,?,?,?)", rows[start : start + 5000])
                await asyncio.sleep(0)
        except sqlite3.Error as exc:
            raise self.health.failed(exc, "record_write") from exc
        finally:
            await self._catch_up()

    async def revoke_consent(self, account: str, number: str, at: float) -> int:
        n = self._write("UPDATE consents SET revoked_at=? WHERE account=? AND number=? AND granted_at<=?"
                        " AND (revoked_at IS NULL OR revoked_at>?)", (at, account, number, at, at))
        await self._catch_up()
        return n

    async def consents(self, account: str, number: str) -> tuple[ConsentRecord, ...]:
        rows = self._read("SELECT granted_at, proof, revoked_at, hours, time_zone FROM consents"
                          " WHERE account=? AND number=? AND undone_at IS NULL ORDER BY granted_at, id",
                          (account, number))  # fmt: skip
        return tuple(ConsentRecord(account, number, *row) for row in rows)

    async def undo_consent(self, account: str, number: str, proof: str | None, granted_at: float | None,
                           reason: str, undone_at: float) -> tuple[ConsentRecord, ...]:
        db = self._db
        try:
            with self._tx():
                rows = db.execute("SELECT id, granted_at, proof, revoked_at, hours, time_zone FROM consents"
                                  " WHERE"
                                  " account=? AND number=? AND undone_at IS NULL ORDER BY granted_at, id",
                                  (account, number)).fetchall()
                ids = {ConsentRecord(account, number, *row[1:]): row[0] for row in rows}
                undone = consent_undo_targets(ids, proof, granted_at)
                db.executemany("UPDATE consents SET undone_at=?, undo_reason=? WHERE id=?",
                               [(undone_at, reason, ids[r]) for r in undone])
        except sqlite3.Error as exc:
            raise self.health.failed(exc, "record_write") from exc
        await self._catch_up()
        return tuple(undone)

    async def add_contract(self, record: ContractRecord) -> None:
        self._write("INSERT INTO contracts(account, number, started_at, ended_at, reference, scope)"
                    " VALUES(?,?,?,?,?,?)",
                    (record.account, record.number, record.started_at, record.ended_at, record.reference,
                     scope_text(record.scope)))
        await self._catch_up()

    async def end_contract(self, account: str, number: str, at: float) -> int:
        n = self._write("UPDATE contracts SET ended_at=? WHERE account=? AND number=? AND started_at<=?"
                        " AND (ended_at IS NULL OR ended_at>?)", (at, account, number, at, at))
        await self._catch_up()
        return n

    async def contracts(self, account: str, number: str) -> tuple[ContractRecord, ...]:
        rows = self._read("SELECT started_at, ended_at, reference, scope FROM contracts WHERE account=? AND"
                          " number=? ORDER BY started_at, id", (account, number))
        return tuple(ContractRecord(account, number, started, ended, reference, tuple((scope or "").split()))
                     for started, ended, reference, scope in rows)

    # --- objections: refusals and oppositions ------------------------------------------------------------
    async def add_opposition(self, account: str, number: str, at: float, source: str = "") -> None:
        self._write("INSERT INTO oppositions(account, number, at, source, recorded_at) VALUES(?,?,?,?,?)",
                    (account, number, at, source, time.time()))
        await self._catch_up()

    async def undo_refusal(self, account: str, number: str, at: float | None, reason: str,
                           undone_at: float) -> tuple[Objection, ...]:
        return await self._undo_objection("refusal_log", account, number, at, reason, undone_at)

    async def undo_opposition(self, account: str, number: str, reason: str,
                              undone_at: float) -> tuple[Objection, ...]:
        return await self._undo_objection("oppositions", account, number, None, reason, undone_at,
                                          every=True)

    async def _undo_objection(self, table: str, account: str, number: str, at: float | None, reason: str,
                              undone_at: float, every: bool = False) -> tuple[Objection, ...]:
        db = self._db
        try:
            with self._tx():
                rows = db.execute(f"SELECT id, at, source, recorded_at FROM {table} WHERE account=? AND"
                                  " number=? AND undone_at IS NULL ORDER BY at, id",
                                  (account, number)).fetchall()
                times = set(undo_targets([row[1] for row in rows], at)) if not every else {r[1] for r in rows}
                chosen = [row for row in rows if row[1] in times]
                db.executemany(f"UPDATE {table} SET undone_at=?, undo_reason=? WHERE id=?",
                               [(undone_at, reason, row[0]) for row in chosen])
        except sqlite3.Error as exc:
            raise self.health.failed(exc, "record_write") from exc
        await self._catch_up()
        return tuple(Objection(account, number, row[1], row[2], row[3], undone_at, reason) for row in chosen)

    async def history(self, account: str, number: str) -> History:
        key = (account, number)
        consents, undone = [], []
        for *row, undone_at, undo_reason in self._read(
                "SELECT granted_at, proof, revoked_at, hours, time_zone, undone_at, undo_reason FROM consents"
                " WHERE account=? AND number=? ORDER BY granted_at, id", key):
            record = ConsentRecord(account, number, *row)
            if undone_at is None:
                consents.append(record)
            else:
                undone.append(UndoneConsent(record, undone_at, undo_reason or ""))
        objections = {table: tuple(Objection(account, number, *row) for row in self._read(
            f"SELECT at, source, recorded_at, undone_at, coalesce(undo_reason, '') FROM {table}"
            " WHERE account=? AND number=? ORDER BY at, id", key))
            for table in ("refusal_log", "oppositions")}
        return History(account, number, tuple(consents), tuple(undone), await self.contracts(account, number),
                       objections["refusal_log"], objections["oppositions"])

    async def list_history(self, name: str) -> tuple[ListInfo, ...]:
        rows = self._read("SELECT name, version, count, imported_at, source_name, source_size, source_sha256"
                          " FROM list_versions WHERE name=? ORDER BY version", (name,))
        return tuple(ListInfo(*row) for row in rows)

    def _write(self, sql: str, params: tuple[object, ...]) -> int:
        self._flush()
        try:
            return self._db.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise self.health.failed(exc, "record_write") from exc

    def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        self._flush()  # what another handle or process reads next includes our attempts
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self.health.failed(exc, "read") from exc

    # --- the in-memory copy: loading and catching up with other processes' writes ----------------------
    def _read_consents(self, key: Key) -> Consents:
        """A miss on a key this copy does not hold every row of: read its rows (and keep them, refreshed by
        the change log like every key held)."""
        rows = tuple(ConsentRecord(*key, *row) for row in self._read(
            "SELECT granted_at, proof, revoked_at, hours, time_zone FROM consents WHERE account=?"
            " AND number=? AND undone_at IS NULL ORDER BY id", key))
        self._records.consents[key] = rows
        return rows

    def _read_contracts(self, key: Key) -> tuple[Span, ...]:
        spans = tuple(span(*row) for row in self._read(
            "SELECT started_at, ended_at, scope, reference FROM contracts WHERE account=? AND number=?"
            " ORDER BY id",
            key))
        self._records.contracts[key] = spans
        return spans

    def _read_refusals(self, key: Key) -> Refusals | None:
        times = [float(row[0]) for row in self._read(
            "SELECT at FROM refusal_log WHERE account=? AND number=? AND undone_at IS NULL ORDER BY at", key)]
        value = refusals_value(times) if times else None
        self._records.refusals[key] = value
        return value

    def _read_opposition(self, key: Key) -> float | None:
        rows = self._read("SELECT min(at) FROM oppositions WHERE account=? AND number=?"
                          " AND undone_at IS NULL", key)
        since = float(rows[0][0]) if rows and rows[0][0] is not None else None
        self._records.oppositions[key] = since
        return since

    def _read_attempts(self, key: Key) -> None:
        q = [float(row[0]) for row in self._read(
            "SELECT at FROM attempts WHERE account=? AND number=? ORDER BY at", key)]
        self._records.attempts.set(key[0], key[1], q)

    def _load_all(self) -> None:
        """Read every consent, contract, refusal and attempt into memory (a proxy's open: the call path then
        never waits on SQLite). Attempts already in memory are kept: this process is their only writer, some
        are not written yet."""
        kept = self._records.attempts if self._records.complete else None
        self._records, self._seen = read_all(self._db, kept, self.owns if self._workers > 1 else None)

    async def _catch_up(self) -> None:
        """Apply the consent/contract/refusal rows changed since the last catch-up (the `changes` log that
        the tables' triggers write, whoever writes: this process, the CLI, an older sipfilter). Called after
        our own writes (so they answer at once) and, when PRAGMA data_version says another connection
        committed, by the watcher every poll_interval and by refresh(). Large imports go in chunks."""
        async with self._catch_up_lock:
            while True:
                try:
                    more = self._catch_up_chunk()
                except sqlite3.Error as exc:
                    raise self.health.failed(exc, "sync") from exc
                if not more:
                    return
                await asyncio.sleep(0)

    def _catch_up_chunk(self) -> bool:
        """Up to CATCH_UP_CHUNK log entries in one read transaction. True when there may be more."""
        db, records = self._db, self._records
        with reading(db):
            pruned = db.execute("SELECT value FROM meta WHERE key='changes_pruned_to'").fetchone()
            behind = pruned is not None and pruned[0] > self._seen
            if not behind:
                log_rows = db.execute("SELECT seq, kind, account, number FROM changes WHERE seq>?"
                                      " ORDER BY seq LIMIT ?", (self._seen, CATCH_UP_CHUNK)).fetchall()
                if not log_rows:
                    return False
                self._apply(log_rows)
                return len(log_rows) == CATCH_UP_CHUNK
        # Entries this handle never applied were pruned (it was idle for long): start again from the tables.
        if records.complete:
            self._load_all()
        else:
            records.clear_records()
            with reading(db):
                self._seen = change_seq(self._db)
        return False

    def _apply(self, log_rows: list[tuple[int, str, str, str]]) -> None:
        """Re-read, in the current read transaction, the rows of every key the log entries name."""
        self._seen = apply_changes(self._db, self._records, self._seen, log_rows)

    def _others_committed(self) -> bool:
        """True when another connection (the CLI, another handle) committed since the last call: one cheap
        PRAGMA, no table read."""
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        changed, self._data_version = version != self._data_version, version
        return changed

    @staticmethod
    def _prune_changes(db: sqlite3.Connection, seen: int) -> None:
        """The proxy has applied the log up to `seen`: drop it. A handle that had not read that far (an idle
        CLI handle) sees `changes_pruned_to` above its position and re-reads the tables instead."""
        with immediate(db):
            db.execute("DELETE FROM changes WHERE seq<=?", (seen,))
            db.execute("INSERT INTO meta VALUES('changes_pruned_to', ?) ON CONFLICT(key)"
                       " DO UPDATE SET value=max(value, excluded.value)", (seen,))

    # --- counters: counted in memory (call_path.py), written behind -----------------------------------
    def _schedule_flush(self) -> None:
        """Hand the attempts to the writer thread `flush_interval` later (or once the callbacks of the current
        event-loop iteration have run): the counters are exact in memory at once, one transaction serves
        every call of the interval, and a crash loses at most that interval's attempts. On the event loop, a
        COMMIT per call cost more than the whole decision, and the batched inserts (a few µs a row on
        random index pages) still evicted the caches the next decisions needed: p99 doubled.
        Without an event loop, write now."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush()
            return
        if self.flush_interval > 0:
            self._flush_scheduled = loop.call_later(self.flush_interval, self._hand_off)
        else:
            self._flush_scheduled = loop.call_soon(self._hand_off)

    def _hand_off(self) -> None:
        """Give the pending attempts to the writer thread (one batch in flight at a time)."""
        self._flush_scheduled = None
        if not self._pending or self._write_done is not None:
            return
        self._writing, self._pending = self._pending, []
        self._write_done = done = self._writer.submit(self._write_attempts, self._writing)
        loop = asyncio.get_running_loop()
        # The callback gets the future as its argument: closing over `done` would make a cycle per batch.
        done.add_done_callback(lambda d: loop.call_soon_threadsafe(self._written, d))

    def _written(self, done: Future[None]) -> None:
        """Back on the event loop: a batch is written, or failed and goes back to the pending ones."""
        if done is not self._write_done:
            return  # _flush already waited for it and took care of it
        self._write_done = None
        self._settle(done)
        if self._pending and not self._flush_failed and self._flush_scheduled is None:
            self._schedule_flush()

    def _settle(self, done: Future[None]) -> None:
        exc = done.exception()
        rows, self._writing = self._writing, []
        if exc is None:
            if self._flush_failed:
                self._flush_failed = False
                self.health.ok()
            return
        self._pending[:0] = rows  # retried by the watcher (or the next write), oldest first
        if not self._flush_failed:
            log.error("embedded store: writing %d recorded attempts failed (kept in memory, retried): %s",
                      len(rows), exc)
        self._flush_failed = True
        self.health.failed(exc, "attempt_write")

    def _write_attempts(self, rows: list[tuple[str, str, float]]) -> None:
        """In the writer thread: multi-row INSERTs, so the C code that does the inserts runs without the GIL
        for a whole chunk (executemany would take the GIL back for every row, behind a busy event loop)."""
        db = self._writer_db
        with immediate(db):
            for start in range(0, len(rows), INSERT_CHUNK):
                chunk = rows[start : start + INSERT_CHUNK]
                db.execute(insert_attempts_sql(len(chunk)), [value for row in chunk for value in row])

    def _delete_attempts_before(self, cutoff: float) -> None:
        self._writer_db.execute("DELETE FROM attempts WHERE at < ?", (cutoff,))

    def _flush(self) -> None:
        """Write every recorded attempt now (before any other use of the connection, and at close): waits
        for the batch in flight, then writes the rest on this thread. On failure they stay pending, retried by
        the watcher or the next write, and the store reports itself unhealthy."""
        if self._flush_scheduled is not None:
            self._flush_scheduled.cancel()
            self._flush_scheduled = None
        done = self._write_done
        if done is not None:
            self._write_done = None
            done.exception()  # waits for the batch in flight
            self._settle(done)
        if not self._pending:
            return
        # Through the writer thread too (its connection is only ever used there), waiting for it.
        self._writing, self._pending = self._pending, []
        done = self._writer.submit(self._write_attempts, self._writing)
        done.exception()
        self._settle(done)

    def _unwritten(self) -> int:
        """Attempts counted in memory and not yet in SQLite (pending or being written)."""
        return len(self._pending) + len(self._writing)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """A write transaction of its own (the pending attempts are written first)."""
        self._flush()
        with immediate(self._db):
            yield

    async def attempts(self, account: str, number: str, now: float, window_s: float) -> int:
        rows = self._read("SELECT count(*) FROM attempts WHERE account=? AND number=? AND at>?",
                          (account, number, now - window_s))
        return int(rows[0][0])

    async def record_refusal(self, account: str, number: str, at: float, source: str = "") -> None:
        self._write("INSERT INTO refusal_log(account, number, at, source, recorded_at) VALUES(?,?,?,?,?)",
                    (account, number, at, source, time.time()))
        await self._catch_up()

    async def last_refusal(self, account: str, number: str) -> float | None:
        rows = self._read("SELECT max(at) FROM refusal_log WHERE account=? AND number=?"
                          " AND undone_at IS NULL", (account, number))
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        self._flush()
        if self._pending:
            log.error("embedded store: %d recorded attempts could not be written before closing",
                      len(self._pending))
        self._writer.shutdown(wait=True)
        self._writer_db.close()
        self._db.close()


__all__ = ["EmbeddedStore", "StoreError"]
