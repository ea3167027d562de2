"""callee.dnc.*, list.stale, callee.consent, sector.banned and the contract-in-progress exemption."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from memstore import MemoryStore
from policy_helpers import BEFORE_OPT_IN, CALLEE, NPV, OPEN, call_facts, ts

from sipfilter.policy.engine import PolicyEngine
from sipfilter.policy.verdict import FAIL, PASS, SKIP
from sipfilter.stores.base import ConsentRecord

DAY = 86400.0


async def decide(engine: PolicyEngine, store: MemoryStore, callee: str = CALLEE, at: float = BEFORE_OPT_IN):
    return await engine.decide(call_facts(engine, "dialer", NPV, callee, at=at), store, record=False)


@pytest.mark.parametrize(
    ("callee", "rule"),
    [("0699999999", "callee.dnc.bloctel"), ("+33688888888", "callee.dnc.optouts"), (CALLEE, "")],
)
async def test_dnc_lists(engine: PolicyEngine, store: MemoryStore, callee: str, rule: str) -> None:
    store.add_list("bloctel", store.lists["bloctel"], imported_at=BEFORE_OPT_IN - DAY)
    store.add_list("optouts", store.lists["optouts"], imported_at=BEFORE_OPT_IN - DAY)
    d = await decide(engine, store, callee)
    assert d.verdict.rule == rule
    if rule:
        assert (d.verdict.action, d.verdict.status) == ("reject", 603)
        assert d.verdict.reason_header() == f'SIP;cause=603;text="{rule}"'


async def test_contract_exempts_from_dnc(engine: PolicyEngine, store: MemoryStore) -> None:
    store.add_list("bloctel", ["+33699999999"], imported_at=BEFORE_OPT_IN - DAY)
    store.contracts.add(("acme-energie", "+33699999999"))
    d = await decide(engine, store, "0699999999")
    assert d.verdict.action == "allow"
    assert d.outcomes["callee.dnc.bloctel"].result == PASS
    assert "contract" in d.outcomes["callee.dnc.bloctel"].reason


@pytest.mark.parametrize(
    ("age_days", "on_stale", "rule"),
    [(29.9, "reject", ""), (30.1, "reject", "list.stale"), (45, "allow-and-alert", "")],
)
async def test_stale_bloctel(
    make_engine: Callable[..., PolicyEngine], store: MemoryStore, age_days: float, on_stale: str, rule: str
) -> None:
    engine = make_engine(on_stale_list=on_stale)
    store.add_list("bloctel", [], imported_at=BEFORE_OPT_IN - age_days * DAY)
    store.add_list("optouts", [], imported_at=BEFORE_OPT_IN - 400 * DAY)  # no max_age for the own list
    d = await decide(engine, store)
    assert d.verdict.rule == rule
    if on_stale == "allow-and-alert":
        assert d.alerts and "bloctel" in d.alerts[0]


async def test_never_imported_list_is_stale(engine: PolicyEngine) -> None:
    """Decision documented in the report: a DNC list never imported is `list.stale`, not a config error."""
    d = await decide(engine, MemoryStore())
    assert d.verdict.rule == "list.stale"
    assert "never been imported" in d.verdict.reason
    assert d.outcomes["callee.dnc.bloctel"].result == SKIP


async def test_never_imported_list_allow_and_alert(make_engine: Callable[..., PolicyEngine]) -> None:
    engine = make_engine(on_stale_list="allow-and-alert")
    d = await decide(engine, MemoryStore())
    assert d.verdict.action == "allow"
    assert d.outcomes["callee.dnc.bloctel"].result == SKIP
    assert d.alerts


@pytest.mark.parametrize(
    ("at", "consent", "contract", "rule"),
    [
        (ts("2026-08-10T11:00:00+02:00"), False, False, ""),  # Monday before the opt-in regime
        (ts("2026-08-11T11:00:00+02:00"), False, False, "callee.consent"),  # first day of the regime
        (ts("2026-08-11T11:00:00+02:00"), True, False, ""),
        (ts("2026-08-11T11:00:00+02:00"), False, True, ""),  # contract in progress
    ],
)
async def test_opt_in(
    engine: PolicyEngine, store: MemoryStore, at: float, consent: bool, contract: bool, rule: str
) -> None:
    for name in ("bloctel", "optouts"):
        store.add_list(name, store.lists[name], imported_at=at - DAY)
    if consent:
        store.consents.append(ConsentRecord("acme-energie", "+33611223344", at - 10 * DAY, "form-7"))
    if contract:
        store.contracts.add(("acme-energie", "+33611223344"))
    d = await decide(engine, store, at=at)
    assert d.verdict.rule == rule
    assert d.outcomes["callee.consent"].result == (
        FAIL if rule else (SKIP if at < ts("2026-08-11T00:00:00+02:00") else PASS)
    )


async def test_revoked_consent_and_other_account(engine: PolicyEngine, store: MemoryStore) -> None:
    store.consents.append(
        ConsentRecord("acme-energie", "+33611223344", OPEN - 10 * DAY, "f", revoked_at=OPEN - DAY)
    )
    store.consents.append(ConsentRecord("other-account", "+33611223344", OPEN - 10 * DAY, "g"))
    d = await decide(engine, store, at=OPEN)
    assert d.verdict.rule == "callee.consent"


async def test_non_prospecting_trunk_skips_consent_hours_and_frequency(
    make_engine: Callable[..., PolicyEngine], store: MemoryStore
) -> None:
    engine = make_engine(prospecting=False)
    d = await decide(engine, store, at=ts("2026-09-20T23:00:00+02:00"))  # Sunday night, no consent
    assert d.verdict.action == "allow"
    for rule in ("callee.consent", "time.window", "time.holiday", "frequency.cap"):
        assert d.outcomes[rule].result == SKIP


@pytest.mark.parametrize(("contract", "rule"), [(False, "sector.banned"), (True, "")])
async def test_banned_sector(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore, contract: bool, rule: str
) -> None:
    engine = make_engine(sector="energy-renovation")
    if contract:
        consent_all.contracts.add(("acme-energie", "+33611223344"))
    d = await decide(engine, consent_all, at=OPEN)  # consent alone does not lift the ban
    assert d.verdict.rule == rule


async def test_banned_sector_only_for_prospecting(
    make_engine: Callable[..., PolicyEngine], store: MemoryStore
) -> None:
    engine = make_engine(sector="energy-renovation", prospecting=False)
    d = await decide(engine, store, at=OPEN)
    assert d.verdict.action == "allow" and d.outcomes["sector.banned"].result == SKIP


async def test_sector_not_banned(make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore) -> None:
    engine = make_engine(sector="insurance")
    d = await decide(engine, consent_all, at=OPEN)
    assert d.verdict.action == "allow"
    assert d.outcomes["sector.banned"].result == PASS


async def test_per_rule_answer_override(make_engine: Callable[..., PolicyEngine], store: MemoryStore) -> None:
    engine = make_engine(overrides={"answers": {"callee.dnc.bloctel": {"status": 608, "text": "Bloctel"}}})
    store.add_list("bloctel", ["+33699999999"], imported_at=BEFORE_OPT_IN - DAY)
    d = await decide(engine, store, "0699999999")
    assert (d.verdict.status, d.verdict.rule) == (608, "callee.dnc.bloctel")
    assert d.verdict.reason.startswith("Bloctel")
