"""The embedded store: lists as Roaring bitmap files in the data directory, records and counters in SQLite.

For one sipfilter instance (the CLI may write at the same time: SQLite WAL + a change poll); not shared by
several instances (use Redis for that). Lists answer from memory; a new version never shows half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sipfilter.stores.base import AttemptDecision, ConsentRecord, ListInfo, StoreUnavailable
from sipfilter.stores.importer import SourceInfo
from sipfilter.stores.numberset import NumberSet
from sipfilter.stores.writable import ContractRecord, Health, LocalLists, StoreError, check_list_name, log

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lists(name TEXT PRIMARY KEY, version INTEGER NOT NULL, count INTEGER NOT NULL,
    imported_at REAL NOT NULL, source_name TEXT NOT NULL, source_size INTEGER NOT NULL,
    source_sha256 TEXT NOT NULL, file TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS consents(id INTEGER PRIMARY KEY, account TEXT NOT NULL, number TEXT NOT NULL,
    granted_at REAL NOT NULL, proof TEXT NOT NULL, revoked_at REAL, hours TEXT);
CREATE INDEX IF NOT EXISTS consents_by_number ON consents(account, number, granted_at);
CREATE TABLE IF NOT EXISTS contracts(id INTEGER PRIMARY KEY, account TEXT NOT NULL, number TEXT NOT NULL,
    started_at REAL NOT NULL, ended_at REAL, reference TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS contracts_by_number ON contracts(account, number, started_at);
CREATE TABLE IF NOT EXISTS attempts(account TEXT NOT NULL, number TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS attempts_by_number ON attempts(account, number, at);
CREATE TABLE IF NOT EXISTS refusals(account TEXT NOT NULL, number TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY(account, number));
"""

DB_NAME = "sipfilter.sqlite"
LISTS_DIR = "lists"
PRUNE_EVERY_S = 600.0


class EmbeddedStore(LocalLists):
    """See the module docstring. Open with `await EmbeddedStore.open(data_dir)`; `close()` when done."""

    def __init__(self, data_dir: Path, poll_interval: float = 1.0, busy_timeout_ms: int = 250):
        self.data_dir = Path(data_dir)
        self.poll_interval = poll_interval
        self.health = Health(f"embedded store {self.data_dir}")
        (self.data_dir / LISTS_DIR).mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.data_dir / DB_NAME, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            # How long a write waits for another process's lock (the CLI's, briefly). The proxy keeps it
            # short: past it the call gets StoreUnavailable and on_store_error, not a stalled event loop.
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.data_dir / DB_NAME}: {exc}") from exc
        self._sets: dict[str, NumberSet] = {}
        self._infos: dict[str, ListInfo] = {}
        self._max_window = 0.0
        self._last_prune = 0.0
        self._watcher: asyncio.Task[None] | None = None
        self._load_lock = asyncio.Lock()  # a slower load must never swap in an older snapshot
        # Attempts of one event-loop iteration share one write transaction, committed by a call_soon
        # callback: the per-call COMMIT was most of the store's cost under load (see _open_batch).
        self._batch_open = False
        self._batch_deferred = False

    @classmethod
    async def open(cls, data_dir: Path, *, watch: bool = True, poll_interval: float = 1.0,
                   busy_timeout_ms: int | None = None) -> EmbeddedStore:
        """`busy_timeout_ms`: 250 by default for a watching (proxy) instance, 10 s for the CLI (no watch)."""
        store = cls(data_dir, poll_interval, busy_timeout_ms if busy_timeout_ms is not None else
                    (250 if watch else 10_000))
        await store._load_lists()
        store._remove_orphans()
        if watch:
            store._watcher = asyncio.get_running_loop().create_task(store._watch())
        return store

    # --- lists: loading (the read side is LocalLists) ---------------------------------------------
    async def _load_lists(self) -> None:
        """Load every list whose version changed; the old set answers until the new one is in memory."""
        async with self._load_lock:
            await self._load_lists_locked()

    async def _load_lists_locked(self) -> None:
        self._commit_batch()  # a fresh snapshot
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
        except (sqlite3.Error, OSError) as exc:
            raise self.health.failed(exc) from exc

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self._load_lists()
                now = time.time()
                if self._max_window and now - self._last_prune > PRUNE_EVERY_S:
                    self._last_prune = now
                    self._commit_batch()
                    self._db.execute("DELETE FROM attempts WHERE at < ?", (now - self._max_window,))
                self.health.ok()
            except (sqlite3.Error, OSError) as exc:
                self.health.failed(exc)
            except Exception:  # never let the watcher die: lists would silently freeze
                log.exception("embedded store watcher")

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
            await asyncio.to_thread(_write_atomically, self.data_dir / LISTS_DIR / file, data)
            with self._tx():
                row = db.execute("SELECT file, version FROM lists WHERE name=?", (name,)).fetchone()
                if row is not None and row[1] > version:
                    old = file  # a concurrent import switched to a newer version: ours is already stale
                else:
                    old = row[0] if row else None
                    db.execute("INSERT OR REPLACE INTO lists VALUES(?,?,?,?,?,?,?,?)",
                               (name, version, len(numbers), imported_at, source.name, source.size,
                                source.sha256, file))
        except (sqlite3.Error, OSError) as exc:
            raise self.health.failed(exc) from exc
        if old:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / LISTS_DIR / old).unlink()
        await self._load_lists()
        return self._infos[name]

    async def delete_list(self, name: str) -> bool:
        self._commit_batch()
        try:
            row = self._db.execute("DELETE FROM lists WHERE name=? RETURNING file", (name,)).fetchone()
        except sqlite3.Error as exc:
            raise self.health.failed(exc) from exc
        if row is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / LISTS_DIR / row[0]).unlink()
        await self._load_lists()
        return True

    # --- consents and contracts ------------------------------------------------------------------------
    def consent_for(self, account: str, number: str, at: float) -> ConsentRecord | None:
        try:
            row = self._db.execute(
                "SELECT granted_at, proof, revoked_at, hours FROM consents WHERE account=? AND number=?"
                " AND granted_at<=? AND (revoked_at IS NULL OR revoked_at>?)"
                " ORDER BY granted_at DESC LIMIT 1",
                (account, number, at, at)).fetchone()
        except sqlite3.Error as exc:
            raise self.health.failed(exc) from exc
        return None if row is None else ConsentRecord(account, number, row[0], row[1], row[2], row[3])

    def has_contract(self, account: str, number: str, at: float) -> bool:
        try:
            row = self._db.execute(
                "SELECT 1 FROM contracts WHERE account=? AND number=? AND started_at<=?"
                " AND (ended_at IS NULL OR ended_at>?) LIMIT 1", (account, number, at, at)).fetchone()
        except sqlite3.Error as exc:
            raise self.health.failed(exc) from exc
        return row is not None

    async def add_consent(self, record: ConsentRecord) -> None:
        self._write("INSERT INTO consents(account, number, granted_at, proof, revoked_at, hours)"
                    " VALUES(?,?,?,?,?,?)", (record.account, record.number, record.granted_at, record.proof,
                                             record.revoked_at, record.hours))

    async def add_consents(self, records: Sequence[ConsentRecord]) -> None:
        db = self._db
        rows = [(r.account, r.number, r.granted_at, r.proof, r.revoked_at, r.hours) for r in records]
        try:
            for start in range(0, len(rows), 5000):  # short transactions: the proxy's writes interleave
                with self._tx():
                    db.executemany("INSERT INTO consents(account, number, granted_at, proof, revoked_at,"
                                   " hours) VALUES(?,?,?,?,?,?)", rows[start : start + 5000])
                await asyncio.sleep(0)
        except sqlite3.Error as exc:
            raise self.health.failed(exc) from exc

    async def revoke_consent(self, account: str, number: str, at: float) -> int:
        return self._write("UPDATE consents SET revoked_at=? WHERE account=? AND number=? AND granted_at<=?"
                           " AND (revoked_at IS NULL OR revoked_at>?)", (at, account, number, at, at))

    async def consents(self, account: str, number: str) -> tuple[ConsentRecord, ...]:
        rows = self._read("SELECT granted_at, proof, revoked_at, hours FROM consents WHERE account=?"
                          " AND number=? ORDER BY granted_at, id", (account, number))
        return tuple(ConsentRecord(account, number, *row) for row in rows)

    async def add_contract(self, record: ContractRecord) -> None:
        self._write("INSERT INTO contracts(account, number, started_at, ended_at, reference)"
                    " VALUES(?,?,?,?,?)",
                    (record.account, record.number, record.started_at, record.ended_at, record.reference))

    async def end_contract(self, account: str, number: str, at: float) -> int:
        return self._write("UPDATE contracts SET ended_at=? WHERE account=? AND number=? AND started_at<=?"
                           " AND (ended_at IS NULL OR ended_at>?)", (at, account, number, at, at))

    async def contracts(self, account: str, number: str) -> tuple[ContractRecord, ...]:
        rows = self._read("SELECT started_at, ended_at, reference FROM contracts WHERE account=? AND number=?"
                          " ORDER BY started_at, id", (account, number))
        return tuple(ContractRecord(account, number, *row) for row in rows)

    def _write(self, sql: str, params: tuple[object, ...]) -> int:
        self._commit_batch()
        try:
            return self._db.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise self.health.failed(exc) from exc

    def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        self._commit_batch()  # what another handle or process reads next includes our attempts
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self.health.failed(exc) from exc

    # --- counters --------------------------------------------------------------------------------------
    async def check_and_record_attempt(
        self, account: str, number: str, now: float, cap: int, window_s: float, refusal_cooldown_s: float
    ) -> AttemptDecision:
        self._max_window = max(self._max_window, window_s)
        db = self._db
        try:
            # IMMEDIATE takes the write lock first, so a concurrent CLI cannot interleave (no await inside);
            # the transaction stays open for the rest of this loop iteration (_open_batch).
            self._open_batch()
            row = db.execute("SELECT at FROM refusals WHERE account=? AND number=?",
                             (account, number)).fetchone()
            refused_at = row[0] if row else None
            n = db.execute("SELECT count(*) FROM attempts WHERE account=? AND number=? AND at>?",
                           (account, number, now - window_s)).fetchone()[0]
            allowed = n < cap and (refused_at is None or refused_at <= now - refusal_cooldown_s)
            if allowed:
                db.execute("INSERT INTO attempts VALUES(?,?,?)", (account, number, now))
                n += 1
            if not self._batch_deferred:
                self._commit_batch()
        except sqlite3.Error as exc:
            self._rollback_batch()
            raise self.health.failed(exc) from exc
        self.health.ok()
        return AttemptDecision(allowed, n, refused_at)

    def _open_batch(self) -> None:
        """Join the open write transaction or begin one, committed once the callbacks of the current
        event-loop iteration have run. The counters stay exact (this connection reads its own uncommitted
        rows), the write lock is held one iteration at most, and a crash loses at most the attempts decided
        in that iteration; under load an iteration handles many datagrams, so one COMMIT serves many calls."""
        if self._batch_open:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: an ordinary transaction, committed before returning
            loop = None
        self._db.execute("BEGIN IMMEDIATE")
        self._batch_open = True
        self._batch_deferred = loop is not None
        if loop is not None:
            loop.call_soon(self._commit_batch)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """A write transaction of its own (the open attempts batch is committed first)."""
        self._commit_batch()
        with _immediate(self._db):
            yield

    def _commit_batch(self) -> None:
        """Commit the open attempts transaction (also before any other use of the connection)."""
        if not self._batch_open:
            return
        self._batch_open = False
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("embedded store: committing recorded attempts failed: %s", exc)
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self.health.failed(exc)

    def _rollback_batch(self) -> None:
        if self._batch_open:
            self._batch_open = False
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    async def attempts(self, account: str, number: str, now: float, window_s: float) -> int:
        rows = self._read("SELECT count(*) FROM attempts WHERE account=? AND number=? AND at>?",
                          (account, number, now - window_s))
        return int(rows[0][0])

    async def record_refusal(self, account: str, number: str, at: float) -> None:
        self._write("INSERT INTO refusals VALUES(?,?,?) ON CONFLICT(account, number)"
                    " DO UPDATE SET at=max(at, excluded.at)", (account, number, at))

    async def last_refusal(self, account: str, number: str) -> float | None:
        rows = self._read("SELECT at FROM refusals WHERE account=? AND number=?", (account, number))
        return float(rows[0][0]) if rows else None

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        self._commit_batch()
        self._db.close()


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the lock up front (no await may happen inside)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


__all__ = ["EmbeddedStore", "StoreError"]
