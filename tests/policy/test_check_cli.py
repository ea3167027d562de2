"""`sipfilter check` and `sipfilter config check`: same policy code, words or JSON, exit 0/1/2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from memstore import MemoryStore
from policy_helpers import ROOT, write_config

import sipfilter.stores
from sipfilter.cli import main
from sipfilter.stores.base import ConsentRecord

AT = "2026-09-16T11:00:00+02:00"


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def mem(monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    """Make `open_store` hand out an in-memory store (whatever the stores package provides)."""
    from policy_helpers import ts

    store = MemoryStore()
    store.add_list("bloctel", ["+33699999999"], imported_at=ts(AT) - 86400)
    store.add_list("optouts", [], imported_at=ts(AT) - 86400)
    store.consents.append(ConsentRecord("acme-energie", "+33611223344", ts(AT) - 86400 * 10, "form-1"))

    async def open_memory_store(config: object, *, watch: bool = True) -> MemoryStore:
        return store

    monkeypatch.setattr(sipfilter.stores, "open_store", open_memory_store)
    return store


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_subprocess_right_after_setup(cfg: Path) -> None:
    """The example config with nothing imported: a clear list.stale rejection, exit 1, valid JSON."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sipfilter",
            "check",
            "--config",
            str(cfg),
            "--trunk",
            "dialer",
            "--from",
            "0162123456",
            "--to",
            "sip:0611223344@sipfilter.local;user=phone",
            "--at",
            AT,
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["action"], out["status"], out["rule"]) == ("reject", 603, "list.stale")
    assert "never been imported" in out["reason"]
    assert out["outcomes"]["caller-id.not-npv"]["result"] == "pass"


def test_allow_in_words(capsys: pytest.CaptureFixture[str], cfg: Path, mem: MemoryStore) -> None:
    code, out, _ = run(
        capsys,
        "check",
        "--config",
        str(cfg),
        "--trunk",
        "dialer",
        "--from",
        "01 62 12 34 56",
        "--to",
        "tel:+33-6-11-22-33-44",
        "--at",
        AT,
    )
    assert code == 0
    assert out.startswith("ALLOW")
    assert "→ +33162123456" in out and "→ +33611223344" in out
    assert "pass  callee.dnc.bloctel" in out and "not on 'bloctel' (version 1, 1 numbers" in out
    assert "From +33162123456 is npv" in out
    assert "callee local time Wed 2026-09-16 11:00:00 Europe/Paris" in out
    assert "dry run: no attempt recorded" in out
    assert mem.calls == 0


def test_reject_json_with_sip_headers(
    capsys: pytest.CaptureFixture[str], cfg: Path, mem: MemoryStore
) -> None:
    code, out, _ = run(
        capsys,
        "check",
        "--config",
        str(cfg),
        "--trunk",
        "dialer",
        "--from",
        "0162123456",
        "--to",
        "0699999999",
        "--at",
        AT,
        "--json",
    )
    assert code == 1
    data = json.loads(out)
    assert {"action", "status", "rule", "reason", "outcomes"} <= data.keys()
    assert (data["action"], data["status"], data["rule"]) == ("reject", 603, "callee.dnc.bloctel")
    assert data["outcomes"]["callee.dnc.bloctel"]["result"] == "fail"
    assert data["sip"]["reason_header"] == 'SIP;cause=603;text="callee.dnc.bloctel"'
    assert data["sip"]["warning_header"].startswith('399 sipfilter.local "callee is on a do-not-call list')


def test_record_counts_attempts(capsys: pytest.CaptureFixture[str], cfg: Path, mem: MemoryStore) -> None:
    args = [
        "check",
        "--config",
        str(cfg),
        "--trunk",
        "dialer",
        "--from",
        "0162123456",
        "--to",
        "0611223344",
        "--at",
        AT,
        "--record",
        "--json",
    ]
    for _ in range(4):
        assert run(capsys, *args)[0] == 0
    code, out, _ = run(capsys, *args)
    assert code == 1 and json.loads(out)["rule"] == "frequency.cap"
    code, out, _ = run(capsys, *[a for a in args if a != "--record"])
    assert code == 1 and json.loads(out)["attempt_recorded"] is False


def test_pai_privacy_and_monitor(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, mem: MemoryStore
) -> None:
    cfg = write_config(tmp_path, {"mode": "monitor"})
    code, out, _ = run(  # no --trunk: the config has a single trunk
        capsys,
        "check",
        "--config",
        str(cfg),
        "--from",
        "0162123456",
        "--to",
        "0611223344",
        "--pai",
        "tel:+33612345678",
        "--privacy",
        "none",
        "--at",
        AT,
    )
    assert code == 0
    assert out.startswith("ALLOW (monitor mode: would reject with rule caller-id.mobile)")
    assert "FAIL  caller-id.mobile" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--trunk", "nope"], "no trunk named 'nope'"),
        (["--trunk", "dialer", "--at", "2026-09-16T11:00:00"], "add a UTC offset"),
        (["--trunk", "dialer", "--at", "tomorrow"], "not an ISO-8601"),
    ],
)
def test_errors_exit_2(
    capsys: pytest.CaptureFixture[str], cfg: Path, mem: MemoryStore, args: list[str], words: str
) -> None:
    code, _, err = run(
        capsys, "check", "--config", str(cfg), "--from", "0162123456", "--to", "0611223344", *args
    )
    assert code == 2
    assert words in err


def test_bad_config_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sip: [\n")
    code, _, err = run(capsys, "check", "--config", str(bad), "--trunk", "dialer", "--from", "1", "--to", "2")
    assert code == 2 and f"{bad}:" in err


def test_config_check(capsys: pytest.CaptureFixture[str], cfg: Path, tmp_path: Path) -> None:
    # --no-store: the lists never imported are tests/test_missing_lists.py's
    code, out, _ = run(capsys, "config", "check", "--no-store", "--config", str(cfg))
    assert code == 0 and "OK" in out and "trunk dialer" in out
    listening = next(line for line in out.splitlines() if line.startswith("  listening: "))
    data = yaml.safe_load(cfg.read_text())
    first = data["sip"]["inside"][0]
    assert f"inside {first['transport']} {first['host']}:{first['port']}" in listening, listening
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("mode: enforce", "mode: loud"))
    code, _, err = run(capsys, "config", "check", "--config", str(bad))
    line = bad.read_text().splitlines().index("    mode: loud") + 1
    assert code == 1 and f"{bad}:{line}: trunks.dialer.mode:" in err
    assert "warning:" not in out  # the example is fail-closed
    risky = tmp_path / "risky.yaml"
    risky.write_text(cfg.read_text().replace("on_store_error: reject", "on_store_error: allow"))
    code, out, _ = run(capsys, "config", "check", "--config", str(risky))
    assert code == 0 and "warning: trunk dialer: on_store_error: allow" in out
    data = yaml.safe_load(cfg.read_text())
    data["trunks"]["second"] = dict(data["trunks"]["dialer"], match={"sources": ["127.0.0.1/32"]})
    risky.write_text(yaml.safe_dump(data))
    code, out, _ = run(capsys, "config", "check", "--config", str(risky))
    assert code == 0 and "trunks dialer and second: overlapping match.sources" in out
    secret = tmp_path / "secret.yaml"
    text = cfg.read_text()
    assert "token_file: ../var/secrets/admin.token" in text
    token = "token: s3cr3t-t0ken-s3cr3t-t0ken-s3cr3t"
    secret.write_text(text.replace("token_file: ../var/secrets/admin.token", token))
    code, out, _ = run(capsys, "config", "show", "--config", str(secret))
    assert code == 0 and "s3cr3t" not in out and json.loads(out)["admin"]["token"] == "<redacted>"
    code, out, _ = run(capsys, "config", "show", "--config", str(cfg), "--trunk", "dialer")
    assert code == 0 and json.loads(out)["rules"]["frequency"]["cap"] == 4


def test_check_uses_the_configured_embedded_store(capsys: pytest.CaptureFixture[str], cfg: Path) -> None:
    """Lists imported into the real embedded store (through its importer) are what `check` consults."""
    stores = pytest.importorskip("sipfilter.stores")
    importer = pytest.importorskip("sipfilter.stores.importer")
    import asyncio

    from policy_helpers import ts

    from sipfilter.configure import load_config
    from sipfilter.policy.rulepack import normaliser_for

    config = load_config(cfg)

    async def provision() -> None:
        store = await stores.open_store(config, watch=False)
        try:
            for name, lines in (("bloctel", "0699999999\n06 92 12 34 56\n"), ("optouts", "")):
                src = cfg.parent / f"{name}.txt"
                src.write_text(lines)
                result = importer.read_list(src, normaliser_for(config))
                await store.put_list(name, result.numbers, result.source, imported_at=ts(AT) - 3600)
        finally:
            await store.close()

    asyncio.run(provision())
    base = ["check", "--config", str(cfg), "--from", "0162123456", "--at", AT, "--json"]
    code, out, _ = run(capsys, *base, "--to", "sip:+33699999999@carrier;user=phone")
    assert code == 1 and json.loads(out)["rule"] == "callee.dnc.bloctel"
    code, out, _ = run(capsys, *base, "--to", "+262692123456")  # imported in national form
    data = json.loads(out)
    assert code == 1 and data["rule"] == "time.window"  # 13:00 in Réunion comes first
    assert data["outcomes"]["callee.dnc.bloctel"]["result"] == "fail"
    code, out, _ = run(capsys, *base, "--to", "0611223344")  # not listed, but no consent recorded
    assert code == 1 and json.loads(out)["rule"] == "callee.consent"


@pytest.mark.parametrize(
    ("from_", "to", "rule"),
    [
        ('"<sip:+33162123456@x>" <sip:+33612345678@pbx>', "0611223344", "caller-id.mobile"),
        ("0162123456", "sip:0611223344%3B@h", "number.invalid"),
        ("0162123456", "sip:carrier.example", "number.invalid"),
    ],
)
def test_check_reads_its_arguments_as_the_proxy_reads_a_request(
    capsys: pytest.CaptureFixture[str], cfg: Path, mem: MemoryStore, from_: str, to: str, rule: str
) -> None:
    """A display name is never the caller ID, the callee is the URI's user part: as on the call path."""
    args = ["check", "--config", str(cfg), "--trunk", "dialer", "--from", from_, "--to", to, "--at", AT]
    code, out, _ = run(capsys, *args, "--json")
    assert code == 1
    assert json.loads(out)["rule"] == rule


def test_check_names_an_argument_it_cannot_read(capsys: pytest.CaptureFixture[str], cfg: Path,
                                                 mem: MemoryStore) -> None:  # fmt: skip
    args = ["check", "--config", str(cfg), "--trunk", "dialer", "--from", "<sip:0162123456@h"]
    code, _, err = run(capsys, *args, "--to", "0611223344", "--at", AT)
    assert code == 2
    assert "From" in err and "not a URI, name-addr or number" in err
def test_callee_zone_and_every_candidate_zone(
    capsys: pytest.CaptureFixture[str], cfg: Path, mem: MemoryStore
) -> None:
    base = ["check", "--config", str(cfg), "--trunk", "dialer", "--from", "0162123456", "--at", AT]
    code, out, _ = run(capsys, *base, "--to", "0611223344", "--callee-zone", "America/Cayenne", "--json")
    data = json.loads(out)
    assert (code, data["rule"]) == (1, "time.window")  # 06:00 in Guyane
    assert data["given"]["callee_zone"] == "America/Cayenne"
    assert "America/Cayenne" in data["given"]["callee_local_time"]
    assert "Europe/Paris" in data["given"]["callee_local_time"]
    code, out, _ = run(capsys, *base, "--to", "0692123456")  # Réunion or Mayotte: both local times shown
    assert "Indian/Reunion (RE)" in out and "Indian/Mayotte (YT)" in out
    code, out, _ = run(capsys, *base, "--to", "0611223344", "--callee-zone", "Nowhere", "--json")
    assert json.loads(out)["outcomes"]["time.window"]["reason"].startswith("the callee's time zone 'Nowhere'")
