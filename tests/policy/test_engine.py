"""Engine behaviour across rules: monitor mode, store failures, any facts, answer headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from memstore import MemoryStore
from policy_helpers import CALLEE, NPV, OPEN, call_facts

from sipfilter.policy.engine import PolicyEngine, UnknownTrunk
from sipfilter.policy.verdict import Verdict
from sipfilter.sip.errors import ParseError
from sipfilter.stores.base import StoreUnavailable


async def test_allowed_call_records_one_attempt(engine: PolicyEngine, consent_all: MemoryStore) -> None:
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN), consent_all)
    assert d.verdict == Verdict("allow", 0, "", "")
    assert d.attempt_recorded and consent_all.calls == 1
    assert d.rule_pack_version == "fr-2026.12-1"
    assert not d.monitored


async def test_monitor_mode_relays_and_names_the_rule(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore
) -> None:
    engine = make_engine(mode="monitor")
    d = await engine.decide(call_facts(engine, "dialer", "0612345678", "0699999999", at=OPEN), consent_all)
    assert d.verdict.action == "allow" and d.verdict.status == 0
    assert d.monitored
    assert d.verdict.rule == "caller-id.mobile"  # the first would-be rule
    assert set(d.failed) >= {"caller-id.mobile", "callee.dnc.bloctel", "callee.consent"}
    assert d.attempt_recorded  # the call is relayed, so the attempt counts


async def test_monitor_mode_clean_call_is_not_monitored(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore
) -> None:
    engine = make_engine(mode="monitor")
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN), consent_all)
    assert (d.verdict.rule, d.monitored) == ("", False)


class FlakyStore(MemoryStore):
    """Lists answer, counters do not (a Redis outage)."""

    async def check_and_record_attempt(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("redis: connection refused")


class BrokenStore(MemoryStore):
    def has_contract(self, account: str, number: str, at: float, purpose: str | None = None) -> bool:
        raise RuntimeError("backend bug")


@pytest.mark.parametrize(
    ("on_error", "mode", "action", "rule", "monitored"),
    [
        ("reject", "enforce", "reject", "store.unavailable", False),
        ("allow", "enforce", "allow", "", False),
        ("reject", "monitor", "allow", "store.unavailable", True),
    ],
)
async def test_store_unavailable(
    make_engine: Callable[..., PolicyEngine],
    consent_all: MemoryStore,
    on_error: str,
    mode: str,
    action: str,
    rule: str,
    monitored: bool,
) -> None:
    engine = make_engine(on_store_error=on_error, mode=mode)
    store = FlakyStore(lists=consent_all.lists, infos=consent_all.infos, consents=consent_all.consents)
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN), store)
    assert (d.verdict.action, d.verdict.rule, d.monitored) == (action, rule, monitored)
    assert d.outcomes["store.unavailable"].result == "fail"
    assert "connection refused" in d.outcomes["store.unavailable"].reason
    assert not d.attempt_recorded
    if action == "reject":
        assert d.verdict.status == 603
    if on_error == "allow":
        assert d.alerts


@pytest.mark.parametrize(("mode", "action"), [("enforce", "reject"), ("monitor", "allow")])
async def test_failing_open_never_relays_a_call_a_rule_already_refused(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore, mode: str, action: str
) -> None:
    """`on_store_error: allow` relays what the store could not check, not a mobile caller ID."""
    engine = make_engine(on_store_error="allow", mode=mode)
    consent_all.fail = True  # every lookup raises StoreUnavailable, after the caller-ID rules ran
    d = await engine.decide(call_facts(engine, "dialer", "0612345678", CALLEE, at=OPEN), consent_all)
    assert (d.verdict.action, d.verdict.rule, d.monitored) == (action, "caller-id.mobile", mode == "monitor")
    assert d.outcomes["store.unavailable"].result == "fail" and d.alerts
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN), consent_all)
    assert (d.verdict.action, d.verdict.rule) == ("allow", "")  # nothing else failed: fail open, as asked


async def test_whole_store_down_and_backend_bug_never_raise(
    engine: PolicyEngine, consent_all: MemoryStore
) -> None:
    consent_all.fail = True
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN), consent_all)
    assert d.verdict.rule == "store.unavailable"
    broken = BrokenStore(lists=consent_all.lists, infos=consent_all.infos)
    broken.add_list("bloctel", [CALLEE.replace("0", "+33", 1)], imported_at=OPEN - 60)
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN), broken)
    assert d.verdict.rule == "store.unavailable"
    assert "RuntimeError" in d.verdict.reason


async def test_rule_ids_cover_every_outcome(engine: PolicyEngine, consent_all: MemoryStore) -> None:
    d = await engine.decide(call_facts(engine, "dialer", NPV, CALLEE, at=OPEN), consent_all)
    ids = engine.rule_ids("dialer")
    assert list(d.outcomes) == [r for r in ids if r != "store.unavailable"]
    assert "callee.dnc.bloctel" in ids and "store.unavailable" in ids


async def test_unknown_trunk(engine: PolicyEngine) -> None:
    with pytest.raises(UnknownTrunk):
        call_facts(engine, "nope", NPV, CALLEE)


def test_reason_and_warning_headers_are_safe() -> None:
    v = Verdict("reject", 603, "callee.dnc.bloctel", 'callee on "Bloctel"\r\nInjected: yes \\ ok')
    assert v.reason_header() == 'SIP;cause=603;text="callee.dnc.bloctel"'
    w = v.warning_header("sipfilter.local")
    assert w == '399 sipfilter.local "callee on \\"Bloctel\\"  Injected: yes \\\\ ok"'
    assert "\r" not in w and "\n" not in w
    assert Verdict("reject", 403, "x", "y").warning_header("bad host\r\n") == '399 badhost "y"'


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    from_=st.text(max_size=60),
    to=st.text(max_size=60),
    pai=st.lists(st.text(max_size=40), max_size=3),
    privacy=st.lists(st.text(max_size=20), max_size=2),
    at=st.floats(min_value=0, max_value=4e9),
)
async def test_any_input_gives_a_decision(
    engine: PolicyEngine,
    consent_all: MemoryStore,
    from_: str,
    to: str,
    pai: list[str],
    privacy: list[str],
    at: float,
) -> None:
    try:
        facts = call_facts(engine, "dialer", from_, to, pai=pai, privacy=privacy, at=at)
    except ParseError:
        assume(False)  # not a URI, name-addr or number: `sipfilter check` says so (exit 2)
        return
    d = await engine.decide(facts, consent_all, record=False)
    assert d.verdict.action in ("allow", "reject")
    if d.verdict.action == "reject":
        assert d.verdict.status in (403, 603, 608) and d.verdict.rule
        assert "\n" not in d.verdict.warning_header("h") and "\r" not in d.verdict.warning_header("h")
