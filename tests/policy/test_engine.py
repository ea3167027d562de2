"""Engine behaviour across rules: monitor mode, store failures, facts from a SIP request, answer headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memstore import MemoryStore
from policy_helpers import CALLEE, NPV, OPEN

from sipfilter.policy.engine import PolicyEngine, UnknownTrunk, addr_spec, split_header_values
from sipfilter.policy.verdict import Verdict
from sipfilter.stores.base import StoreUnavailable


async def test_allowed_call_records_one_attempt(engine: PolicyEngine, consent_all: MemoryStore) -> None:
    d = await engine.decide(engine.facts("dialer", NPV, CALLEE, at=OPEN), consent_all)
    assert d.verdict == Verdict("allow", 0, "", "")
    assert d.attempt_recorded and consent_all.calls == 1
    assert d.rule_pack_version == "fr-2026.12-1"
    assert not d.monitored


async def test_monitor_mode_relays_and_names_the_rule(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore
) -> None:
    engine = make_engine(mode="monitor")
    d = await engine.decide(engine.facts("dialer", "0612345678", "0699999999", at=OPEN), consent_all)
    assert d.verdict.action == "allow" and d.verdict.status == 0
    assert d.monitored
    assert d.verdict.rule == "caller-id.mobile"  # the first would-be rule
    assert set(d.failed) >= {"caller-id.mobile", "callee.dnc.bloctel", "callee.consent"}
    assert d.attempt_recorded  # the call is relayed, so the attempt counts


async def test_monitor_mode_clean_call_is_not_monitored(
    make_engine: Callable[..., PolicyEngine], consent_all: MemoryStore
) -> None:
    engine = make_engine(mode="monitor")
    d = await engine.decide(engine.facts("dialer", NPV, CALLEE, at=OPEN), consent_all)
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
    d = await engine.decide(engine.facts("dialer", NPV, CALLEE, at=OPEN), store)
    assert (d.verdict.action, d.verdict.rule, d.monitored) == (action, rule, monitored)
    assert d.outcomes["store.unavailable"].result == "fail"
    assert "connection refused" in d.outcomes["store.unavailable"].reason
    assert not d.attempt_recorded
    if action == "reject":
        assert d.verdict.status == 603
    if on_error == "allow":
        assert d.alerts


async def test_whole_store_down_and_backend_bug_never_raise(
    engine: PolicyEngine, consent_all: MemoryStore
) -> None:
    consent_all.fail = True
    d = await engine.decide(engine.facts("dialer", NPV, CALLEE, at=OPEN), consent_all)
    assert d.verdict.rule == "store.unavailable"
    broken = BrokenStore(lists=consent_all.lists, infos=consent_all.infos)
    broken.add_list("bloctel", [CALLEE.replace("0", "+33", 1)], imported_at=OPEN - 60)
    d = await engine.decide(engine.facts("dialer", NPV, CALLEE, at=OPEN), broken)
    assert d.verdict.rule == "store.unavailable"
    assert "RuntimeError" in d.verdict.reason


async def test_rule_ids_cover_every_outcome(engine: PolicyEngine, consent_all: MemoryStore) -> None:
    d = await engine.decide(engine.facts("dialer", NPV, CALLEE, at=OPEN), consent_all)
    ids = engine.rule_ids("dialer")
    assert list(d.outcomes) == [r for r in ids if r != "store.unavailable"]
    assert "callee.dnc.bloctel" in ids and "store.unavailable" in ids


async def test_unknown_trunk(engine: PolicyEngine) -> None:
    with pytest.raises(UnknownTrunk):
        engine.facts("nope", NPV, CALLEE)


def test_reason_and_warning_headers_are_safe() -> None:
    v = Verdict("reject", 603, "callee.dnc.bloctel", 'callee on "Bloctel"\r\nInjected: yes \\ ok')
    assert v.reason_header() == 'SIP;cause=603;text="callee.dnc.bloctel"'
    w = v.warning_header("sipfilter.local")
    assert w == '399 sipfilter.local "callee on \\"Bloctel\\"  Injected: yes \\\\ ok"'
    assert "\r" not in w and "\n" not in w
    assert Verdict("reject", 403, "x", "y").warning_header("bad host\r\n") == '399 badhost "y"'


class FakeHeaders:
    """The part of sipfilter.sip's Headers the engine uses (case-insensitive get / get_all)."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = pairs

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.pairs if k.lower() == name.lower()), None)

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.pairs if k.lower() == name.lower()]


class FakeRequest:
    def __init__(self, uri: str, pairs: list[tuple[str, str]]):
        self.method, self.uri, self.headers = "INVITE", uri, FakeHeaders(pairs)


def test_facts_from_request(engine: PolicyEngine) -> None:
    req = FakeRequest(
        "sip:0611223344@sipfilter.local;user=phone",
        [
            ("From", '"Acme" <sip:0162123456@10.0.0.1>;tag=a1'),
            ("To", "<sip:0611223344@sipfilter.local>"),
            ("Call-ID", "call-1@dialer"),
            ("P-Asserted-Identity", "<sip:+33162123456@10.0.0.1>, <tel:+33163000000>"),
            ("P-Asserted-Identity", '"x" <sip:+33949000000@10.0.0.1>'),
            ("Privacy", "none"),
        ],
    )
    f = engine.facts_from_request("dialer", req, OPEN)
    assert f.caller.e164 == "+33162123456"
    assert [p.e164 for p in f.asserted] == ["+33162123456", "+33163000000", "+33949000000"]
    assert f.callee.e164 == "+33611223344"
    assert (f.call_id, f.at, f.trunk, f.privacy) == ("call-1@dialer", OPEN, "dialer", frozenset({"none"}))


def test_facts_callee_falls_back_to_to(engine: PolicyEngine) -> None:
    req = FakeRequest(
        "sip:carrier.example",
        [("From", "<sip:0162123456@h>"), ("To", "<tel:+33611223344>"), ("Privacy", "id; critical")],
    )
    f = engine.facts_from_request("dialer", req, OPEN)
    assert f.callee.e164 == "+33611223344"
    assert f.privacy == frozenset({"id", "critical"})


def test_facts_from_a_parsed_invite(engine: PolicyEngine) -> None:
    sip = pytest.importorskip("sipfilter.sip")
    if not hasattr(sip, "parse"):
        pytest.skip("sipfilter.sip.parse not available yet")
    msg = sip.parse(
        b"INVITE sip:+33611223344@sipfilter.local;user=phone SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\n"
        b'f: "Acme" <sip:0162123456@127.0.0.1>;tag=1\r\n'
        b"t: <sip:0611223344@127.0.0.1>\r\ni: abc@1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        b"P-Asserted-Identity: <sip:+33162123456@x>, <tel:+33612345678>\r\nPrivacy: id\r\n"
        b"Contact: <sip:a@127.0.0.1>\r\nContent-Length: 0\r\n\r\n"
    )
    f = engine.facts_from_request("dialer", msg, OPEN)
    assert f.caller.e164 == "+33162123456"
    assert [p.e164 for p in f.asserted] == ["+33162123456", "+33612345678"]
    assert f.callee.e164 == "+33611223344"
    assert f.call_id == "abc@1"
    assert "id" in f.privacy


def test_header_params_do_not_defeat_the_caches(engine: PolicyEngine) -> None:
    """Every call of a campaign has a new From tag: the numbers must still be cache hits."""
    first = engine.facts_from_request(
        "dialer", FakeRequest("sip:0611223344@h", [("From", "<sip:0162123456@d>;tag=1")]), OPEN
    )
    again = engine.facts_from_request(
        "dialer", FakeRequest("sip:0611223344@h", [("From", "<sip:0162123456@d>;tag=2")]), OPEN
    )
    assert first.caller is again.caller
    bare = engine.facts_from_request(
        "dialer", FakeRequest("sip:0611223344@h", [("From", "sip:0162123456@d;tag=3")]), OPEN
    )
    assert bare.caller.e164 == "+33162123456"


def test_split_header_values() -> None:
    assert split_header_values(['"Doe, John" <sip:+33162123456@h>, <tel:+33163>']) == [
        '"Doe, John" <sip:+33162123456@h>',
        "<tel:+33163>",
    ]
    assert split_header_values(["<sip:a,b@h>", " "]) == ["<sip:a,b@h>"]


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
    d = await engine.decide(
        engine.facts("dialer", from_, to, pai=pai, privacy=privacy, at=at), consent_all, record=False
    )
    assert d.verdict.action in ("allow", "reject")
    if d.verdict.action == "reject":
        assert d.verdict.status in (403, 603, 608) and d.verdict.rule
        assert "\n" not in d.verdict.warning_header("h") and "\r" not in d.verdict.warning_header("h")


@pytest.mark.parametrize(
    ("uri", "pairs"),
    [
        ("sip:0611223344@h", [("From", '"A" <sip:0162123456@d>;tag=1'), ("To", "<sip:nonsense@h>")]),
        ("sip:carrier.example", [("From", "sip:0162123456@d;tag=3"), ("To", "<tel:+33611223344>;tag=x")]),
        ("sip:carrier.example", [("To", "<sip:carrier.example>")]),
        ("", [("From", "<sip:anonymous@anonymous.invalid>")]),
        ("tel:+33611223344", [("P-Asserted-Identity", "<sip:+33162123456@x>, <tel:+33612345678>"),
                              ("P-Asserted-Identity", '"Doe, J" <sip:0163000000@x>'), ("Privacy", "id;user"),
                              ("Privacy", "header"), ("Call-ID", "c@d")]),
    ],
)
def test_facts_from_request_equals_facts_from_the_same_strings(
    engine: PolicyEngine, uri: str, pairs: list[tuple[str, str]]
) -> None:
    """The one-pass extraction on the INVITE path builds exactly what `facts()` builds (`sipfilter check`)."""
    req = FakeRequest(uri, pairs)
    h = req.headers
    expected = engine.facts(
        "dialer",
        from_=addr_spec(str(h.get("From") or "")),
        to=uri,
        pai=[addr_spec(v) for v in split_header_values(h.get_all("P-Asserted-Identity"))],
        privacy=h.get_all("Privacy"),
        at=OPEN,
        call_id=str(h.get("Call-ID") or ""),
        to_header=addr_spec(str(h.get("To") or "")),
    )
    assert engine.facts_from_request("dialer", req, OPEN) == expected
