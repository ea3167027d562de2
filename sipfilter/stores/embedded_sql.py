"""The embedded store's SQLite side: the schema, bringing older databases forward, connections and
transactions, and the atomic file write of list versions. No store logic here (embedded.py).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lists(name TEXT PRIMARY KEY, version INTEGER NOT NULL, count INTEGER NOT NULL,
    imported_at REAL NOT NULL, source_name TEXT NOT NULL, source_size INTEGER NOT NULL,
    source_sha256 TEXT NOT NULL, file TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS consents(id INTEGER PRIMARY KEY, account TEXT NOT NULL, number TEXT NOT NULL,
    granted_at REAL NOT NULL, proof TEXT NOT NULL, revoked_at REAL, hours TEXT, time_zone TEXT);
CREATE INDEX IF NOT EXISTS consents_by_number ON consents(account, number, granted_at);
CREATE TABLE IF NOT EXISTS contracts(id INTEGER PRIMARY KEY, account TEXT NOT NULL, number TEXT NOT NULL,
    started_at REAL NOT NULL, ended_at REAL, reference TEXT NOT NULL, scope TEXT);
CREATE INDEX IF NOT EXISTS contracts_by_number ON contracts(account, number, started_at);
CREATE TABLE IF NOT EXISTS attempts(account TEXT NOT NULL, number TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS attempts_by_number ON attempts(account, number, at);
CREATE TABLE IF NOT EXISTS refusals(account TEXT NOT NULL, number TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY(account, number));
CREATE TABLE IF NOT EXISTS refusal_log(id INTEGER PRIMARY KEY, account TEXT NOT NULL, number TEXT NOT NULL,
    at REAL NOT NULL, source TEXT NOT NULL, recorded_at REAL, undone_at REAL, undo_reason TEXT);
CREATE INDEX IF NOT EXISTS refusal_log_by_number ON refusal_log(account, number, at);
CREATE TABLE IF NOT EXISTS oppositions(id INTEGER PRIMARY KEY, account TEXT NOT NULL, number TEXT NOT NULL,
    at REAL NOT NULL, source TEXT NOT NULL, recorded_at REAL, undone_at REAL, undo_reason TEXT);
CREATE INDEX IF NOT EXISTS oppositions_by_number ON oppositions(account, number, at);
CREATE TABLE IF NOT EXISTS list_versions(name TEXT NOT NULL, version INTEGER NOT NULL, count INTEGER NOT NULL,
    imported_at REAL NOT NULL, source_name TEXT NOT NULL, source_size INTEGER NOT NULL,
    source_sha256 TEXT NOT NULL, PRIMARY KEY(name, version));
CREATE TABLE IF NOT EXISTS changes(seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
    account TEXT NOT NULL, number TEXT NOT NULL);
""" + "".join(
    # Every write to these tables, by any process, names its (account, number) in `changes`: a running proxy
    # re-reads just those keys. AUTOINCREMENT: sequence numbers are never reused after a prune.
    f"""
CREATE TRIGGER IF NOT EXISTS {table}_inserted AFTER INSERT ON {table}
    BEGIN INSERT INTO changes(kind, account, number) VALUES('{kind}', new.account, new.number); END;
CREATE TRIGGER IF NOT EXISTS {table}_updated AFTER UPDATE ON {table}
    BEGIN INSERT INTO changes(kind, account, number) VALUES('{kind}', old.account, old.number),
        ('{kind}', new.account, new.number); END;
CREATE TRIGGER IF NOT EXISTS {table}_deleted AFTER DELETE ON {table}
    BEGIN INSERT INTO changes(kind, account, number) VALUES('{kind}', old.account, old.number); END;
""" for table, kind in (("consents", "consent"), ("contracts", "contract"), ("refusals", "refusal"),
                        ("refusal_log", "refusal"), ("oppositions", "opposition")))

# Databases written by an older sipfilter: without the record history (refusals were one row per (account,
# number), the latest; consents could not be undone), without a consent's time zone or a contract's scope.
# Brought forward once, in one transaction (the proxy and the CLI may open the same database at once).
MIGRATIONS = (
    ("consents_undo", ("ALTER TABLE consents ADD COLUMN undone_at REAL",
                       "ALTER TABLE consents ADD COLUMN undo_reason TEXT")),
    ("refusal_log", ("INSERT INTO refusal_log(account, number, at, source) SELECT account, number, at,"
                     " 'migrated' FROM refusals",)),
    ("list_versions", ("INSERT OR IGNORE INTO list_versions SELECT name, version, count, imported_at,"
                       " source_name, source_size, source_sha256 FROM lists",)),
    ("consents_time_zone", ("ALTER TABLE consents ADD COLUMN time_zone TEXT",)),
    ("contracts_scope", ("ALTER TABLE contracts ADD COLUMN scope TEXT",)),
)


INSERT_CHUNK = 500  # rows per INSERT statement (3 parameters each; SQLite allows 32766)


@functools.lru_cache(maxsize=8)
def insert_attempts_sql(rows: int) -> str:
    return "INSERT INTO attempts(account, number, at) VALUES" + ",".join(["(?,?,?)"] * rows)


def migrate(db: sqlite3.Connection) -> None:
    """Apply the MIGRATIONS this database has not had (each once, recorded in `meta`)."""
    done = {row[0] for row in db.execute("SELECT key FROM meta WHERE key LIKE 'migrated:%'")}
    if all(f"migrated:{name}" in done for name, _ in MIGRATIONS):
        return
    with immediate(db):
        done = {row[0] for row in db.execute("SELECT key FROM meta WHERE key LIKE 'migrated:%'")}
        for name, statements in MIGRATIONS:
            if f"migrated:{name}" in done:
                continue
            for sql in statements:
                words = sql.split()  # ALTER TABLE <table> ADD COLUMN <column> <type>
                if words[0] == "ALTER" and words[5] in _columns(db, words[2]):
                    continue  # a fresh database: the column is in CREATE TABLE already
                db.execute(sql)
            db.execute("INSERT INTO meta VALUES(?, 1)", (f"migrated:{name}",))


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA synchronous=NORMAL")
    # Checkpoints (two fsyncs each) every 10 000 WAL pages rather than 1 000: ~20 % less CPU per written
    # attempt at high rates (a batch dirties hundreds of random index pages); the WAL may reach ~40 MB.
    db.execute("PRAGMA wal_autocheckpoint=10000")
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return db


@contextlib.contextmanager
def reading(db: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: every SELECT inside sees the same snapshot."""
    db.execute("BEGIN")
    try:
        yield
    finally:
        if db.in_transaction:
            db.execute("COMMIT")


@contextlib.contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the lock up front (no await may happen inside)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def write_atomically(path: Path, data: bytes) -> None:
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
