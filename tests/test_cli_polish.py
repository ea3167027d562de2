"""Command-line manners: a closed pipe is not a crash, times are read one way everywhere (with a hint whose
offset is right for the date), `--quiet` is quiet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "policy"))
from policy_helpers import write_config

from sipfilter.cli import main
from sipfilter.times import iso_utc, parse_instant


def _closed_pipe_run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run `sipfilter ARGS` with a standard output nobody reads any more (`… | head -1` once head exits)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "sipfilter", *args], stdout=write_end,
                              stderr=subprocess.PIPE, timeout=60, check=False)
    finally:
        os.close(write_end)


def test_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    check = _closed_pipe_run(["check", "--config", str(config), "--from", "0162000001", "--to", "0611223344",
                              "--at", "2026-12-01T11:00:00+01:00"])
    assert b"Traceback" not in check.stderr and b"Exception ignored" not in check.stderr, check.stderr
    assert check.returncode == 1  # the verdict's status (a reject: nothing imported), not a crash's
    show = _closed_pipe_run(["config", "show", "--config", str(config)])
    assert b"Traceback" not in show.stderr and b"Exception ignored" not in show.stderr, show.stderr
    assert show.returncode == 0


@pytest.mark.parametrize(("naive", "offset"), [
    ("2026-12-01T11:00:00", "+01:00"),
    ("2026-07-01T11:00:00", "+02:00"),
    ("2026-03-29T11:00:00", "+02:00"),  # the day summer time starts
])
def test_the_offset_hint_is_right_for_the_date(naive: str, offset: str) -> None:
    with pytest.raises(ValueError, match="add a UTC offset") as err:
        parse_instant(naive)
    assert f"e.g. {naive}{offset}, Europe/Paris time on that date" in str(err.value)


def test_instants_are_iso_8601_with_an_offset_or_epoch_seconds() -> None:
    at = parse_instant("2026-12-01T11:00:00+01:00")
    assert parse_instant(str(int(at))) == parse_instant(at) == at
    assert iso_utc(at) == "2026-12-01T10:00:00Z" and iso_utc(None) is None
    for bad in ("tomorrow", "nan", True, None, float("inf")):
        with pytest.raises(ValueError):
            parse_instant(bad)


def test_check_at_accepts_what_refusal_add_at_accepts(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    args = ["check", "--config", str(config), "--from", "0162000001", "--to", "0611223344", "--json"]
    iso = "2026-12-01T11:00:00+01:00"
    main([*args, "--at", iso])
    by_iso = json.loads(capsys.readouterr().out)
    main([*args, "--at", str(parse_instant(iso))])
    by_epoch = json.loads(capsys.readouterr().out)
    assert by_iso["time"] == by_epoch["time"] and by_iso["outcomes"] == by_epoch["outcomes"]
    epoch = str(parse_instant(iso))
    assert main(["refusal", "add", "--config", str(config), "--at", epoch, "0611223344"]) == 0
    assert main([*args, "--at", "2026-12-01T11:00:00"]) == 2
    assert "e.g. 2026-12-01T11:00:00+01:00" in capsys.readouterr().err


def test_lists_import_quiet_prints_nothing_but_errors(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    good = tmp_path / "good.txt"
    good.write_text("0611111111\n0622222222\n")
    base = ["lists", "import", "--config", str(config), "--list", "optouts", "--quiet"]
    assert main([*base, str(good)]) == 0
    assert capsys.readouterr() == ("", "")
    bad = tmp_path / "bad.txt"
    bad.write_text("0611111111\nnot a number\n")
    assert main([*base, str(bad)]) == 1
    err = capsys.readouterr().err
    assert "line 2: 'not a number'" in err and "left unchanged" in err  # a refusal still says why
