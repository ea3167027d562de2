"""A consent granted after the call time still refuses the call (callee.consent), and says why: otherwise a
back-dated `sipfilter check` reads as if no consent had been recorded at all."""

from __future__ import annotations

from memstore import MemoryStore
from policy_helpers import CALLEE, NPV, OPEN, call_facts

from sipfilter.policy.engine import PolicyEngine
from sipfilter.stores.base import ConsentRecord

DAY = 86400.0


async def test_consent_granted_after_the_call_time_says_so(engine: PolicyEngine, store: MemoryStore) -> None:
    store.consents.append(ConsentRecord("acme-energie", "+33611223344", OPEN + DAY, "form-7"))
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN), store, record=False)
    assert d.verdict.rule == "callee.consent"
    assert d.outcomes["callee.consent"].reason == (
        "the consent of +33611223344 for account 'acme-energie' was granted at 2026-09-17T09:00:00Z, "
        "after the call time")
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN + 2 * DAY), store, record=False)
    assert d.outcomes["callee.consent"].result == "pass"


async def test_no_consent_at_all_is_said_as_before(engine: PolicyEngine, store: MemoryStore) -> None:
    revoked = ConsentRecord("acme-energie", "+33611223344", OPEN + DAY, "f", revoked_at=OPEN + 2 * DAY)
    store.consents.append(revoked)
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN), store, record=False)
    reason = d.outcomes["callee.consent"].reason
    assert reason == "no consent recorded for +33611223344 by account 'acme-energie'"
