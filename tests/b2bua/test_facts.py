"""CallFacts read from the SIP core's parse of a new INVITE (sipfilter.b2bua.facts), and `sipfilter check`'s
facts from its arguments through the same readers."""

from __future__ import annotations

import pytest

from sipfilter.b2bua.facts import (
    from_value,
    identities_from_text,
    pai_values,
    privacy_tokens,
    read_invite,
    request_user,
)
from sipfilter.policy.numbers import ANONYMOUS, INVALID, Normaliser, NumberReader
from sipfilter.sip import ParseError, Request, parse

AT = 1_789_000_000.0
READER = NumberReader(Normaliser(anonymous_users=("anonymous", "restricted")))


def invite(ruri: str, *headers: str) -> Request:
    lines = [
        f"INVITE {ruri} SIP/2.0",
        "Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK1",
        "Max-Forwards: 70",
        "Call-ID: call-1@dialer",
        "CSeq: 1 INVITE",
        *headers,
    ]
    if not any(h.lower().startswith(("from:", "f:")) for h in headers):
        lines.append("From: <sip:0162123456@10.0.0.9>;tag=1")
    if not any(h.lower().startswith(("to:", "t:")) for h in headers):
        lines.append(f"To: <{ruri}>")
    msg = parse(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode("utf-8", "surrogateescape"))
    assert isinstance(msg, Request)
    return msg


def test_facts_of_a_parsed_invite() -> None:
    msg = invite(
        "sip:0611223344@sipfilter.local;user=phone",
        'f: "Acme" <sip:0162123456@10.0.0.1>;tag=a1',
        "P-Asserted-Identity: <sip:+33162123456@10.0.0.1>, <tel:+33163000000>",
        'P-Asserted-Identity: "x" <sip:+33949000000@10.0.0.1>',
        "Privacy: none",
    )
    ids = read_invite(READER, "dialer", msg, AT)
    f = ids.facts
    assert f.caller.e164 == "+33162123456"
    assert [p.e164 for p in f.asserted] == ["+33162123456", "+33163000000", "+33949000000"]
    assert f.callee.e164 == "+33611223344"
    assert (f.call_id, f.at, f.trunk, f.privacy) == ("call-1@dialer", AT, "dialer", frozenset({"none"}))
    assert ids.caller.display == "Acme" and ids.callee.user == "0611223344"


def test_the_callee_is_the_request_uri_user_unescaped_never_to() -> None:
    """An escaped user is read as the carrier will read it; To is never a fallback."""
    f = read_invite(READER, "d", invite("sip:0612345678%3B@h", "To: <sip:0611111112@h>"), AT).facts
    assert (f.callee.kind, f.callee.raw) == (INVALID, "0612345678;")
    f = read_invite(READER, "d", invite("sip:%30612345678@h", "To: <sip:0611111112@h>"), AT).facts
    assert f.callee.e164 == "+33612345678"  # %30 is "0": the same number the carrier dials
    f = read_invite(READER, "d", invite("sip:carrier.example", "To: <tel:+33611223344>"), AT).facts
    assert f.callee.kind == INVALID and "no user part" in f.callee.error


@pytest.mark.parametrize(
    ("ruri", "e164"),
    [
        ("sip:+33612345678@h;user=phone", "+33612345678"),
        ("sip:06-12-34-56-78@h", "+33612345678"),
        ("sips:0612345678@h", "+33612345678"),
        ("tel:+33-6-12-34-56-78", "+33612345678"),
        ("tel:0612345678;phone-context=+33", "+33612345678"),
        ("sip:0612345678;phone-context=+33@h;user=phone", "+33612345678"),
    ],
)
def test_callee_forms(ruri: str, e164: str) -> None:
    assert read_invite(READER, "d", invite(ruri), AT).facts.callee.e164 == e164


@pytest.mark.parametrize(
    ("ruri", "why"),
    [
        ("sip:0612345678;rn=+33611111112@h", "'rn'"),  # a routing number the carrier may act on
        ("sip:0612345678;isub=1@h", "'isub'"),
        ("sip:0612345678;@h", "';'"),
        ("tel:0612345678;phone-context=+44", "global form"),  # the B-leg dials 0612345678, not +44 612…
        ("sip:0612345678%0A@h", "not a telephone number"),
        ("sip:06123456789@h", ""),
        ("sip:anonymous@h", "anonymous"),
    ],
)
def test_callees_the_policy_cannot_read_are_invalid(ruri: str, why: str) -> None:
    callee = read_invite(READER, "d", invite(ruri), AT).facts.callee
    assert callee.kind in (INVALID, ANONYMOUS) and why in callee.error


def test_callers_come_from_uris_never_from_display_names() -> None:
    msg = invite(
        "sip:0612345678@h",
        'From: "<sip:+33162000001@x>" <sip:+33612345678@10.0.0.9>;tag=1',
        'P-Asserted-Identity: "tel:+33162000001, <sip:+33162000001@x>" <sip:anonymous@anonymous.invalid>',
    )
    ids = read_invite(READER, "d", msg, AT)
    assert ids.facts.caller.e164 == "+33612345678"
    assert [p.kind for p in ids.facts.asserted] == [ANONYMOUS]
    # A display name holding an address is not relayed: a careless parser could take a number from it.
    assert ids.caller.display is None and ids.asserted[0].display is None


def test_a_malformed_p_asserted_identity_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        read_invite(READER, "d", invite("sip:0612345678@h", "P-Asserted-Identity: <sip:0162123456@h"), AT)


def test_privacy_tokens() -> None:
    assert privacy_tokens(["id; critical"]) == {"id", "critical"}
    assert privacy_tokens(["header, ID", "user"]) == {"header", "id", "user"}
    assert privacy_tokens([" "]) == frozenset()


def test_caller_numbers_stay_cache_hits_whatever_the_tag() -> None:
    """Every call of a campaign has a new From tag: the caller's Number is the same cached object."""
    first = read_invite(READER, "d", invite("sip:0611223344@h", "From: <sip:0162123456@d>;tag=1"), AT)
    again = read_invite(READER, "d", invite("sip:0611223344@h", "From: <sip:0162123456@d>;tag=2"), AT)
    assert first.facts.caller is again.facts.caller
    bare = read_invite(READER, "d", invite("sip:0611223344@h", "From: sip:0162123456@d;tag=3"), AT)
    assert bare.facts.caller.e164 == "+33162123456"


def test_what_the_b_leg_writes_is_what_was_read() -> None:
    msg = invite(
        "sip:06%2012%2034%2056%2078@h",
        'From: "a\\"b" <sip:%2B33162123456@10.0.0.9>;tag=1',
        "P-Asserted-Identity: <sip:0162123456@10.0.0.9>, <tel:+33-1-62-12-34-56;phone-context=+33>",
        "P-Asserted-Identity: <sip:10.0.0.9>",  # no number: not asserted on the B-leg
    )
    ids = read_invite(READER, "d", msg, AT)
    assert request_user(ids) == "06%2012%2034%2056%2078"
    assert from_value(ids, "us.example", "t") == '"a\\"b" <sip:+33162123456@us.example>;tag=t'
    assert pai_values(ids, "us.example") == [
        "<sip:0162123456@us.example>",
        "<tel:+33-1-62-12-34-56;phone-context=+33>",
    ]
    anonymous = read_invite(READER, "d", invite("sip:0612345678@h", "From: <sip:restricted@h>;tag=1"), AT)
    assert from_value(anonymous, "us.example", "t") == "<sip:anonymous@us.example>;tag=t"


@pytest.mark.parametrize(
    ("args", "request_"),
    [
        (("sip:0162123456@d", "sip:0611223344@h;user=phone", ["<sip:+33162123456@x>, <tel:+33163000000>"]),
         ("sip:0611223344@h;user=phone", "<sip:0162123456@d>", ["<sip:+33162123456@x>, <tel:+33163000000>"])),
        (('"A" <sip:0162123456@d>', "tel:+33611223344", ['"Doe, J" <sip:0163000000@x>', "<tel:+33949>"]),
         ("tel:+33611223344", '"A" <sip:0162123456@d>', ['"Doe, J" <sip:0163000000@x>', "<tel:+33949>"])),
        (("0162123456", "0611223344", []), ("sip:0611223344@h", "<sip:0162123456@d>", [])),
        (("<sip:anonymous@anonymous.invalid>", "sip:carrier.example", []),
         ("sip:carrier.example", "<sip:anonymous@anonymous.invalid>", [])),
        (('"<sip:+33162000001@x>" <sip:+33612345678@d>', "sip:0612345678%3B@h", []),
         ("sip:0612345678%3B@h", '"<sip:+33162000001@x>" <sip:+33612345678@d>', [])),
    ],
)  # fmt: skip
def test_check_reads_its_arguments_as_the_b2bua_reads_a_request(
    args: tuple[str, str, list[str]], request_: tuple[str, str, list[str]]
) -> None:
    """`sipfilter check` and the call path: one reading of the same values."""
    from_, to, pai = args
    text = identities_from_text(READER, "d", from_, to, pai, ["id"], AT, "call-1@dialer").facts
    ruri, from_header, pai_headers = request_
    msg = invite(ruri, f"From: {from_header};tag=9", *[f"P-Asserted-Identity: {p}" for p in pai_headers],
                 "Privacy: id")  # fmt: skip
    wire = read_invite(READER, "d", msg, AT).facts
    assert wire == text


def test_check_names_the_argument_it_cannot_read() -> None:
    with pytest.raises(ParseError, match="From"):
        identities_from_text(READER, "d", "sip:", "0611223344")
    with pytest.raises(ParseError, match="callee"):
        identities_from_text(READER, "d", "0162123456", "<sip:0611223344@h")
