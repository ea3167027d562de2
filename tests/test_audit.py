"""Audit log: one JSON line per decision, rotation by size, disk-full handling without exceptions."""

from __future__ import annotations

import enum
import errno
import gzip
import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipfilter import audit_files as audit_files_module
from sipfilter.audit import AuditLog, decision_record, encode_decision
from sipfilter.audit_files import append_line, audit_files, compress, read_lines, rotated_path
from sipfilter.config import AuditConfig
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.numbers import Number
from sipfilter.policy.verdict import Decision, Outcome, Verdict
from sipfilter.stores.base import ConsentRecord, ContractRecord


def facts(call_id: str = "c1") -> CallFacts:
    return CallFacts(
        trunk="dialer",
        at=1789574400.0,
        caller=Number("0162123456", "+33162123456", "e164"),
        asserted=(Number("tel:+33163000000", "+33163000000", "e164"),),
        privacy=frozenset({"none"}),
        callee=Number("0699999999", "+33699999999", "e164"),
        call_id=call_id,
    )


# What the audit line is specified as: the record through the standard library's encoder.
_GENERIC = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

DECISION = Decision(
    Verdict("reject", 603, "callee.dnc.bloctel", "callee is on a do-not-call list"),
    {"callee.dnc.bloctel": Outcome("fail", "on bloctel")},
    False,
    False,
    "fr-2026.11-1",
)


def log_for(tmp_path: Path, **kw: object) -> AuditLog:
    backups = kw.get("backups", 3)
    retention = kw.get("retention_days", 1100)
    cfg = AuditConfig(
        path=tmp_path / "audit" / "decisions.jsonl",
        max_bytes=int(kw.get("max_bytes", 1 << 20)),  # type: ignore[call-overload]
        backups=None if backups is None else int(backups),  # type: ignore[call-overload]
        on_write_error=str(kw.get("policy", "keep-relaying")),
        fsync=str(kw.get("fsync", "rotate")),
        compress=str(kw.get("compress", "gzip")),
        retention_days=None if retention is None else int(retention),  # type: ignore[call-overload]
    )
    return AuditLog(cfg)


def test_one_json_line_per_decision(tmp_path: Path) -> None:
    log = log_for(tmp_path, fsync="always")
    assert log.log_decision(facts("a"), DECISION, "acme-energie", "enforce")
    assert log.log_decision(facts("b"), DECISION, "acme-energie", "enforce")
    # Readable before close: nothing is buffered in the process.
    lines = (tmp_path / "audit" / "decisions.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[0])
    assert rec == decision_record(facts("a"), DECISION, "acme-energie", "enforce")
    assert rec["time"] == "2026-09-16T16:00:00.000Z"
    assert (rec["trunk"], rec["account"], rec["call_id"]) == ("dialer", "acme-energie", "a")
    assert (rec["from"], rec["pai"], rec["to"]) == ("+33162123456", ["+33163000000"], "+33699999999")
    assert (rec["action"], rec["status"], rec["rule"]) == ("reject", 603, "callee.dnc.bloctel")
    assert rec["rule_pack_version"] == "fr-2026.11-1"
    assert rec["failed"] == {"callee.dnc.bloctel": "on bloctel"}
    log.close()


def test_the_line_carries_what_the_decision_rested_on(tmp_path: Path) -> None:
    log = log_for(tmp_path)
    d = Decision(Verdict("allow", 0, "", ""), {}, False, True, "fr-1", (), {"bloctel": 12, "optouts": 3},
                 ConsentRecord("acme", "+33699999999", 1789574400.5, "crm-4711"),
                 ContractRecord("acme", "+33699999999", 1789000000.0, None, "K-9"))
    assert log.log_decision(facts("a"), d, "acme", "enforce")
    assert log.log_decision(facts("b"), DECISION, "acme", "enforce")
    log.close()
    first, second = (json.loads(x) for x in (tmp_path / "audit" / "decisions.jsonl").read_text().splitlines())
    assert first["lists"] == {"bloctel": 12, "optouts": 3}
    assert first["consent"] == {"proof": "crm-4711", "granted_at": "2026-09-16T16:00:00.500Z"}
    assert first["contract"] == {"reference": "K-9", "started_at": "2026-09-10T00:26:40.000Z"}
    assert second["lists"] == {} and "consent" not in second and "contract" not in second


def test_appends_across_restarts(tmp_path: Path) -> None:
    for i in range(3):
        log = log_for(tmp_path)
        log.log_decision(facts(str(i)), DECISION, "acme", "enforce")
        log.close()
    lines = (tmp_path / "audit" / "decisions.jsonl").read_text().splitlines()
    assert [json.loads(x)["call_id"] for x in lines] == ["0", "1", "2"]


def test_rotation_by_size_compresses_and_keeps_backups(tmp_path: Path) -> None:
    log = log_for(tmp_path, max_bytes=4096, backups=2)
    for i in range(60):
        assert log.log_decision(facts(f"call-{i}"), DECISION, "acme", "enforce")
    log.close()  # waits for the background compression
    base = tmp_path / "audit" / "decisions.jsonl"
    files = audit_files(base)
    assert [f.path.name.endswith("Z.gz") for f in files] == [True, True, False]  # two rotated, gzip, + live
    assert [f.compressed for f in files] == [True, True, False]
    assert files[0].rotated_at < files[1].rotated_at  # type: ignore[operator]
    assert sorted(p.name for p in base.parent.iterdir()) == sorted(f.path.name for f in files)  # no leftovers
    assert all(len(gzip.decompress(f.path.read_bytes())) <= 4096 for f in files[:2])
    calls = [int(json.loads(x)["call_id"].split("-")[1]) for x in read_lines(base)]
    assert calls[-1] == 59 and calls == list(range(calls[0], 60))  # in order, nothing lost at the seams


def test_rotated_files_uncompressed_when_asked_and_none_kept_with_backups_0(tmp_path: Path) -> None:
    log = log_for(tmp_path, max_bytes=4096, backups=None, compress="none")
    for i in range(30):
        log.log_decision(facts(f"call-{i}"), DECISION, "acme", "enforce")
    log.close()
    files = audit_files(tmp_path / "audit" / "decisions.jsonl")
    assert len(files) > 2 and not any(f.compressed for f in files)
    assert len(list(read_lines(files[-1].path))) == 30
    other = tmp_path / "b"
    log = log_for(other, max_bytes=4096, backups=0)
    for i in range(30):
        log.log_decision(facts(f"call-{i}"), DECISION, "acme", "enforce")
    log.close()
    assert [f.path.name for f in audit_files(other / "audit" / "decisions.jsonl")] == ["decisions.jsonl"]


def test_retention_removes_rotated_files_older_than_retention_days(tmp_path: Path) -> None:
    base = tmp_path / "audit" / "decisions.jsonl"
    base.parent.mkdir(parents=True)
    now = time.time()
    old = rotated_path(base, now - 400 * 86400)
    recent = rotated_path(base, now - 10 * 86400)
    for f in (old, recent):
        f.with_name(f.name + ".gz").write_bytes(gzip.compress(b'{"x":1}\n'))
    legacy = base.with_name(base.name + ".3")  # an older sipfilter's (or logrotate's) numbered file
    legacy.write_text('{"legacy":1}\n')
    os.utime(legacy, (now - 500 * 86400, now - 500 * 86400))
    left = tmp_path / "audit" / (rotated_path(base, now - 5 * 86400).name)  # a crash before compression
    left.write_text('{"left":1}\n')
    log = log_for(tmp_path, retention_days=365, backups=None)  # the start tidies up
    log.close()
    names = sorted(f.path.name for f in audit_files(base))
    assert names == sorted([recent.name + ".gz", left.name + ".gz"])
    assert [json.loads(x) for x in read_lines(base)] == [{"x": 1}, {"left": 1}]


def test_read_lines_skips_files_rotated_before_since_and_filters_bytes(tmp_path: Path) -> None:
    base = tmp_path / "decisions.jsonl"
    first = rotated_path(base, 1000.0)
    first.with_name(first.name + ".gz").write_bytes(gzip.compress(b"a +33611\nb +33622\n"))
    second = rotated_path(base, 2000.0)
    second.write_bytes(b"c +33611\n")
    base.write_bytes(b"d +33611\n")
    base.with_name(base.name + ".7").write_bytes(b"legacy +33611\n")
    assert list(read_lines(base)) == [b"legacy +33611\n", b"a +33611\n", b"b +33622\n", b"c +33611\n",
                                      b"d +33611\n"]
    assert list(read_lines(base, since=1500.0, contains=b"+33611")) == [b"legacy +33611\n", b"c +33611\n",
                                                                       b"d +33611\n"]


def test_a_line_appended_by_another_process_while_compressing_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotated = tmp_path / "decisions.jsonl.20261206T101500.000000Z"
    rotated.write_bytes(b"one\n")
    real_copy = audit_files_module.shutil.copyfileobj
    appended = []

    def copy_then_append(src: object, dst: object, length: int = 0) -> None:
        real_copy(src, dst, length)  # type: ignore[arg-type]
        if not appended:  # the CLI opened the file just before the rename: its line lands now
            appended.append(1)
            append_line(rotated, b"two\n")

    monkeypatch.setattr(audit_files_module.shutil, "copyfileobj", copy_then_append)
    gz = compress(rotated)
    assert gzip.decompress(gz.read_bytes()) == b"one\ntwo\n" and not rotated.exists()


@pytest.mark.parametrize(("policy", "relay"), [("keep-relaying", True), ("stop-relaying", False)])
def test_disk_full_sets_flag_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str, relay: bool
) -> None:
    errors: list[OSError] = []
    log = log_for(tmp_path, policy=policy)
    log.on_error = errors.append
    assert log.log_decision(facts("ok-1"), DECISION, "acme", "enforce")
    real_write = os.write
    state = {"full": True}

    def full_disk(fd: int, data: bytes) -> int:
        if state["full"]:
            # Half a line reaches the disk, then ENOSPC: the next line must start on a fresh line.
            real_write(fd, bytes(data[:10]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    assert log.log_decision(facts("lost"), DECISION, "acme", "enforce") is False
    assert log.failing and log.write_errors == 1 and "No space left" in log.last_error
    assert log.should_relay is relay
    assert len(errors) == 1
    state["full"] = False
    assert log.log_decision(facts("ok-2"), DECISION, "acme", "enforce")
    assert not log.failing and log.should_relay
    log.close()
    lines = (tmp_path / "audit" / "decisions.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["call_id"] == "ok-1"
    assert json.loads(lines[-1])["call_id"] == "ok-2"  # the torn line did not swallow it


def test_unwritable_directory(tmp_path: Path) -> None:
    (tmp_path / "audit").write_text("a file where the directory should be")
    log = log_for(tmp_path)
    assert log.log_decision(facts(), DECISION, "acme", "enforce") is False
    assert log.failing and log.write_errors == 1


@pytest.mark.parametrize(
    "at",
    [0.0, 1789574400.0, 1789574400.0005, 1789574400.9994999, 1789574400.9999996, 1e9 - 1e-7, 2.5e9 + 0.1234,
     253402300799.9994],
)
def test_time_field_matches_datetime_isoformat(at: float) -> None:
    from datetime import UTC, datetime

    from sipfilter.audit import iso_ms

    expected = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert iso_ms(at, remember=False) == expected  # a grant time: formatted without the cache
    assert iso_ms(at) == expected
    assert iso_ms(at) == expected  # the cached second gives the same text


def _audit_path_on_dev_full(tmp_path: Path) -> Path:
    """The audit path as a symlink to /dev/full: every write fails with ENOSPC, as on a full disk."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = tmp_path / "audit" / "decisions.jsonl"
    path.parent.mkdir()
    path.symlink_to("/dev/full")
    return path


def test_dev_full_then_path_repointed_recovers(tmp_path: Path) -> None:
    """The real-process fault test's disk: a symlink to /dev/full (every write fails with ENOSPC), then
    repointed at a real file. The log follows the path instead of writing to the old descriptor forever."""
    path = _audit_path_on_dev_full(tmp_path)
    log = log_for(tmp_path, policy="stop-relaying")
    assert log.log_decision(facts("lost-1"), DECISION, "acme", "enforce") is False
    assert log.log_decision(facts("lost-2"), DECISION, "acme", "enforce") is False
    assert log.failing and not log.should_relay and log.write_errors == 2
    assert "No space left" in log.last_error
    real = tmp_path / "audit" / "real.jsonl"
    real.touch()
    tmp_link = tmp_path / "audit" / "link.tmp"
    tmp_link.symlink_to(real)
    os.replace(tmp_link, path)  # atomic repoint, as an operator would do
    assert log.log_decision(facts("ok"), DECISION, "acme", "enforce")
    assert not log.failing and log.should_relay and log.write_errors == 2
    log.close()
    lines = real.read_text().splitlines()
    assert [json.loads(line)["call_id"] for line in lines] == ["ok"]


def test_close_survives_fsync_failure(tmp_path: Path) -> None:
    _audit_path_on_dev_full(tmp_path)
    log = log_for(tmp_path, fsync="rotate")
    log.log_decision(facts(), DECISION, "acme", "enforce")
    log.close()  # fsync of a character device fails with EINVAL: logged, not raised
    assert log._fd is None


# -- the line template against the generic encoder ---------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_number = st.builds(Number, raw=_text, e164=st.sampled_from(["", "+33612345678", "é\"\\\n"]) | _text,
                    kind=st.sampled_from(["e164", "short", "anonymous", "invalid"]))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    trunk=_text, account=_text, mode=_text, call_id=_text, at=st.floats(0, 4e9),
    caller=_number, callee=_number, asserted=st.lists(_number, max_size=3).map(tuple),
    privacy=st.frozensets(_text, max_size=3), action=_text, status=st.integers(-1, 10**6),
    rule=_text, reason=_text, monitored=st.booleans(), recorded=st.booleans(),
    outcomes=st.dictionaries(_text, st.builds(Outcome, st.sampled_from(["pass", "fail", "skip"]), _text),
                             max_size=4),
    alerts=st.lists(_text, max_size=3).map(tuple), version=_text,
    lists=st.none() | st.dictionaries(_text, st.integers(0, 10**12), max_size=3),
    consent=st.none() | st.builds(ConsentRecord, _text, _text, st.floats(0, 4e9), _text),
    contract=st.none() | st.builds(ContractRecord, _text, _text, st.floats(0, 4e9), st.none(), _text),
)  # fmt: skip
def test_line_template_matches_the_generic_encoder(
    trunk: str, account: str, mode: str, call_id: str, at: float, caller: Number, callee: Number,
    asserted: tuple[Number, ...], privacy: frozenset[str], action: str, status: int, rule: str,
    reason: str, monitored: bool, recorded: bool, outcomes: dict[str, Outcome], alerts: tuple[str, ...],
    version: str, lists: dict[str, int] | None, consent: ConsentRecord | None,
    contract: ContractRecord | None,
) -> None:  # fmt: skip
    """The hot-path line is byte for byte what json (ensure_ascii=False, compact) writes of the record:
    control characters, quotes, backslashes, non-ASCII, empty and multi-valued fields alike."""
    f = CallFacts(trunk, at, caller, asserted, privacy, callee, call_id)
    d = Decision(Verdict(action, status, rule, reason), outcomes, monitored, recorded, version, alerts, lists,
                 consent, contract)
    line = encode_decision(f, d, account, mode)
    assert line == (_GENERIC.encode(decision_record(f, d, account, mode)) + "\n").encode()
    assert json.loads(line) == decision_record(f, d, account, mode)


def test_odd_value_types_take_the_generic_path() -> None:
    """A value the template does not write itself (here a status of an int subclass) still gives the line
    json writes."""

    class Status(enum.IntEnum):
        DECLINE = 603

    d = Decision(Verdict("reject", Status.DECLINE, "r", "why"), {}, False, False, "v")
    line = encode_decision(facts(), d, "acme", "enforce")
    assert line == (_GENERIC.encode(decision_record(facts(), d, "acme", "enforce")) + "\n").encode()
    assert b'"status":603,' in line


def test_undecodable_call_id_still_gives_a_valid_line(tmp_path: Path) -> None:
    """A Call-ID with bytes that are not UTF-8 (decoded with surrogateescape by the parser) is escaped, not
    a lost audit line."""
    log = log_for(tmp_path)
    bad = b"abc\xff@host".decode("utf-8", "surrogateescape")
    assert log.log_decision(facts(bad), DECISION, "acme", "enforce")
    log.close()
    rec = json.loads((tmp_path / "audit" / "decisions.jsonl").read_bytes())
    assert rec["call_id"] == bad
    assert rec["call_id"].encode("utf-8", "surrogateescape") == b"abc\xff@host"


def test_readiness_refuses_only_for_a_while_after_a_failed_write(tmp_path: Path) -> None:
    """stop-relaying: not ready just after a failed write; ready again after the hold (only a write can see
    the disk recover, and a load balancer sends none to an unready instance); keep-relaying: always ready."""
    for policy in ("stop-relaying", "keep-relaying"):
        where = tmp_path / policy
        where.mkdir()
        _audit_path_on_dev_full(where)
        log = log_for(where, policy=policy)
        assert not log.refusing_calls()
        assert log.log_decision(facts("lost"), DECISION, "acme", "enforce") is False
        assert log.refusing_calls() == (policy == "stop-relaying")
        log.failed_at -= 31.0  # the hold (READY_RETRY_S, 30 s) is over
        assert not log.refusing_calls()
        log.close()


def _lines(path: Path) -> list[str]:
    return [json.loads(line)["call_id"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("how", ["create", "remove"])
def test_a_file_moved_away_by_logrotate_is_followed_within_a_second(tmp_path: Path, how: str) -> None:
    """logrotate's default (`create`): the file is renamed and a new one created; the next lines must land in
    the new file, not in the renamed one (which logrotate may compress or delete)."""
    log = log_for(tmp_path)
    path = log.path
    assert log.log_decision(facts("before"), DECISION, "acme", "enforce")
    os.replace(path, path.with_name("decisions.jsonl-20261206"))
    if how == "create":
        path.write_text("")
        os.chmod(path, 0o640)
    log._path_checked -= 2 * log.path_check_s  # a second has gone by (no sleep in the test)
    assert log.log_decision(facts("after"), DECISION, "acme", "enforce")
    assert _lines(path) == ["after"]
    assert _lines(path.with_name("decisions.jsonl-20261206")) == ["before"]
    log.close()


def test_within_the_second_a_move_is_not_checked_and_reopen_follows_at_once(tmp_path: Path) -> None:
    log = log_for(tmp_path)
    path = log.path
    log.path_check_s = 3600.0
    assert log.log_decision(facts("a"), DECISION, "acme", "enforce")
    os.replace(path, path.with_name("old"))
    assert log.log_decision(facts("b"), DECISION, "acme", "enforce")  # one stat a second at most: not yet
    assert _lines(path.with_name("old")) == ["a", "b"]
    log.reopen()  # SIGHUP (postrotate) does this
    assert log.log_decision(facts("c"), DECISION, "acme", "enforce")
    assert _lines(path) == ["c"]
    log.close()


def test_copytruncate_restarts_the_size_count(tmp_path: Path) -> None:
    log = log_for(tmp_path, max_bytes=4096, backups=2)
    path = log.path
    log.log_decision(facts("x"), DECISION, "acme", "enforce")
    while path.stat().st_size < 3000:
        log.log_decision(facts("x"), DECISION, "acme", "enforce")
    os.truncate(path, 0)  # logrotate copytruncate
    log._path_checked -= 2 * log.path_check_s
    for _ in range(3):
        log.log_decision(facts("y"), DECISION, "acme", "enforce")
    assert not path.with_name("decisions.jsonl.1").exists()  # no rotation of a nearly empty file
    assert _lines(path)[-3:] == ["y", "y", "y"]
    log.close()


@settings(max_examples=2000, deadline=None)
@given(at=st.floats(min_value=0.0, max_value=253402300799.999, allow_nan=False))
def test_time_field_matches_datetime_isoformat_anywhere(at: float) -> None:
    """The arithmetic date (leap years, centuries, 400-year eras) against the standard library's."""
    from datetime import UTC, datetime

    from sipfilter.audit import iso_ms

    expected = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert iso_ms(at, remember=False) == expected
    assert iso_ms(at) == expected


@pytest.mark.parametrize(
    "day",
    ["1972-02-29", "1999-12-31", "2000-02-29", "2000-03-01", "2026-08-11", "2100-02-28", "2100-03-01",
     "2400-02-29", "9999-12-31"],
)
def test_time_field_on_calendar_edges(day: str) -> None:
    from datetime import datetime

    from sipfilter.audit import iso_ms

    for clock in ("00:00:00", "23:59:59"):
        at = datetime.fromisoformat(f"{day}T{clock}+00:00").timestamp() + 0.25
        assert iso_ms(at, remember=False) == f"{day}T{clock}.250Z"
