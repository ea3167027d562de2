"""Fixtures for policy tests: the example config (optionally with trunk changes) and an in-memory store."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from memstore import MemoryStore

from sipfilter.config import Config, load_config
from sipfilter.policy.engine import PolicyEngine

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


@pytest.fixture
def make_engine(tmp_path: Path) -> Callable[..., PolicyEngine]:
    def make(**trunk: Any) -> PolicyEngine:
        return PolicyEngine(load_config(write_config(tmp_path, trunk)))

    return make


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path))


@pytest.fixture
def engine(config: Config) -> PolicyEngine:
    return PolicyEngine(config)


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.add_list("bloctel", ["+33699999999"], imported_at=OPEN - 86400)
    s.add_list("optouts", ["+33688888888"], imported_at=OPEN - 86400)
    return s


@pytest.fixture
def consent_all(store: MemoryStore) -> MemoryStore:
    """Consent for the default callee, so opt-in does not hide the rule under test."""
    from sipfilter.stores.base import ConsentRecord

    store.consents.append(ConsentRecord("acme-energie", "+33611223344", OPEN - 365 * 86400, "form-1"))
    return store
