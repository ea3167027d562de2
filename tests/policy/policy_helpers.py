"""Shared constants and helpers of the policy tests (a uniquely named module: `conftest` is not importable
reliably when several test directories have one)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from sipfilter.b2bua.facts import identities_from_text
from sipfilter.policy.facts import CallFacts

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "sipfilter.yaml"
NPV = "0162123456"  # an NPV caller ID
CALLEE = "0611223344"  # a metropolitan mobile callee


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# A Wednesday in the opt-in regime at 11:00 Paris time: every time rule passes.
OPEN = ts("2026-09-16T11:00:00+02:00")
# Same, before the opt-in regime (consent not required).
BEFORE_OPT_IN = ts("2026-06-10T11:00:00+02:00")


def write_config(tmp_path: Path, trunk: dict[str, Any] | None = None, **top: Any) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["rule_packs"] = {"fr": str(ROOT / "config" / "rules" / "fr.yaml")}
    data["store"]["data_dir"] = str(tmp_path / "data")
    data["audit"]["path"] = str(tmp_path / "audit.jsonl")
    if trunk:
        data["trunks"]["dialer"].update(copy.deepcopy(trunk))
    data.update(top)
    path = tmp_path / "sipfilter.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def call_facts(engine: Any, trunk: str, from_: str, to: str, pai: Sequence[str] = (),
               privacy: Sequence[str] = (), at: float = 0.0, call_id: str = "",
               callee_zone: str = "") -> CallFacts:  # fmt: skip
    """CallFacts of a call with these values, built as `sipfilter check` builds them: URIs and name-addrs
    through the SIP core and the B2BUA's readers (sipfilter.b2bua.facts), bare numbers as user parts."""
    reader = engine.reader(trunk)
    return identities_from_text(reader, trunk, from_, to, pai, privacy, at, call_id, callee_zone).facts
