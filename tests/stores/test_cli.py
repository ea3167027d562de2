"""`sipfilter lists|consent|refusal` end to end on both backends (in-process CLI, real stores)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipfilter.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    data: dict[str, Any] = yaml.safe_load((ROOT / "config" / "sipfilter.yaml").read_text())
    data["rule_packs"] = {"fr": str(ROOT / "config" / "rules" / "fr.yaml")}
    data["store"]["data_dir"] = str(tmp_path / "data")
    data["audit"]["path"] = str(tmp_path / "audit.jsonl")
    if backend == "redis":
        data["store"]["backend"] = "redis"
        data["store"]["redis_url"] = request.getfixturevalue("redis_server").url
    path = tmp_path / "sipfilter.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_lists_lifecycle(config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ("--config", config)
    src = tmp_path / "bloctel.csv"
    src.write_text("NUMERO;DATE\n0612345678;2026-01-01\n0692123456;2026-01-02\n0612;x\n")
    code, _, err = run(capsys, "lists", "import", *c, "--list", "bloctel", str(src))
    assert code == 1 and "line 4" in err and "left unchanged" in err
    code, out, _ = run(capsys, "lists", "show", *c)
    assert code == 0 and "no lists" in out
    code, out, err = run(capsys, "lists", "import", *c, "--list", "bloctel", str(src),
                         "--max-bad-share", "0.5")
    assert code == 0 and "2 numbers" in out, err
    assert "reading" in err  # plain progress lines when not on a terminal
    code, out, _ = run(capsys, "lists", "show", *c, "bloctel", "--json", "--number", "0692123456")
    info = json.loads(out)
    assert code == 0 and info["contains"] is True and info["number"] == "+262692123456"
    assert info["source_name"] == "bloctel.csv" and info["source_size"] == src.stat().st_size
    code, _, _ = run(capsys, "lists", "show", *c, "bloctel", "--number", "0611111111")
    assert code == 3
    extra = tmp_path / "extra.txt"
    extra.write_text("0611111111\n0612345678\n")
    assert run(capsys, "lists", "import", *c, "--list", "bloctel", str(extra), "--add")[0] == 0
    code, out, _ = run(capsys, "lists", "export", *c, "bloctel")
    assert sorted(out.split()) == ["+262692123456", "+33611111111", "+33612345678"]
    assert run(capsys, "lists", "import", *c, "--list", "bloctel", str(extra), "--remove")[0] == 0
    code, out, _ = run(capsys, "lists", "export", *c, "bloctel")
    assert out.split() == ["+262692123456"]
    empty = tmp_path / "truncated.txt"
    empty.write_text("")
    code, _, err = run(capsys, "lists", "import", *c, "--list", "bloctel", str(empty))
    assert code == 1 and "would shrink from 1 to 0" in err
    code, out, _ = run(capsys, "lists", "stats", *c, "--json")
    stats = json.loads(out)
    assert [(x["name"], x["count"]) for x in stats["lists"]] == [("bloctel", 1)]
    assert stats["lists"][0]["version"] == 3
    assert run(capsys, "lists", "delete", *c, "bloctel", "--yes")[0] == 0
    code, _, err = run(capsys, "lists", "export", *c, "bloctel")
    assert code == 1 and "no list named" in err


def test_consent_contract_refusal(config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ("--config", config)
    src = tmp_path / "consents.csv"
    src.write_text("number;granted_at;proof\n0612000100;2026-01-01T10:00:00+01:00;form-1\n0612000101;;\n")
    code, out, err = run(capsys, "consent", "import", *c, str(src))
    assert code == 0 and "2 consents" in out, err
    code, out, _ = run(capsys, "consent", "show", *c, "06 12 00 01 00", "--json")
    shown = json.loads(out)
    assert shown["account"] == "acme-energie"  # the config's only account
    assert [c["proof"] for c in shown["consents"]] == ["form-1"]
    code, out, _ = run(capsys, "consent", "show", *c, "0612000101", "--json")
    assert json.loads(out)["consents"][0]["proof"] == "import:consents.csv:3"
    assert run(capsys, "consent", "revoke", *c, "0612000100")[0] == 0
    assert run(capsys, "consent", "revoke", *c, "0612000100")[0] == 3  # nothing in force
    assert run(capsys, "consent", "add", *c, "0612000102", "--proof", "rec-9",
               "--at", "2026-03-01T09:00:00+01:00", "--hours", "mon-sat 09:00-21:00")[0] == 0
    assert run(capsys, "consent", "contract", "add", *c, "0612000103", "--reference", "K")[0] == 0
    code, out, _ = run(capsys, "consent", "show", *c, "0612000103", "--json")
    assert json.loads(out)["contracts"][0]["reference"] == "K"
    assert run(capsys, "consent", "contract", "end", *c, "0612000103")[0] == 0
    scoped = ("0612000106", "--scope", "energy-supply,insulation")
    assert run(capsys, "consent", "contract", "add", *c, *scoped)[0] == 0
    code, out, _ = run(capsys, "consent", "show", *c, "0612000106", "--json")
    assert json.loads(out)["contracts"][0]["scope"] == ["energy-supply", "insulation"]
    code, _, err = run(capsys, "consent", "contract", "add", *c, "0612000106", "--scope", "energy supply!")
    assert code == 1 and "scope" in err
    zoned = ("0612000107", "--proof", "crm-2", "--time-zone", "Indian/Reunion")
    assert run(capsys, "consent", "add", *c, *zoned)[0] == 0
    code, out, _ = run(capsys, "consent", "show", *c, "0612000107")
    assert "zone Indian/Reunion" in out
    code, _, err = run(capsys, "consent", "add", *c, "0612000107", "--proof", "p", "--time-zone", "Paris")
    assert code == 1 and "not an IANA time zone" in err
    zones = tmp_path / "zones.csv"
    zones.write_text("number;proof;time_zone\n0612000108;z-1;America/Martinique\n0612000109;z-2;Moon/Base\n")
    code, out, err = run(capsys, "consent", "import", *c, str(zones), "--max-bad-share", "0.5")
    assert code == 0 and "1 consents" in out and "Moon/Base" in err
    assert run(capsys, "refusal", "add", *c, "0612000104", "--at", "1780000000")[0] == 0
    code, out, _ = run(capsys, "refusal", "show", *c, "0612000104", "--json")
    assert json.loads(out)["last_refusal"] == 1780000000.0
    code, _, err = run(capsys, "refusal", "add", *c, "banana")
    assert code == 1 and "not a telephone number" in err
    code, _, err = run(capsys, "consent", "add", *c, "0612000105", "--proof", "p", "--at", "noon")
    assert code == 1 and "ISO-8601" in err


def test_progress_bar_on_a_terminal_plain_lines_otherwise() -> None:
    import io

    from sipfilter.commands._store_common import ProgressPrinter

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, plain = Tty(), io.StringIO()
    for stream in (tty, plain):
        p = ProgressPrinter("reading x", stream)
        for done in (0, 250, 500, 750, 1000):
            p(done, 1000)
    assert tty.getvalue().count("\r") == 5 and "[" + "#" * 30 + "]" in tty.getvalue()
    assert tty.getvalue().endswith("\n")
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue() and len(lines) == 5 and lines[-1].startswith("reading x: 100%")


def _events(config: str) -> list[dict[str, Any]]:
    audit = Path(yaml.safe_load(Path(config).read_text())["audit"]["path"])
    return [r for r in map(json.loads, audit.read_text().splitlines()) if "event" in r]


def test_an_account_no_trunk_uses_is_refused(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    c = ("--config", config)
    for argv in (("refusal", "add"), ("opposition", "add"), ("consent", "add", "--proof", "p"),
                 ("consent", "contract", "add"), ("refusal", "undo", "--reason", "r")):
        code, _, err = run(capsys, *argv, *c, "--account", "acme-energei", "0612000100")
        assert code == 1 and "unknown account 'acme-energei'" in err and "acme-energie" in err, (argv, err)
    code, out, err = run(capsys, "refusal", "show", *c, "--account", "acme-energei", "0612000100", "--json")
    assert code == 0 and json.loads(out)["refusals"] == []  # reads answer (past accounts), with a warning
    assert "no trunk uses account 'acme-energei'" in err


def test_refusal_and_opposition_undo_with_audit_lines(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    c = ("--config", config)
    assert run(capsys, "consent", "add", *c, "0612000200", "--proof", "form-1",
               "--at", "2026-01-01T10:00:00+01:00")[0] == 0
    code, out, _ = run(capsys, "refusal", "add", *c, "0612000200", "--at", "2026-02-01T10:00:00+01:00")
    assert code == 0 and "no longer count" in out
    code, out, _ = run(capsys, "consent", "show", *c, "0612000200", "--json")
    assert json.loads(out)["consents"][0]["ended_by"] == "refusal"
    code, _, err = run(capsys, "refusal", "add", *c, "0612000200", "--at", "2999-01-01T00:00:00+00:00")
    assert code == 1 and "in the future" in err
    with pytest.raises(SystemExit):  # --reason is required
        run(capsys, "refusal", "undo", *c, "0612000200")
    assert "--reason" in capsys.readouterr().err
    code, out, _ = run(capsys, "refusal", "undo", *c, "0612000200", "--at", "2026-02-01T10:00:00+01:00",
                       "--reason", "wrong customer")
    assert code == 0 and "refusal undone" in out
    assert run(capsys, "refusal", "undo", *c, "0612000200", "--reason", "again")[0] == 3
    code, out, _ = run(capsys, "consent", "show", *c, "0612000200", "--json")
    assert json.loads(out)["consents"][0]["ended_by"] is None  # the undone refusal no longer ends it
    code, out, _ = run(capsys, "refusal", "show", *c, "0612000200", "--json")
    shown = json.loads(out)
    assert shown["last_refusal"] is None and shown["refusals"][0]["undo_reason"] == "wrong customer"
    assert run(capsys, "opposition", "add", *c, "0612000200")[0] == 0
    code, out, _ = run(capsys, "opposition", "show", *c, "0612000200")
    assert code == 0 and "opposed since" in out
    code, out, _ = run(capsys, "opposition", "undo", *c, "0612000200", "--reason", "other customer")
    assert code == 0 and "opposition undone" in out
    assert run(capsys, "opposition", "undo", *c, "0612000200", "--reason", "again")[0] == 3
    code, _, _ = run(capsys, "consent", "undo", *c, "0612000200", "--proof", "form-1", "--reason", "test")
    assert code == 0
    assert run(capsys, "consent", "undo", *c, "0612000200", "--reason", "nothing left")[0] == 3
    events = _events(config)
    assert [e["event"] for e in events] == ["consent", "refusal", "refusal.undo", "opposition",
                                            "opposition.undo", "consent.undo"]
    assert all(e["source"] == "cli" and e["to"] == "+33612000200" for e in events)
    assert events[2]["reason"] == "wrong customer" and events[5]["consents"][0]["proof"] == "form-1"


def test_an_audit_log_that_cannot_be_written_is_said(config: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(Path(config).read_text())
    (tmp_path / "not-a-directory").write_text("")
    data["audit"]["path"] = str(tmp_path / "not-a-directory" / "audit.jsonl")
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data, sort_keys=False))
    code, out, err = run(capsys, "refusal", "add", "--config", str(broken), "0612000300")
    assert code == 4 and "refusal recorded" in out and "could not be written" in err


def test_audit_report_from_the_cli(config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sipfilter.audit import AuditLog
    from sipfilter.configure import load_config
    from sipfilter.policy.facts import CallFacts
    from sipfilter.policy.numbers import Number
    from sipfilter.policy.verdict import Decision, Verdict
    from sipfilter.stores.base import ConsentRecord

    c = ("--config", config)
    assert run(capsys, "consent", "add", *c, "0612000400", "--proof", "crm-77",
               "--at", "2026-01-01T10:00:00+01:00")[0] == 0
    log = AuditLog(load_config(config).audit)
    at = 1_780_000_000.0
    facts = CallFacts("dialer", at, Number("", "+33162000001", "e164"), (), frozenset(),
                      Number("", "+33612000400", "e164"), "call-1")
    consent = ConsentRecord("acme-energie", "+33612000400", 1767258000.0, "crm-77")
    log.log_decision(facts, Decision(Verdict("allow", 0, "", ""), {}, False, True, "fr", (), {"bloctel": 1},
                                     consent), "acme-energie", "enforce")
    log.close()
    code, out, _ = run(capsys, "audit", *c, "06 12 00 04 00")
    report = json.loads(out)
    assert code == 0 and report["number"] == "+33612000400" and report["account"] == "acme-energie"
    assert [d["consent"]["proof"] for d in report["decisions"]] == ["crm-77"]
    assert report["summary"]["relayed_with_consent"] == 1
    assert [e["event"] for e in report["events"]] == ["consent"]
    code, out, _ = run(capsys, "audit", *c, "0612000400", "--from", "2026-06-01T00:00:00+00:00")
    assert json.loads(out)["decisions"] == []  # the call was on 2026-05-28
    target = tmp_path / "report.csv"
    code, _, err = run(capsys, "audit", *c, "0612000400", "--format", "csv", "--output", str(target))
    assert code == 0 and "1 decisions" in err
    header, *rows = target.read_text().splitlines()
    assert header.startswith("time,kind,call_id") and any(",decision,call-1," in r for r in rows)
    code, _, err = run(capsys, "audit", *c, "0612000400", "--from", "2026-06-01T00:00:00+00:00",
                       "--to", "2026-05-01T00:00:00+00:00")
    assert code == 1 and "before --from" in err
