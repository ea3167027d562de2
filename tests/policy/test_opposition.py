"""callee.opposition ("never call me again"), a refusal ending the consent, and what a decision rested on
(consent, contract, list versions): the policy engine on a real embedded store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from memstore import MemoryStore
from policy_helpers import CALLEE, NPV, OPEN, call_facts

from sipfilter.policy.engine import PolicyEngine
from sipfilter.policy.verdict import FAIL, PASS, SKIP
from sipfilter.stores.base import ConsentRecord, ContractRecord
from sipfilter.stores.embedded import EmbeddedStore
from sipfilter.stores.importer import SourceInfo
from sipfilter.stores.numberset import NumberSet

DAY = 86400.0
ACCOUNT, NUMBER = "acme-energie", "+33611223344"


@pytest.fixture
async def real(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    s = await EmbeddedStore.open(tmp_path / "store", watch=False)
    for name in ("bloctel", "optouts"):
        await s.put_list(name, NumberSet.from_numbers(["+33699999999"]), SourceInfo(f"{name}.csv", 1, "ab"),
                         imported_at=OPEN - DAY)
    await s.add_consent(ConsentRecord(ACCOUNT, NUMBER, OPEN - 365 * DAY, "form-1"))
    try:
        yield s
    finally:
        await s.close()


async def decide(engine: PolicyEngine, store: object, at: float = OPEN, callee: str = CALLEE):
    return await engine.decide(call_facts(engine, "dialer", NPV, callee, at=at), store, record=False)  # type: ignore[arg-type]


async def test_an_opposition_refuses_every_call_whatever_consent_or_contract(
    engine: PolicyEngine, real: EmbeddedStore
) -> None:
    await real.add_contract(ContractRecord(ACCOUNT, NUMBER, OPEN - 10 * DAY, None, "K-1"))
    assert (await decide(engine, real)).verdict.action == "allow"
    await real.add_opposition(ACCOUNT, NUMBER, OPEN - DAY, source="api")
    d = await decide(engine, real)
    assert (d.verdict.action, d.verdict.status, d.verdict.rule) == ("reject", 603, "callee.opposition")
    assert d.verdict.reason_header() == 'SIP;cause=603;text="callee.opposition"'
    assert "opposed every call" in d.verdict.reason
    d = await decide(engine, real, at=OPEN + 5 * 365 * DAY)  # forever
    assert d.outcomes["callee.opposition"].result == FAIL
    d = await decide(engine, real, at=OPEN - 2 * DAY)  # not before it was said
    assert d.outcomes["callee.opposition"].result == PASS
    await real.undo_opposition(ACCOUNT, NUMBER, "recorded by mistake", OPEN)
    assert (await decide(engine, real)).verdict.action == "allow"


@pytest.mark.parametrize("trunk", [{"prospecting": False}, {"mode": "monitor"}])
async def test_an_opposition_applies_on_every_trunk(
    make_engine: Callable[..., PolicyEngine], real: EmbeddedStore, trunk: dict[str, object]
) -> None:
    await real.add_opposition(ACCOUNT, NUMBER, OPEN - DAY)
    d = await decide(make_engine(**trunk), real)
    assert d.verdict.rule == "callee.opposition"
    assert d.monitored is (trunk.get("mode") == "monitor")


async def test_the_opposition_rule_is_skipped_for_an_invalid_callee(engine: PolicyEngine) -> None:
    d = await decide(engine, MemoryStore(), callee="12")
    assert d.outcomes["callee.opposition"].result == SKIP
    assert "callee.opposition" in engine.rule_ids("dialer")


async def test_a_refusal_ends_the_consent_for_good(engine: PolicyEngine, real: EmbeddedStore) -> None:
    """After the 60-day cooldown, the consent given before the refusal no longer lets the call through."""
    await real.record_refusal(ACCOUNT, NUMBER, OPEN - 70 * DAY)
    d = await decide(engine, real)
    assert (d.verdict.rule, d.outcomes["frequency.refusal"].result) == ("callee.consent", SKIP)
    assert d.consent is None
    await real.add_consent(ConsentRecord(ACCOUNT, NUMBER, OPEN - 5 * DAY, "form-after-refusal"))
    d = await decide(engine, real)
    assert d.verdict.action == "allow"
    assert d.consent is not None and d.consent.proof == "form-after-refusal"


async def test_the_decision_names_its_consent_contract_and_list_versions(
    engine: PolicyEngine, real: EmbeddedStore
) -> None:
    d = await decide(engine, real)
    assert d.verdict.action == "allow"
    assert d.consent == ConsentRecord(ACCOUNT, NUMBER, OPEN - 365 * DAY, "form-1")
    assert d.contract is None
    assert dict(d.lists or {}) == {"bloctel": real.list_info("bloctel").version,  # type: ignore[union-attr]
                                   "optouts": real.list_info("optouts").version}  # type: ignore[union-attr]
    # No consent, a contract in progress: the contract is the basis.
    await real.undo_consent(ACCOUNT, NUMBER, "form-1", None, "test", OPEN)
    await real.add_contract(ContractRecord(ACCOUNT, NUMBER, OPEN - 10 * DAY, None, "K-7"))
    d = await decide(engine, real)
    assert d.verdict.action == "allow" and d.consent is None
    assert d.contract == ContractRecord(ACCOUNT, NUMBER, OPEN - 10 * DAY, None, "K-7")


async def test_a_store_failure_leaves_the_proof_fields_empty(engine: PolicyEngine) -> None:
    store = MemoryStore(fail=True)
    d = await decide(engine, store)
    assert d.verdict.rule == "store.unavailable" and d.lists is None and d.consent is None
