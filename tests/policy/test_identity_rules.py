"""The identity.* rules in the engine: RFC 8224 §6.2.2 answers, monitor and enforce, rule-pack answers."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from memstore import MemoryStore
from policy_helpers import CALLEE, NPV, OPEN, call_facts, write_config

from sipfilter.config import ConfigError
from sipfilter.configure import load_config
from sipfilter.policy.engine import PolicyEngine
from sipfilter.policy.identity import RULES, IdentityFinding

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "identity"))
from sti_pki import make_pki


@pytest.mark.parametrize(
    ("rule", "status", "text"),
    [
        ("identity.missing", 428, "Use Identity Header"),
        ("identity.bad-info", 436, "Bad Identity Info"),
        ("identity.unsupported-credential", 437, "Unsupported Credential"),
        ("identity.invalid", 438, "Invalid Identity Header"),
        ("identity.stale", 403, "Stale Date"),
    ],
)
async def test_each_failure_gets_the_rfc_answer(
    engine: PolicyEngine, consent_all: MemoryStore, rule: str, status: int, text: str
) -> None:
    found = IdentityFinding(rule, "why it failed", present=rule != "identity.missing")
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN), consent_all, identity=found)
    assert (d.verdict.action, d.verdict.status, d.verdict.rule) == ("reject", status, rule)
    assert d.verdict.reason == f"{text}: why it failed"
    assert d.failed == [rule] and not d.attempt_recorded  # refused: the attempt does not count
    assert set(RULES) <= set(d.outcomes)


async def test_a_verified_passport_passes_every_identity_rule(
    engine: PolicyEngine, consent_all: MemoryStore
) -> None:
    d = await engine.decide(
        call_facts(engine, "dialer", NPV, CALLEE, at=OPEN),
        consent_all,
        identity=IdentityFinding("", "", attest="A"),
    )
    assert d.verdict.action == "allow" and d.attempt_recorded
    assert all(d.outcomes[rule].result == "pass" for rule in RULES)
    absent = await engine.decide(
        call_facts(engine, "dialer", NPV, CALLEE, at=OPEN),
        consent_all,
        identity=IdentityFinding("", "", present=False),
    )
    assert absent.verdict.action == "allow"
    assert absent.outcomes["identity.missing"].result == "pass"
    assert absent.outcomes["identity.invalid"].result == "skip"


async def test_verify_monitor_mode_relays_and_keeps_an_alert(
    engine: PolicyEngine, consent_all: MemoryStore
) -> None:
    found = IdentityFinding("identity.invalid", "signature does not verify", enforce=False)
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN), consent_all, identity=found)
    assert d.verdict.action == "allow" and not d.monitored and d.attempt_recorded
    assert d.failed == ["identity.invalid"]  # audited as a failure all the same
    assert d.alerts == ("identity.invalid: signature does not verify (identity.verify.mode: monitor)",)


async def test_a_monitor_trunk_relays_identity_failures_like_any_rule(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore
) -> None:
    engine = make_engine(mode="monitor")
    found = IdentityFinding("identity.stale", "iat 300 s old")
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN), consent_all, identity=found)
    assert d.verdict.action == "allow" and d.monitored and d.verdict.rule == "identity.stale"


async def test_other_rules_come_first_when_they_fail_earlier(
    engine: PolicyEngine, consent_all: MemoryStore
) -> None:
    found = IdentityFinding("identity.invalid", "bad")
    d = await engine.decide(
        call_facts(engine, "dialer", "0612345678", CALLEE, at=OPEN), consent_all, identity=found
    )
    assert d.verdict.rule == "caller-id.mobile" and set(d.failed) == {"caller-id.mobile", "identity.invalid"}


def test_rule_pack_answers_and_freshness(tmp_path: Path) -> None:
    overrides = {
        "identity": {"max_age_s": 120},
        "answers": {"identity.invalid": {"status": 603, "text": "no"}},
    }
    config = load_config(write_config(tmp_path, {"overrides": overrides}))
    rs = config.rules["dialer"]
    assert rs.identity.max_age_s == 120
    assert (rs.answer("identity.invalid").status, rs.answer("identity.stale").status) == (603, 403)
    bad = {"overrides": {"answers": {"callee.consent": {"status": 438}}}}
    with pytest.raises(ConfigError, match="expected one of 403"):
        load_config(write_config(tmp_path, bad))
    with pytest.raises(ConfigError, match="max_age_s"):
        load_config(write_config(tmp_path, {"overrides": {"identity": {"max_age_s": 0}}}))


def test_rule_ids_name_the_identity_rules_of_verifying_trunks(tmp_path: Path) -> None:
    files = make_pki().write(tmp_path / "sti")
    plain = PolicyEngine(load_config(write_config(tmp_path)))
    assert not set(RULES) & set(plain.rule_ids("dialer"))
    verifying = PolicyEngine(
        load_config(write_config(tmp_path, {"identity": {"verify": {"ca": str(files["root"])}}}))
    )
    assert set(RULES) <= set(verifying.rule_ids("dialer"))
