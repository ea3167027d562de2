"""The audit log's files on disk: names of rotated files, their gzip compression and retention, and reading
every line back (live file and rotated ones, plain or compressed) for `sipfilter audit`.

Never on the event loop: AuditLog hands each rotation to one background thread (Rotator); readers run in the
CLI or in an executor thread of the admin API.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("sipfilter.audit")

DAY = 86400.0
_STAMP = "%Y%m%dT%H%M%S.%fZ"  # UTC rotation time: names sort as time does
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class AuditFile:
    path: Path
    rotated_at: float | None  # when it was rotated (its last line is older); None: the live file
    compressed: bool


def rotated_path(path: Path, at: float) -> Path:
    """A free name for the live file rotated at `at`: `<name>.<UTC time, µs>` (`.gz` once compressed)."""
    while True:
        stamp = datetime.fromtimestamp(at, UTC).strftime(_STAMP)
        candidate = path.with_name(f"{path.name}.{stamp}")
        if not candidate.exists() and not candidate.with_name(candidate.name + ".gz").exists():
            return candidate
        at += 1e-6


def audit_files(path: Path) -> list[AuditFile]:
    """The audit log's files, oldest first, the live file (if any) last. Rotated files are those this module
    names (`<name>.<stamp>[.gz]`) and numbered ones (`<name>.<N>[.gz]`, older sipfilter versions and
    logrotate; a higher N is older, dated by modification time)."""
    stamped = re.compile(re.escape(path.name) + r"\.(\d{8}T\d{6}\.\d{6}Z)(\.gz)?$")
    numbered = re.compile(re.escape(path.name) + r"\.(\d+)(\.gz)?$")
    found: list[tuple[tuple[int, float], AuditFile]] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        m = stamped.match(entry.name)
        if m:
            at = datetime.strptime(m.group(1), _STAMP).replace(tzinfo=UTC).timestamp()
            found.append(((1, at), AuditFile(entry, at, bool(m.group(2)))))
            continue
        m = numbered.match(entry.name)
        if m:
            with contextlib.suppress(OSError):
                mtime = entry.stat().st_mtime
                found.append(((0, -int(m.group(1))), AuditFile(entry, mtime, bool(m.group(2)))))
    files = [f for _, f in sorted(found, key=lambda item: item[0])]
    if path.exists():
        files.append(AuditFile(path, None, False))
    return files


def compress(path: Path) -> Path:
    """gzip `path` to `path.gz` (written aside, fsynced, then switched), then remove `path`. A line another
    process appended meanwhile (the CLI holds no lock) makes it start again, so nothing is lost."""
    target = path.with_name(path.name + ".gz")
    tmp = target.with_name(target.name + ".tmp")
    while True:
        size = path.stat().st_size
        mtime = int(path.stat().st_mtime)
        with open(path, "rb") as src, open(tmp, "wb") as raw:
            with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, mtime=mtime) as gz:
                shutil.copyfileobj(src, gz, _COPY_CHUNK)
            raw.flush()
            os.fsync(raw.fileno())
        if path.stat().st_size == size:
            break
    os.replace(tmp, target)
    _fsync_dir(path.parent)
    path.unlink()
    return target


def prune(path: Path, backups: int | None, retention_days: int | None, now: float) -> list[Path]:
    """Remove rotated files older than `retention_days` (by rotation time) and beyond the newest `backups`
    (None: no such limit). Returns the files removed. The live file is never touched."""
    rotated = [f for f in audit_files(path) if f.rotated_at is not None]
    doomed = []
    if retention_days is not None:
        cutoff = now - retention_days * DAY
        doomed += [f for f in rotated if f.rotated_at is not None and f.rotated_at < cutoff]
    if backups is not None:
        doomed += rotated[: max(0, len(rotated) - backups)]
    removed = []
    for f in {f.path: f for f in doomed}.values():
        try:
            f.path.unlink()
            removed.append(f.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("audit log retention: cannot remove %s: %s", f.path, exc)
    return removed


def read_lines(path: Path, since: float | None = None, contains: bytes | None = None) -> Iterator[bytes]:
    """Every line of every audit file, oldest file first (files rotated before `since` are skipped: their
    lines are older); with `contains`, only lines holding those bytes (a cheap filter before any JSON)."""
    for f in audit_files(path):
        if since is not None and f.rotated_at is not None and f.rotated_at < since:
            continue
        try:
            stream = gzip.open(f.path, "rb") if f.compressed else open(f.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            continue  # removed by the retention or compressed meanwhile: its .gz comes later in the order
        with stream:
            try:
                for line in stream:
                    if contains is None or contains in line:
                        yield line
            except (OSError, EOFError) as exc:  # a truncated .gz (disk full while compressing): say so
                log.error("audit file %s is damaged after some lines: %s", f.path, exc)


def append_line(path: Path, data: bytes) -> None:
    """Append one line from a process that does not own the log (the CLI): one write() on O_APPEND, like
    the proxy's, so lines never interleave. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class Rotator:
    """The background side of rotation, one job at a time in order: fsync and close the finished file,
    compress it, apply the retention. Also tidies what a crash left (rotated files not yet compressed)."""

    def __init__(self, path: Path, *, fsync: bool, compress: bool, backups: int | None,
                 retention_days: int | None):
        self.path = path
        self.fsync = fsync
        self.compress = compress
        self.backups = backups
        self.retention_days = retention_days
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: list[Future[None]] = []
        self._lock = threading.Lock()

    def tidy(self) -> None:
        """Compress rotated files left plain and apply the retention (at start)."""
        self._run(None, None)

    def retire(self, fd: int | None, rotated: Path | None) -> None:
        """The live file was rotated to `rotated` (None: dropped, `backups: 0`); `fd` was its descriptor."""
        self._run(fd, rotated)

    def _run(self, fd: int | None, rotated: Path | None) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-rotate")
            self._jobs = [j for j in self._jobs if not j.done()]
            self._jobs.append(self._pool.submit(self._job, fd, rotated))

    def _job(self, fd: int | None, rotated: Path | None) -> None:
        if fd is not None:
            try:
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                log.error("audit log fsync before rotation failed: %s", exc)
            finally:
                os.close(fd)
        try:
            if self.compress:  # files of ours only: numbered ones may belong to logrotate
                for f in audit_files(self.path):
                    if f.rotated_at is not None and not f.compressed and _is_stamped(f):
                        compress(f.path)
            prune(self.path, self.backups, self.retention_days, time.time())
        except OSError as exc:
            log.error("audit log rotation: %s (a file left uncompressed is retried at the next rotation)",
                      exc)

    def close(self, timeout: float = 30.0) -> None:
        with self._lock:
            jobs, pool, self._pool = list(self._jobs), self._pool, None
        if jobs:
            wait_futures(jobs, timeout=timeout)
        if pool is not None:
            pool.shutdown(wait=False)


def _is_stamped(f: AuditFile) -> bool:
    return f.path.name.endswith("Z")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
