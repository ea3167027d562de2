"""caller-id.* rules: which presented/asserted numbers pass, and which rule refuses, on automated trunks and
on trunks with `automated: false` (every ban but the NPV requirement applies to them too)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from memstore import MemoryStore
from policy_helpers import CALLEE, OPEN, call_facts

from sipfilter.policy.engine import PolicyEngine
from sipfilter.policy.verdict import FAIL, PASS


@pytest.mark.parametrize(
    ("caller", "rule"),
    [
        ("0162123456", ""),  # NPV 01 62
        ("0163999999", ""),
        ("0270123456", ""),
        ("0271123456", ""),
        ("0377123456", ""),
        ("0378123456", ""),
        ("0424123456", ""),
        ("0425123456", ""),
        ("0568123456", ""),
        ("0569123456", ""),
        ("0948123456", ""),
        ("0949123456", ""),
        ("0947512345", ""),  # overseas NPV, national form
        ("+590947512345", ""),  # overseas NPV, E.164 form (+590 9475 xxxxx)
        ("+262947812345", ""),
        ("0800123456", ""),  # 080x free special number
        ("0809123456", ""),
        ("3010", ""),  # 3BPQ short number
        ("sip:3179@dialer.local", ""),
        ("3299", "caller-id.premium"),  # only 30PQ/31PQ are allowed 3BPQ caller IDs (arrêté 5 juillet 2016)
        ("118218", "caller-id.premium"),  # 118XYZ: banned
        ("sip:118712@dialer.local", "caller-id.premium"),
        ("0161123456", "caller-id.not-npv"),  # plain geographic
        ("0145123456", "caller-id.not-npv"),
        ("0412345678", "caller-id.not-npv"),
        ("0937123456", "caller-id.not-npv"),  # technical-platform 09 37: not NPV
        ("0912345678", "caller-id.not-npv"),
        ("0262123456", "caller-id.not-npv"),  # Réunion geographic
        ("0596123456", "caller-id.invalid"),  # Martinique's block, a range no territory lists
        ("0612345678", "caller-id.mobile"),
        ("0761234567", "caller-id.mobile"),
        ("0712345678", "caller-id.invalid"),  # 07 1x is not assigned: not a valid number
        ("0709212345", "caller-id.mobile"),  # Réunion mobile in 07 09 2x
        ("+33612345678", "caller-id.mobile"),
        ("0692123456", "caller-id.mobile"),  # Réunion mobile
        ("0696123456", "caller-id.mobile"),  # Martinique mobile
        ("0899123456", "caller-id.premium"),
        ("0891123456", "caller-id.premium"),
        ("0810123456", "caller-id.premium"),  # 081/082: reject until a legal check says otherwise
        ("0820123456", "caller-id.premium"),
        ("+447911123456", "caller-id.not-npv"),  # foreign
        ("sip:anonymous@anonymous.invalid", "caller-id.anonymous"),
        ("sip:Restricted@carrier.example", "caller-id.anonymous"),
        ("sip:carrier.example", "caller-id.anonymous"),
        ("sip:alice@example.com", "caller-id.invalid"),
        ("016212", "caller-id.invalid"),
    ],
)
async def test_from_alone(engine: PolicyEngine, consent_all: MemoryStore, caller: str, rule: str) -> None:
    d = await engine.decide(call_facts(engine, "dialer", caller, CALLEE, at=OPEN), consent_all)
    assert d.verdict.rule == rule, d.outcomes
    if rule:
        assert d.verdict.action == "reject"
        assert d.verdict.status == 403
        assert d.outcomes[rule].result == FAIL
        assert d.attempt_recorded is False
    else:
        assert d.verdict.action == "allow"
        assert all(d.outcomes[r].result == PASS for r in d.outcomes if r.startswith("caller-id."))


@pytest.mark.parametrize(
    ("pai", "privacy", "rule"),
    [
        (["sip:+33162123456@carrier;user=phone"], [], ""),
        (["sip:+33612345678@carrier;user=phone"], [], "caller-id.mobile"),  # asserted identity is checked too
        (["<sip:+33162123456@c>, <tel:+33612345678>"], [], "caller-id.mobile"),  # every PAI value
        (["<sip:+33162123456@c>", "<tel:+33899123456>"], [], "caller-id.premium"),
        ([], ["id"], "caller-id.anonymous"),
        ([], ["header"], "caller-id.anonymous"),
        ([], ["id;critical"], "caller-id.anonymous"),
        ([], ["none"], ""),
        (["sip:+33162123456@carrier"], ["id"], "caller-id.anonymous"),
        (["sip:anonymous@anonymous.invalid"], [], "caller-id.anonymous"),
    ],
)
async def test_pai_and_privacy(
    engine: PolicyEngine, consent_all: MemoryStore, pai: list[str], privacy: list[str], rule: str
) -> None:
    d = await engine.decide(
        call_facts(engine, "dialer", "0162123456", CALLEE, pai=pai, privacy=privacy, at=OPEN), consent_all
    )
    assert d.verdict.rule == rule, d.outcomes


@pytest.mark.parametrize(
    ("caller", "privacy", "rule"),
    [
        ("0145123456", [], ""),  # geographic: a human agent may present it (NPV is for automated calls)
        ("0912345678", [], ""),
        ("0262123456", [], ""),
        ("0162123456", [], ""),
        ("0800123456", [], ""),
        ("3010", [], ""),
        ("sip:anonymous@anonymous.invalid", [], "caller-id.anonymous"),  # L221-17: never masked
        ("0145123456", ["id"], "caller-id.anonymous"),
        ("0899123456", [], "caller-id.premium"),  # 089 (arrêté of 5 July 2016)
        ("3299", [], "caller-id.premium"),  # a 3BPQ other than 30PQ/31PQ
        ("3617", [], "caller-id.premium"),
        ("118218", [], "caller-id.premium"),  # 118XYZ
        ("0612345678", [], "caller-id.mobile"),  # a call centre may not present a mobile number
        ("0692123456", [], "caller-id.mobile"),
        ("sip:alice@example.com", [], "caller-id.invalid"),
        ("+447911123456", [], "caller-id.not-npv"),  # foreign: no text allows it ([U], conservative)
    ],
)
async def test_manual_trunk_still_refuses_the_bans_on_every_professional(
    make_engine: Callable[..., PolicyEngine],
    consent_all: MemoryStore,
    caller: str,
    privacy: list[str],
    rule: str,
) -> None:
    engine = make_engine(automated=False)
    facts = call_facts(engine, "dialer", caller, CALLEE, privacy=privacy, at=OPEN)
    d = await engine.decide(facts, consent_all)
    assert d.verdict.rule == rule, d.outcomes
    if rule:
        assert (d.verdict.action, d.verdict.status) == ("reject", 403)
        assert d.outcomes[rule].result == FAIL
    else:
        assert d.verdict.action == "allow"
        assert all(o.result == PASS for r, o in d.outcomes.items() if r.startswith("caller-id."))


async def test_manual_trunk_checks_its_authorised_caller_ids(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore
) -> None:
    engine = make_engine(automated=False, lists={"dnc": ["bloctel"], "authorised_caller_ids": ["+33145*"]})
    d = await engine.decide(call_facts(engine, "dialer", "0145123456", CALLEE, at=OPEN), consent_all)
    assert d.verdict.action == "allow"
    d = await engine.decide(call_facts(engine, "dialer", "0146123456", CALLEE, at=OPEN), consent_all)
    assert d.verdict.rule == "caller-id.unauthorised"


async def test_authorised_list_inline(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore
) -> None:
    engine = make_engine(lists={"dnc": ["bloctel"], "authorised_caller_ids": ["+33162123456", "+33163*"]})
    for caller, rule in (("0162123456", ""), ("0163000001", ""), ("0162123457", "caller-id.unauthorised")):
        d = await engine.decide(call_facts(engine, "dialer", caller, CALLEE, at=OPEN), consent_all)
        assert d.verdict.rule == rule


async def test_authorised_list_from_store(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore
) -> None:
    engine = make_engine(lists={"dnc": ["bloctel"], "authorised_caller_ids": "contract-clis"})
    d = await engine.decide(call_facts(engine, "dialer", "0162123456", CALLEE, at=OPEN), consent_all)
    assert d.verdict.rule == "caller-id.unauthorised"
    assert "never been imported" in d.verdict.reason
    consent_all.add_list("contract-clis", ["+33162123456"])
    d = await engine.decide(call_facts(engine, "dialer", "0162123456", CALLEE, at=OPEN), consent_all)
    assert d.verdict.action == "allow"
    d = await engine.decide(call_facts(engine, "dialer", "0162000000", CALLEE, at=OPEN), consent_all)
    assert d.verdict.rule == "caller-id.unauthorised"


async def test_special_rate_can_be_allowed_by_override(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore
) -> None:
    engine = make_engine(overrides={"caller_id": {"categories": {"special-rate": {"allow": True}}}})
    d = await engine.decide(call_facts(engine, "dialer", "0810123456", CALLEE, at=OPEN), consent_all)
    assert d.verdict.action == "allow"
    d = await engine.decide(call_facts(engine, "dialer", "0899123456", CALLEE, at=OPEN), consent_all)
    assert d.verdict.rule == "caller-id.premium"


async def test_pai_mismatch_when_enabled(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore
) -> None:
    engine = make_engine(overrides={"caller_id": {"pai_must_match_from": True}})
    d = await engine.decide(
        call_facts(engine, "dialer", "0162123456", CALLEE, pai=["tel:+33163000000"], at=OPEN), consent_all
    )
    assert d.verdict.rule == "caller-id.pai-mismatch"
    d = await engine.decide(
        call_facts(engine, "dialer", "0162123456", CALLEE, pai=["tel:+33162123456"], at=OPEN), consent_all
    )
    assert d.verdict.action == "allow"
