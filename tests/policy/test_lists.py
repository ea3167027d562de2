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


# -- a contract in progress: never against an objection, only for its object ---------------------------------


async def test_contract_never_exempts_from_the_company_s_own_opt_outs(
    engine: PolicyEngine, consent_all: MemoryStore
) -> None:
    """An objection is final (L221-16, GDPR art. 21(3)): the callee said no to this company."""
    consent_all.add_list("optouts", ["+33611223344"], imported_at=OPEN - DAY)
    consent_all.contracts.add(("acme-energie", "+33611223344"))
    d = await decide(engine, consent_all, at=OPEN)
    assert d.verdict.rule == "callee.dnc.optouts"
    assert d.outcomes["callee.dnc.optouts"].result == FAIL


async def test_contract_does_not_exempt_from_a_list_the_pack_does_not_name(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore
) -> None:
    engine = make_engine(lists={"dnc": ["bloctel", "optouts", "internal"]})
    consent_all.add_list("internal", ["+33611223344"], imported_at=OPEN - DAY)
    consent_all.contracts.add(("acme-energie", "+33611223344"))
    d = await decide(engine, consent_all, at=OPEN)
    assert d.verdict.rule == "callee.dnc.internal"


@pytest.mark.parametrize(
    ("purpose", "scope", "rule"),
    [
        (None, None, ""),  # no purpose on the trunk: any contract in progress (the documented default)
        (None, ("insurance",), ""),
        ("energy-supply", ("energy-supply",), ""),
        ("energy-supply", ("energy-supply", "energy-services"), ""),
        ("energy-supply", ("insurance",), "callee.consent"),  # a contract about something else
        ("energy-supply", None, "callee.consent"),  # a contract whose object is not recorded
    ],
)
async def test_contract_exempts_from_consent_only_for_its_object(
    make_engine: Callable[..., PolicyEngine],
    store: MemoryStore,
    purpose: str | None,
    scope: tuple[str, ...] | None,
    rule: str,
) -> None:
    engine = make_engine(purpose=purpose)
    store.contracts.add(("acme-energie", "+33611223344"))
    if scope is not None:
        store.contract_scopes[("acme-energie", "+33611223344")] = scope
    d = await decide(engine, store, at=OPEN)
    assert d.verdict.rule == rule, d.outcomes["callee.consent"]
    if not rule and purpose:
        assert purpose in d.outcomes["callee.consent"].reason


@pytest.mark.parametrize(
    ("scope", "rule"), [(("energy-supply",), ""), (("insurance",), "callee.dnc.bloctel")]
)
async def test_contract_exempts_from_bloctel_only_for_its_object(
    make_engine: Callable[..., PolicyEngine], store: MemoryStore, scope: tuple[str, ...], rule: str
) -> None:
    engine = make_engine(purpose="energy-supply")
    store.add_list("bloctel", ["+33699999999"], imported_at=BEFORE_OPT_IN - DAY)
    store.contracts.add(("acme-energie", "+33699999999"))
    store.contract_scopes[("acme-energie", "+33699999999")] = scope
    d = await decide(engine, store, "0699999999")
    assert d.verdict.rule == rule


# -- Bloctel after the end of its concession (10 August 2026) ----------------------------------------------

LAST_BLOCTEL = ts("2026-08-03T09:00:00+02:00")  # the last extraction an operator could download


@pytest.mark.parametrize(
    ("at", "rule"),
    [
        (ts("2026-08-10T11:00:00+02:00"), ""),  # 7 days old: fresh
        (ts("2026-08-10T19:59:59+02:00"), ""),
        (ts("2026-08-11T11:00:00+02:00"), ""),  # the service has ended: its age no longer matters
        (ts("2026-12-01T11:00:00+01:00"), ""),
        (ts("2027-06-01T11:00:00+02:00"), ""),
    ],
)
async def test_bloctel_s_last_extraction_stops_going_stale(
    engine: PolicyEngine, consent_all: MemoryStore, at: float, rule: str
) -> None:
    consent_all.add_list("bloctel", ["+33699999999"], imported_at=LAST_BLOCTEL)
    consent_all.add_list("optouts", [], imported_at=LAST_BLOCTEL)
    consent_all.consents.append(ConsentRecord("acme-energie", "+33699999999", at - 10 * DAY, "f"))
    d = await decide(engine, consent_all, at=at)
    assert d.verdict.rule == rule, d.verdict.reason
    assert d.outcomes["list.stale"].result == PASS
    # Its oppositions still refuse: an objection the consumer expressed is not withdrawn by the end of the
    # service, consent or not.
    d = await decide(engine, consent_all, "0699999999", at=at)
    assert d.verdict.rule == "callee.dnc.bloctel"


@pytest.mark.parametrize(
    ("at", "rule"),
    [
        (ts("2026-08-10T19:59:59+02:00"), ""),  # the service's last day: Bloctel's contract exemption
        (ts("2026-08-11T10:00:00+02:00"), "callee.dnc.bloctel"),  # then a plain objection, final
        (ts("2027-03-01T11:00:00+01:00"), "callee.dnc.bloctel"),
    ],
)
async def test_bloctel_s_contract_exemption_ended_with_the_service(
    engine: PolicyEngine, store: MemoryStore, at: float, rule: str
) -> None:
    store.add_list("bloctel", ["+33699999999"], imported_at=LAST_BLOCTEL)
    store.add_list("optouts", [], imported_at=LAST_BLOCTEL)
    store.contracts.add(("acme-energie", "+33699999999"))  # exempts from consent, still
    d = await decide(engine, store, "0699999999", at=at)
    assert d.verdict.rule == rule
    if at >= ts("2026-08-11T00:00:00+02:00"):
        assert d.outcomes["callee.consent"].result == PASS


async def test_bloctel_still_goes_stale_before_its_end(engine: PolicyEngine, store: MemoryStore) -> None:
    store.add_list("bloctel", [], imported_at=ts("2026-07-01T09:00:00+02:00"))
    store.add_list("optouts", [], imported_at=ts("2026-07-01T09:00:00+02:00"))
    d = await decide(engine, store, at=ts("2026-08-10T11:00:00+02:00"))  # 40 days old, the service still runs
    assert d.verdict.rule == "list.stale"
    d = await decide(engine, store, at=ts("2026-08-10T23:59:59+02:00"))
    assert d.outcomes["list.stale"].result == FAIL  # the last day the age rule applies, to its end
    d = await decide(engine, store, at=ts("2026-08-11T00:00:00+02:00"))
    assert d.outcomes["list.stale"].result == PASS


async def test_a_bloctel_list_never_imported_still_refuses(engine: PolicyEngine) -> None:
    """After the end date too: a trunk that names the list and has none must be told (or drop the list)."""
    d = await decide(engine, MemoryStore(), at=ts("2026-12-01T11:00:00+01:00"))
    assert d.verdict.rule == "list.stale" and "never been imported" in d.verdict.reason


def test_bloctel_max_age_for_metrics_ends_with_the_service(engine: PolicyEngine) -> None:
    rules = engine.rules_for("dialer").lists
    assert rules.max_age_for("bloctel", ts("2026-08-10T23:59:59+02:00")) == 30 * DAY
    assert rules.max_age_for("bloctel", ts("2026-08-11T00:00:00+02:00")) is None
    assert rules.max_age_for("optouts", ts("2026-08-01T00:00:00+02:00")) is None


def test_list_rules_validate_their_end_date(make_engine: Callable[..., PolicyEngine]) -> None:
    from sipfilter.config import ConfigError

    with pytest.raises(ConfigError) as err:
        make_engine(overrides={"lists": {"bloctel": {"max_age_until": "10 August 2026"}}})
    assert "lists.bloctel.max_age_until" in str(err.value)


# -- CPF (professional training accounts) ------------------------------------------------------------------


@pytest.mark.parametrize("sector", ["professional-training", "cpf"])
@pytest.mark.parametrize(
    ("purpose", "scope", "rule"),
    [
        (None, None, "sector.banned"),  # no contract
        (None, (), "sector.banned"),  # a contract, but the trunk says nothing of its object: not enough
        ("cpf-training", ("cpf-training",), ""),  # a training in progress directly related to the call
        ("cpf-training", ("insurance",), "sector.banned"),
        ("cpf-training", (), "sector.banned"),
    ],
)
async def test_cpf_prospecting_is_banned_except_within_a_related_action_in_progress(
    make_engine: Callable[..., PolicyEngine],
    consent_all: MemoryStore,
    sector: str,
    purpose: str | None,
    scope: tuple[str, ...] | None,
    rule: str,
) -> None:
    engine = make_engine(sector=sector, purpose=purpose)
    if scope is not None:
        consent_all.contracts.add(("acme-energie", "+33611223344"))
        consent_all.contract_scopes[("acme-energie", "+33611223344")] = scope
    d = await decide(engine, consent_all, at=OPEN)  # consent alone does not lift the ban
    assert d.verdict.rule == rule, d.outcomes["sector.banned"]


async def test_energy_renovation_keeps_any_contract_when_the_trunk_has_no_purpose(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore
) -> None:
    engine = make_engine(sector="energy-renovation")
    consent_all.contracts.add(("acme-energie", "+33611223344"))
    d = await decide(engine, consent_all, at=OPEN)
    assert d.verdict.action == "allow"
    engine = make_engine(sector="energy-renovation", purpose="insulation")
    d = await decide(engine, consent_all, at=OPEN)
    assert d.verdict.rule == "sector.banned"
