"""The number checked is the number sent: through the real B2BUA, real policy engine and real audit log, the
callee and caller IDs of every decision equal those of the B-leg INVITE the carrier receives.

Hostile INVITEs (escaped users, display names holding URIs, several P-Asserted-Identity values in one header
and in several, odd quoting, tel: and sip: forms, ;user=phone, visual separators, URI parameters) are
generated; for each one relayed, the B-leg INVITE is parsed back and its numbers read, both by the SIP core
and by a loose reader that takes the first URI it sees in a header (as a careless carrier might).
"""

from __future__ import annotations

import re
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from b2bua_rig import Rig, audit_records, policy_rig, requests_named
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policy"))
from memstore import MemoryStore

from sipfilter.b2bua.facts import read_invite
from sipfilter.policy.numbers import Normaliser, Number
from sipfilter.sip import Request, parse
from sipfilter.stores.base import AttemptDecision, ConsentRecord

OPEN = datetime.fromisoformat("2026-09-16T11:00:00+02:00").timestamp()  # a Wednesday, 11:00 in Paris
NPV = "0162000001"  # a caller ID an automated trunk may show
MOBILE = "0612345678"  # a callee (and a caller ID an automated trunk must not show)
OTHER = "0611111112"  # another callee: what a To header may name


class OpenStore(MemoryStore):
    """Every callee has consented and is under its frequency cap: the number and caller-ID rules decide."""

    def consent_for(self, account: str, number: str, at: float) -> ConsentRecord | None:
        return ConsentRecord(account, number, at - 86400, "test")

    async def check_and_record_attempt(self, *args: Any, **kwargs: Any) -> AttemptDecision:
        return AttemptDecision(True, 1, None)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return policy_rig(tmp_path, OpenStore(), OPEN)


def build_invite(ruri: str, from_: str, pai: list[str], *, to: str = f"<sip:{OTHER}@127.0.0.1>",
                 privacy: str | None = None, call_id: str | None = None) -> bytes:  # fmt: skip
    """An INVITE from the rig's dialer; header values as given (str with surrogates = raw octets)."""
    call_id = call_id or uuid.uuid4().hex
    lines = [
        f"INVITE {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP 10.0.0.9:5999;branch=z9hG4bK{call_id[:16]};rport",
        "Max-Forwards: 70",
        f"From: {from_};tag=dialertag",
        f"To: {to}",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        "Contact: <sip:agent@10.0.0.9:5999>",
        *[f"P-Asserted-Identity: {v}" for v in pai],
        *([f"Privacy: {privacy}"] if privacy is not None else []),
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def shown(n: Number) -> str:
    """A number as the audit log writes it."""
    return n.e164 or n.kind


_FIRST_URI = re.compile(r"(sips?|tel):([^@;>,\s]*)(?:@([^;>,\s]*))?", re.IGNORECASE)


def loosely(norm: Normaliser, value: str) -> str:
    """The number a careless carrier reads from a header value: the first URI anywhere in it."""
    m = _FIRST_URI.search(value)
    assert m is not None, value
    scheme, user, host = m.groups()
    if scheme.lower() == "tel":
        return shown(norm.read(unquote(user)))
    return shown(norm.read(unquote(user), host or ""))


def check_relayed(rig: Rig, data: bytes) -> bool:
    """Send one INVITE; if it reached the carrier, its numbers must be those of its audit record. True when
    relayed."""
    call_id = parse(data).call_id
    rig.outside.sent.clear()
    rig.from_dialer(data)
    record = audit_records(rig).get(call_id)
    sent = [d for d, _ in rig.outside.sent if d.startswith(b"INVITE ")]
    if not sent:
        assert record is None or record["action"] == "reject" or record["status"] == 0
        return False
    assert record is not None and record["action"] == "allow", record  # no relay without its decision
    (wire,) = sent
    head = wire.split(b"\r\n\r\n", 1)[0].decode("utf-8")  # strict: only valid UTF-8 goes to the carrier
    b_leg = parse(wire)
    assert isinstance(b_leg, Request)
    # The SIP core's reading of what the carrier got equals the decision.
    engine = rig.policy
    b_ids = read_invite(engine.reader("dialer"), "dialer", b_leg, OPEN)
    assert shown(b_ids.facts.callee) == record["to"]
    assert shown(b_ids.facts.caller) == record["from"]
    assert [shown(p) for p in b_ids.facts.asserted] == record["pai"]
    # Byte for byte: the user part dialled is the one the callee was read from.
    call = rig.b2b.calls_a[call_id]
    assert call.ids is not None and b_leg.request_uri.user == call.ids.callee.user
    # A careless reader (first URI in the line, display names included) reads the same numbers.
    norm = engine.rules_for("dialer").normaliser
    lines = head.split("\r\n")
    assert loosely(norm, lines[0].split(" ")[1]) == record["to"]
    from_line = next(v for line in lines if (v := _value(line, "from")) is not None)
    assert loosely(norm, from_line) == record["from"]
    pais = [v for line in lines if (v := _value(line, "p-asserted-identity")) is not None]
    assert [loosely(norm, v) for v in pais] == record["pai"]
    return True


def _value(line: str, name: str) -> str | None:
    key, sep, value = line.partition(":")
    return value.strip() if sep and key.strip().lower() == name else None


# --- the two bypasses an attack probe found, through the B2BUA --------------------------------------------
def test_an_escaped_request_uri_user_is_refused_not_replaced_by_to(rig: Rig) -> None:
    """Do-not-call bypass: the policy read To's number while the carrier dialled the Request-URI's."""
    data = build_invite(f"sip:{MOBILE}%3B@127.0.0.1", f"<sip:{NPV}@10.0.0.9>", [],
                        to=f"<sip:{OTHER}@127.0.0.1>")  # fmt: skip
    call_id = parse(data).call_id
    rig.from_dialer(data)
    assert requests_named(rig.outside.take(), "INVITE") == []
    record = audit_records(rig)[call_id]
    assert (record["action"], record["rule"], record["to"]) == ("reject", "number.invalid", "invalid")
    (answer,) = [m for m in rig.inside.take() if not m.is_request and m.status >= 200]
    assert answer.status == 603 and "number.invalid" in (answer.headers.get("Reason") or "")


def test_a_request_uri_without_a_user_part_is_refused(rig: Rig) -> None:
    data = build_invite("sip:127.0.0.1", f"<sip:{NPV}@10.0.0.9>", [], to=f"<sip:{OTHER}@127.0.0.1>")
    call_id = parse(data).call_id
    rig.from_dialer(data)
    assert requests_named(rig.outside.take(), "INVITE") == []
    assert audit_records(rig)[call_id]["rule"] == "number.invalid"


@pytest.mark.parametrize(
    ("from_", "pai"),
    [
        ('"<sip:+33162000001@x>" <sip:+33612345678@10.0.0.9>', []),
        (f'"sip:{NPV}@x" <sip:anonymous@anonymous.invalid>', []),
        ('"tel:+33162000001" <sip:+33899123456@10.0.0.9>', []),
        (f"<sip:{NPV}@10.0.0.9>", ['"<sip:+33162000001@x>" <sip:+33612345678@10.0.0.9>']),
        (f"<sip:{NPV}@10.0.0.9>", [f'"Doe, <tel:{NPV}>" <tel:+33612345678>, <sip:{NPV}@10.0.0.9>']),
    ],
)
def test_a_caller_id_in_a_display_name_is_never_the_one_checked(rig: Rig, from_: str, pai: list[str]) -> None:
    """Caller-ID bypass: the policy read an NPV number in a display name, the carrier got the URI's."""
    data = build_invite(f"sip:{MOBILE}@127.0.0.1", from_, pai)
    call_id = parse(data).call_id
    rig.from_dialer(data)
    assert requests_named(rig.outside.take(), "INVITE") == []
    assert audit_records(rig)[call_id]["rule"].startswith("caller-id.")


def test_a_malformed_p_asserted_identity_gets_400_and_no_decision(rig: Rig) -> None:
    data = build_invite(f"sip:{MOBILE}@127.0.0.1", f"<sip:{NPV}@10.0.0.9>", [f"<sip:{NPV}@10.0.0.9"])
    call_id = parse(data).call_id
    rig.from_dialer(data)
    assert requests_named(rig.outside.take(), "INVITE") == []
    finals = [m.status for m in rig.inside.take() if not m.is_request and m.status >= 200]
    assert finals == [400]
    assert call_id not in audit_records(rig)  # nothing the policy could read: no decision to prove


def test_a_clean_call_is_relayed_with_the_numbers_it_was_checked_with(rig: Rig) -> None:
    """Control: the property below is not vacuous."""
    data = build_invite(f"sip:{MOBILE}@127.0.0.1;user=phone", f'"Acme" <sip:{NPV}@10.0.0.9>',
                        [f"<sip:{NPV}@10.0.0.9>", "<tel:+33162000002>"])  # fmt: skip
    assert check_relayed(rig, data)
    (b_leg,) = requests_named(rig.outside.take(), "INVITE")
    assert b_leg.uri == f"sip:{MOBILE}@127.0.0.1:5071"
    pais = b_leg.headers.get_all("P-Asserted-Identity")
    assert pais == [f"<sip:{NPV}@sipfilter.test>", "<tel:+33162000002>"]
    assert "10.0.0.9" not in bytes(b_leg).decode()  # the dialer's host never reaches the carrier


def test_display_names_cross_requoted_and_as_valid_utf8(rig: Rig) -> None:
    """`"a\\"b"` stays one display name (not `"a"b"`); octets that are not UTF-8 become U+FFFD."""
    data = build_invite(f"sip:{MOBILE}@127.0.0.1", f'"a\\"b\\\\c" <sip:{NPV}@10.0.0.9>',
                        [f'"x\udcff\udcfey" <sip:{NPV}@10.0.0.9>'])  # fmt: skip
    assert b"\xff\xfe" in data
    assert check_relayed(rig, data)
    (wire,) = [d for d, _ in rig.outside.sent if d.startswith(b"INVITE ")]
    wire.decode("utf-8")  # strict
    b_leg = parse(wire)
    assert b_leg.from_.display_name == 'a"b\\c'
    assert [p.display_name for p in b_leg.p_asserted_identities] == ["x\ufffd\ufffdy"]


_SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
# An ISUP IAM (SIP-I) whose called party number is not the Request-URI's: a gateway may route on it.
_IAM = bytes.fromhex("0100600a000207048310601111211207039011000000000a07031310621000000001")


def _multipart(*parts: tuple[str, bytes]) -> bytes:
    out = b""
    for ctype, body in parts:
        out += b"--b1\r\nContent-Type: " + ctype.encode() + b"\r\n\r\n" + body + b"\r\n"
    return out + b"--b1--\r\n"


@pytest.mark.parametrize(
    ("ctype", "body", "relayed"),
    [
        ("multipart/mixed;boundary=b1", _multipart(("application/sdp", _SDP)), True),
        ("multipart/mixed;boundary=b1", _multipart(("application/sdp", _SDP),
                                                   ("application/ISUP;version=itu-t92+", _IAM)), False),
        ("multipart/alternative;boundary=b1", _multipart(("application/qsig", _IAM)), False),
        ("application/isup;version=itu-t92+", _IAM, False),
    ],
)  # fmt: skip
def test_bodies_that_carry_their_own_numbers_are_refused(
    rig: Rig, ctype: str, body: bytes, relayed: bool
) -> None:
    head = build_invite(f"sip:{MOBILE}@127.0.0.1", f"<sip:{NPV}@10.0.0.9>", []).split(b"Content-Length")[0]
    data = head + f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    rig.from_dialer(data)
    b_legs = requests_named(rig.outside.take(), "INVITE")
    assert bool(b_legs) == relayed
    if not relayed:
        (answer,) = [m for m in rig.inside.take() if not m.is_request]
        assert answer.status == 415 and "isup" not in (answer.headers.get("Accept") or "")
    else:
        assert b_legs[0].body == body


# --- the property -----------------------------------------------------------------------------------------
def _escape_some(text: str, picks: list[bool]) -> str:
    chars = zip(text, picks, strict=False)
    return "".join(f"%{ord(c):02X}" if pick and c.isascii() else c for c, pick in chars) + text[len(picks) :]


_numbers = st.sampled_from([MOBILE, OTHER, "0162000002", "+33612345678", "+33987654321", "0692123456"])
_separated = _numbers.flatmap(
    lambda n: st.sampled_from([n, "-".join(n[i : i + 2] for i in range(0, len(n), 2)),
                               ".".join(n[i : i + 2] for i in range(0, len(n), 2)), f"({n[:2]}){n[2:]}"])
)  # fmt: skip
_junk = st.sampled_from(["", "", "", "%3B", ";", "%3b", "%00", "%0A", "%20", "x", "%23", "*", "%2B",
                         ";phone-context=+33", ";phone-context=+44", ";isub=1", f";rn=+33{OTHER[1:]}",
                         "%3Bphone-context=%2B44", "%40evil", "?"])  # fmt: skip
_user = st.builds(
    lambda n, picks, before, after: _escape_some(n, picks) + after if not before else before + n + after,
    _separated, st.lists(st.booleans(), max_size=14), st.sampled_from(["", "", "", "%2B33", "+", "%20"]),
    _junk,
)
_tel_number = _separated.filter(lambda n: "(" not in n and "%" not in n)
_ruri = st.one_of(
    st.builds(lambda u, p: f"sip:{u}@127.0.0.1{p}", _user,
              st.sampled_from(["", ";user=phone", ";transport=udp"])),
    st.builds(lambda u: f"sips:{u}@127.0.0.1", _user),
    st.builds(lambda n, p: f"tel:{n}{p}", _tel_number,
              st.sampled_from(["", ";phone-context=+33", ";phone-context=+44", ";isub=12"])),
    st.just("sip:127.0.0.1"),
)  # fmt: skip
_callers = st.sampled_from([NPV, "+33162000001", "+33-1-62-00-00-01", "0162000003", MOBILE, "anonymous",
                            "0899123456"])  # fmt: skip
_caller_user = st.builds(_escape_some, _callers, st.lists(st.booleans(), max_size=4))
_display_text = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=12)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_display = st.one_of(
    st.just(""),
    st.sampled_from(["Agent ", "Acme Energie ", '"<sip:+33162000001@x>" ', f'"tel:{NPV}" ', '"a\\"b" ',
                     '"back\\\\slash" ', '"\udcff\udcfe" ', '"Doe, John" ', f'"sip:{NPV}@x, <tel:{NPV}>" ']),
    _display_text.map(lambda t: _quoted(t) + " "),
)  # fmt: skip
_uri = st.one_of(
    st.builds(lambda u, h: f"sip:{u}@{h}", _caller_user, st.sampled_from(["10.0.0.9", "anonymous.invalid"])),
    st.builds(lambda n: f"tel:{n}", st.sampled_from([NPV, "+33162000001", "+33-1-62-00-00-04", MOBILE])),
    st.just("sip:10.0.0.9"),
)
_name_addr = st.builds(lambda d, u: f"{d}<{u}>", _display, _uri)
_pai_lines = st.lists(st.lists(_name_addr, min_size=1, max_size=2).map(", ".join), max_size=2)


@example(ruri=f"sip:{MOBILE}%3B@127.0.0.1", from_=f"<sip:{NPV}@10.0.0.9>", pai=[], privacy=None)
@example(ruri=f"sip:{MOBILE}@127.0.0.1", from_=f'"<sip:{NPV}@x>" <sip:+33612345678@10.0.0.9>', pai=[],
         privacy=None)  # fmt: skip
@example(ruri=f"sip:{MOBILE}@127.0.0.1", from_=f"<sip:{NPV}@10.0.0.9>",
         pai=['"<sip:+33162000001@x>" <sip:+33612345678@10.0.0.9>'], privacy=None)  # fmt: skip
@example(ruri=f"sip:{MOBILE}@127.0.0.1", from_=f'"a\\"b" <sip:{NPV}@10.0.0.9>', pai=[], privacy=None)
@example(ruri=f"tel:{MOBILE};phone-context=+44", from_=f"<sip:{NPV}@10.0.0.9>", pai=[], privacy=None)
@example(ruri=f"sip:{MOBILE};rn=+33{OTHER[1:]}@127.0.0.1", from_=f"<sip:{NPV}@10.0.0.9>", pai=[],
         privacy=None)  # fmt: skip
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])  # fmt: skip
@given(ruri=_ruri, from_=_name_addr, pai=_pai_lines, privacy=st.sampled_from([None, None, "none", "id"]))
def test_every_relayed_call_carries_the_numbers_it_was_checked_with(
    rig: Rig, ruri: str, from_: str, pai: list[str], privacy: str | None
) -> None:
    check_relayed(rig, build_invite(ruri, from_, pai, privacy=privacy))


def test_the_property_sees_relayed_calls(tmp_path: Path) -> None:
    """The generator is not so hostile that nothing is ever relayed (the property would then be vacuous)."""
    rig = policy_rig(tmp_path, OpenStore(), OPEN)
    relayed = 0

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(ruri=_ruri, from_=_name_addr, pai=_pai_lines)
    def run(ruri: str, from_: str, pai: list[str]) -> None:
        nonlocal relayed
        relayed += check_relayed(rig, build_invite(ruri, from_, pai))

    run()
    assert relayed >= 10, relayed
