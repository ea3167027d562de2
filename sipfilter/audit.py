"""Decision audit log: one JSON line per policy decision, appended to an O_APPEND file and rotated by size.
It must never raise into the call path nor block the event loop beyond one write() (and fsync if asked).

Durability: each line is one os.write() on an O_APPEND descriptor (no user-space buffer), so it is in the
kernel before the SIP answer goes out and survives a crash or restart of sipfilter. fsync policy
(`audit.fsync`): `never` (the kernel writes back; a power loss may lose the last seconds), `rotate`
(default: fsync of the finished file at each rotation, in a background thread) or `always` (fsync every
line: durable against power loss, costs one disk flush per call on the event loop).
Write errors (disk full, …) never raise into the call path: they set `failing`, count `write_errors` and the
trunk-independent `on_write_error` policy tells the B2BUA whether to keep relaying (`should_relay`). Every
later write retries, on the same descriptor after ENOSPC/EDQUOT (space freed) or on a fresh one when the path
now names another file (the full file moved away, a new volume mounted, a symlink repointed).
External rotation (logrotate): at most once a second a write checks that the path still names the open file
and reopens it when it does not (moved away, or removed), so lines go to the new file within a second;
`reopen()` (SIGHUP) does it at once. A file truncated in place (copytruncate) is noticed by the same check.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, Final

from sipfilter.audit_files import Rotator, rotated_path
from sipfilter.config import AuditConfig
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.verdict import Decision

log = logging.getLogger(__name__)


# One encoder for every line: json.dumps() with options builds a new JSONEncoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
# The string escaping that encoder applies (C-accelerated; ensure_ascii=False: non-ASCII kept as is).
_str = encode_basestring
_BOOL = {True: "true", False: "false"}
_second: tuple[int, str] = (-1, "")  # the last whole second formatted and its text (rebound atomically)
READY_RETRY_S = 30.0  # see AuditLog.refusing_calls
_YEAR_10000 = 253402300800
PATH_CHECK_S = 1.0  # how often a write checks that the path still names the open file (one stat)


def is_decision(line: dict[str, Any]) -> bool:
    """A call's decision, not a record event (consent.import, refusal.add, …: those carry `event`)."""
    return "event" not in line


def iso_ms(at: float, *, remember: bool = True) -> str:
    """`at` as ISO 8601 UTC with milliseconds and a Z, exactly as datetime.isoformat(timespec="milliseconds")
    writes it (µs rounded half-even, then truncated); the date part is formatted once per second.
    `remember=False`: a time from elsewhere (a consent's grant) that must not evict the current second."""
    frac, whole = math.modf(at)
    if at < 0 or not math.isfinite(at):
        return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    us = round(frac * 1e6)
    sec = int(whole)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    global _second
    cached_sec, text = _second
    if cached_sec != sec:
        if sec >= _YEAR_10000:
            return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        text = _second_text(sec)
        if remember:
            _second = (sec, text)
    return text + "." + _THREE_DIGITS[us // 1000] + "Z"


def _second_text(sec: int) -> str:
    """A whole second from 1970 to 9999 as YYYY-MM-DDTHH:MM:SS, by integer arithmetic: every line of the
    audit log has one, and a consent's grant time is a second of its own."""
    days = sec // 86400
    rem = sec - days * 86400
    hour = rem // 3600
    minute = rem % 3600 // 60
    second = rem % 60
    # The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's civil_from_days: eras of
    # 400 years, years starting on 1 March so that the leap day ends them).
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    two = _TWO_DIGITS
    return f"{year}-{two[month]}-{two[day]}T{two[hour]}:{two[minute]}:{two[second]}"


_TWO_DIGITS: Final = tuple(f"{i:02d}" for i in range(100))
_THREE_DIGITS: Final = tuple(f"{i:03d}" for i in range(1000))


def decision_record(facts: CallFacts, decision: Decision, account: str, mode: str) -> dict[str, Any]:
    """The audit record of one decision (also what `sipfilter check --json` shows of the numbers)."""
    v = decision.verdict
    record = {
        "time": iso_ms(facts.at),
        "trunk": facts.trunk,
        "account": account,
        "call_id": facts.call_id,
        "from": facts.caller.e164 or facts.caller.kind,
        "pai": [p.e164 or p.kind for p in facts.asserted],
        "privacy": sorted(facts.privacy),
        "to": facts.callee.e164 or facts.callee.kind,
        "action": v.action,
        "status": v.status,
        "rule": v.rule,
        "reason": v.reason,
        "mode": mode,
        "monitored": decision.monitored,
        "attempt_recorded": decision.attempt_recorded,
        # Every failing rule with its reason (in monitor mode: all the would-be rejections).
        "failed": {rule: o.reason for rule, o in decision.outcomes.items() if o.result == "fail"},
        "alerts": list(decision.alerts),
        "rule_pack_version": decision.rule_pack_version,
        # What it rested on: the version of each list consulted, the consent or contract consulted.
        "lists": dict(decision.lists or {}),
    }
    c = decision.consent
    if c is not None:
        record["consent"] = {"proof": c.proof, "granted_at": iso_ms(c.granted_at, remember=False)}
    k = decision.contract
    if k is not None:
        record["contract"] = {"reference": k.reference, "started_at": iso_ms(k.started_at, remember=False)}
    return record


def _strs(values: list[str] | tuple[str, ...]) -> str:
    return "[" + ",".join([_str(v) for v in values]) + "]" if values else "[]"


_lists_memo: tuple[object, str] = (None, "{}")  # the last list versions encoded (the same object per version)


def _lists(versions: Mapping[str, int] | None) -> str:
    global _lists_memo
    if not versions:
        return "{}"
    memo = _lists_memo
    if memo[0] is versions:
        return memo[1]
    text = _ENCODER.encode(dict(versions))
    _lists_memo = (versions, text)
    return text


def _basis(decision: Decision) -> str:
    """The consent/contract members of the line (with their leading comma), or ""."""
    out = ""
    c = decision.consent
    if c is not None:
        out = f',"consent":{{"proof":{_str(c.proof)},"granted_at":"{iso_ms(c.granted_at, remember=False)}"}}'
    k = decision.contract
    if k is not None:
        out += (f',"contract":{{"reference":{_str(k.reference)},'
                f'"started_at":"{iso_ms(k.started_at, remember=False)}"}}')
    return out


def encode_decision(facts: CallFacts, decision: Decision, account: str, mode: str) -> bytes:
    """The audit line of one decision: exactly `_ENCODER.encode(decision_record(…)) + "\n"` as UTF-8, built
    from a fixed template with only the variable values escaped (no dict, no generic encoder walk: the
    line is written before the SIP answer goes out, on every call). Odd value types take the generic path."""
    v = decision.verdict
    status = v.status
    try:
        if type(status) is not int:
            raise TypeError(status)
        failed = ",".join(
            [_str(rule) + ":" + _str(o.reason) for rule, o in decision.outcomes.items() if o.result == "fail"]
        )
        line = (
            f'{{"time":"{iso_ms(facts.at)}","trunk":{_str(facts.trunk)},"account":{_str(account)},'
            f'"call_id":{_str(facts.call_id)},"from":{_str(facts.caller.e164 or facts.caller.kind)},'
            f'"pai":{_strs([p.e164 or p.kind for p in facts.asserted])},'
            f'"privacy":{_strs(sorted(facts.privacy))},"to":{_str(facts.callee.e164 or facts.callee.kind)},'
            f'"action":{_str(v.action)},"status":{status},'
            f'"rule":{_str(v.rule)},"reason":{_str(v.reason)},"mode":{_str(mode)},'
            f'"monitored":{_BOOL[decision.monitored]},"attempt_recorded":{_BOOL[decision.attempt_recorded]},'
            f'"failed":{{{failed}}},"alerts":{_strs(decision.alerts)},'
            f'"rule_pack_version":{_str(decision.rule_pack_version)},"lists":{_lists(decision.lists)}'
            f"{_basis(decision) if decision.consent is not None or decision.contract is not None else ''}}}\n"
        )
    except (TypeError, KeyError):  # a non-str / non-bool value: the generic encoder (default=str) knows it
        line = _ENCODER.encode(decision_record(facts, decision, account, mode)) + "\n"
    # A Call-ID with bytes that are not UTF-8 reaches us as lone surrogates (surrogateescape): written as
    # their JSON \udcXX escapes rather than failing the line.
    return line.encode("utf-8", "backslashreplace")


class AuditLog:
    """Appends decision records; thread-safe; call `close()` on shutdown."""

    def __init__(self, config: AuditConfig, on_error: Callable[[OSError], None] | None = None):
        self.path = Path(config.path)
        self.max_bytes = config.max_bytes
        self.backups = config.backups
        self.fsync = config.fsync
        # Rotated files: fsynced, gzip-compressed and pruned (audit.retention_days, audit.backups) off the
        # event loop, one at a time; what a crash left uncompressed is done now, in the background too.
        self._rotator = Rotator(self.path, fsync=config.fsync != "never", compress=config.compress == "gzip",
                                backups=config.backups, retention_days=config.retention_days)
        self._rotator.tidy()
        self.on_write_error = config.on_write_error
        self.on_error = on_error
        self.write_errors = 0  # total failed writes (export as a metric)
        self.failing = False  # last write failed (disk full, permissions, …)
        self.last_error = ""
        self.failed_at = 0.0  # time.monotonic() of the last failed write
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._torn = False  # a partial line may have been written: start the next one on a new line
        self._last_logged = 0.0
        self._syncing: list[threading.Thread] = []  # background fsyncs of rotated files
        self._path_checked = 0.0  # time.monotonic() of the last check that the path names our file
        self.path_check_s = PATH_CHECK_S

    @property
    def should_relay(self) -> bool:
        """False when writes fail and the policy is `stop-relaying` (no call without its audit line)."""
        return not (self.failing and self.on_write_error == "stop-relaying")

    def refusing_calls(self, hold_s: float = READY_RETRY_S) -> bool:
        """For readiness: stop-relaying refused a call because of a failed write less than `hold_s` ago.
        Bounded, because only a write notices that the disk recovered: an instance a load balancer took out
        of rotation for good would never see one (after `hold_s` it takes calls again, and refuses them
        again for `hold_s` if writes still fail)."""
        return not self.should_relay and time.monotonic() - self.failed_at < hold_s

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._size = os.fstat(self._fd).st_size
            self._path_checked = time.monotonic()  # just opened: the path names it
        return self._fd

    def _rotate(self) -> None:
        """Rename the live file aside (`<name>.<UTC time>`, see audit_files) and start a new one; flushing up
        to max_bytes of dirty pages and compressing take a while, so the Rotator does them off the loop."""
        fd, self._fd = self._fd, None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
            self._rotator.retire(fd, None)
            return
        rotated = rotated_path(self.path, time.time())
        if self.path.exists() or self.path.is_symlink():
            os.replace(self.path, rotated)
        self._rotator.retire(fd, rotated)

    def write(self, record: dict[str, Any]) -> bool:
        """Append one record as a JSON line; True when it reached the kernel. Never raises OSError."""
        return self.write_line((_ENCODER.encode(record) + "\n").encode("utf-8", "backslashreplace"))

    def write_line(self, data: bytes) -> bool:
        """Append one encoded line (ending in a newline); True when it reached the kernel."""
        with self._lock:
            try:
                if self._fd is not None and (self.failing or self._path_check_due()):
                    self._follow_path()
                fd = self._open()
                if self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                    fd = self._open()
                if self._torn:
                    data = b"\n" + data
                view = memoryview(data)
                while view:
                    self._torn = True
                    n = os.write(fd, view)
                    self._size += n
                    view = view[n:]
                self._torn = False
                if self.fsync == "always":
                    os.fsync(fd)
            except OSError as exc:
                self._failed(exc)
                return False
            if self.failing:
                log.warning(
                    "audit log %s writable again after %d failed writes", self.path, self.write_errors
                )
            self.failing = False
            return True

    def _path_check_due(self) -> bool:
        now = time.monotonic()
        if now - self._path_checked < self.path_check_s:
            return False
        self._path_checked = now
        return True

    def _follow_path(self) -> None:
        """The operator (or logrotate) moved the file away or pointed the path at another disk: write to
        what the path names now. A file truncated in place restarts the size count."""
        assert self._fd is not None
        if self._still_our_file():
            self._size = os.fstat(self._fd).st_size
            return
        os.close(self._fd)
        self._fd = None
        self._torn = False  # a torn line stays in the old file
        log.info("audit log %s: the path names another file now (rotated away?): reopened", self.path)

    def reopen(self) -> None:
        """Close the file now; the next line opens whatever the path names then (SIGHUP after a rotation)."""
        with self._lock:
            if self._fd is not None:
                try:
                    if self.fsync != "never":
                        os.fsync(self._fd)
                except OSError as exc:
                    log.error("audit log %s fsync before reopening failed: %s", self.path, exc)
                finally:
                    os.close(self._fd)
                    self._fd = None
                    self._torn = False

    def _still_our_file(self) -> bool:
        """Whether the path still names the open file (one stat; per write while failing, else per second)."""
        assert self._fd is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return False  # removed: reopen (creates it again)
        own = os.fstat(self._fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def _failed(self, exc: OSError) -> None:
        self.write_errors += 1
        self.failing = True
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._fd is not None and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            # Anything but a full disk (EIO, EBADF, file removed…): reopen on the next write.
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        now = self.failed_at = time.monotonic()
        if now - self._last_logged > 10:  # do not flood the log when the disk is full
            self._last_logged = now
            log.error(
                "audit log %s write failed (%s); policy: %s", self.path, self.last_error, self.on_write_error
            )
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:
                log.exception("audit on_error callback failed")

    def log_decision(self, facts: CallFacts, decision: Decision, account: str, mode: str) -> bool:
        return self.write_line(encode_decision(facts, decision, account, mode))

    def close(self) -> None:
        self._rotator.close()
        with self._lock:
            if self._fd is not None:
                try:
                    if self.fsync != "never":
                        os.fsync(self._fd)
                except OSError as exc:  # disk gone or full at shutdown: say so, still close
                    log.error("audit log %s fsync at close failed: %s", self.path, exc)
                finally:
                    os.close(self._fd)
                    self._fd = None
