"""Fixtures for policy tests: the example config (optionally with trunk changes) and an in-memory store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from memstore import MemoryStore
from policy_helpers import OPEN, write_config

from sipfilter.config import Config
from sipfilter.configure import load_config
from sipfilter.policy.engine import PolicyEngine


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
