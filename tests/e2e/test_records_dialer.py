"""What the consumer said, reported by the dialer on its BYE, and proof on demand, end to end: SIPp dialer →
`sipfilter run` → SIPp carrier, the record in the real store and audit log, then `sipfilter audit`.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from sipfilter_provision import ACCOUNT, deploy
from sipp_harness import SippFactory, free_ports, sipfilter_available, sipfilter_cli

_MISSING = sipfilter_available()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

CALLER = "+33162000001"
OPPOSED, REFUSED, QUIET = "+33612000001", "+33612000002", "+33612000003"


def _dial(sipp: SippFactory, tmp_path: Path, inside: str, name: str,
          rows: list[tuple[str, str, str]]) -> list[Any]:
    """Place one call per (callee, expected, objection) and return the outcomes, in order."""
    path = tmp_path / f"{name}.csv"
    lines = "".join(f"{CALLER};{callee};{expected};{objection};\n" for callee, expected, objection in rows)
    path.write_text("SEQUENTIAL\n" + lines, encoding="ascii")
    dialer = sipp("dialer_uac_objection.xml", name=name, local_port=free_ports(1)[0], remote=inside,
                  calls=len(rows), csv_file=path, pause_ms=100, timeout_s=30, rate=20).start()
    run = dialer.wait()
    problems = [p for o in run.outcomes if (p := o.problem())]
    assert not problems and len(run.outcomes) == len(rows), "\n".join(problems) + "\n" + run.summary()
    return list(run.outcomes)


def _events(audit: Path) -> list[dict[str, Any]]:
    lines = audit.read_text(encoding="utf-8").splitlines() if audit.exists() else []
    return [rec for rec in map(json.loads, lines) if "event" in rec and "to" in rec]


def test_objections_on_the_dialers_bye_are_recorded_enforced_and_proven(sipp: SippFactory,
                                                                        tmp_path: Path) -> None:
    deployment = deploy(tmp_path / "sipfilter", trunk={"objection_header": "X-Sipfilter-Objection"})
    config = str(deployment.sipfilter.config_path)
    audit = tmp_path / "sipfilter" / "audit" / "decisions.jsonl"
    try:
        carrier = sipp("carrier_uas.xml", local_port=deployment.carrier_ports[0], calls=1_000_000,
                       pause_ms=50, timeout_s=60).start()
        carrier.wait_listening()
        _dial(sipp, tmp_path, deployment.inside, "first",
              [(OPPOSED, "relay", "opposition"), (REFUSED, "relay", "refusal"), (QUIET, "relay", "none")])
        deadline = time.monotonic() + 10
        while len(_events(audit)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        events = {e["event"]: e for e in _events(audit)}
        assert set(events) == {"opposition", "refusal"}, deployment.sipfilter.log_tail()
        assert events["opposition"]["to"] == OPPOSED and events["opposition"]["source"] == "dialer:dialer"
        assert events["refusal"]["to"] == REFUSED and events["refusal"]["account"] == ACCOUNT
        # The next calls: the opposition refuses with its own rule; the refusal ended the consent.
        _dial(sipp, tmp_path, deployment.inside, "second",
              [(OPPOSED, "603 callee.opposition", "none"), (REFUSED, "603 callee.consent", "none"),
               (QUIET, "relay", "none")])
        carrier_run = carrier.finish(grace_s=15)
    finally:
        deployment.sipfilter.stop()
    # The header is for sipfilter alone: never relayed, although the trunk passes X-* headers.
    carrier_log = next(carrier_run.workdir.glob("*_messages.log")).read_text(errors="replace")
    assert "BYE sip:" in carrier_log and "X-Sipfilter-Objection" not in carrier_log

    report = json.loads(sipfilter_cli(["audit", "--config", config, OPPOSED]).stdout)
    assert [(d["action"], d["rule"]) for d in report["decisions"]] == [("allow", ""),
                                                                       ("reject", "callee.opposition")]
    first = report["decisions"][0]
    assert first["consent"]["proof"].startswith("import:consents.csv:")
    assert first["consent"]["from"] == "audit"
    assert set(first["lists"]) == {"bloctel", "optouts"}
    assert [o["source"] for o in report["oppositions"]] == ["dialer:dialer"]
    assert report["consents"][0]["ended_by"] == "opposition"
    assert [e["event"] for e in report["events"]] == ["opposition"]
    assert {name: [v["version"] for v in versions] for name, versions in report["lists"].items()} == {
        name: [version] for name, version in first["lists"].items()}
    assert report["summary"] == {"decisions": 2, "relayed": 1, "refused": 1, "relayed_with_consent": 1,
                                 "relayed_with_contract": 0, "relayed_without_consent_or_contract": 0}
    rows = list(csv.DictReader(io.StringIO(sipfilter_cli(["audit", "--config", config, OPPOSED, "--format",
                                                           "csv"]).stdout)))
    kinds = [r["kind"] for r in rows]
    assert kinds.count("decision") == 2 and "opposition" in kinds and "audit:opposition" in kinds
    # A mistaken opposition is undone, and the undo is in the audit log.
    sipfilter_cli(["opposition", "undo", "--config", config, OPPOSED, "--reason", "wrong number keyed"])
    undo = [e for e in _events(audit) if e["event"] == "opposition.undo"]
    assert len(undo) == 1 and undo[0]["reason"] == "wrong number keyed" and undo[0]["source"] == "cli"
