"""Every number form sipfilter may see normalises to the same E.164 string (or a clear kind). URI forms are
read as the B2BUA reads them: the SIP core parses, the normaliser reads the user part it hands over."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfilter.b2bua.facts import read_address
from sipfilter.config import Config
from sipfilter.policy.numbers import ANONYMOUS, E164, INVALID, SHORT, Normaliser, Number, NumberReader


@pytest.fixture
def norm(config: Config) -> Normaliser:
    return config.rules["dialer"].normaliser


def parse(norm: Normaliser, text: str, region: str = "FR") -> Number:
    """The number of a caller identity written as `text` (URI, name-addr or bare number)."""
    (identity,) = read_address(NumberReader(norm, region), text)
    return identity.number


@pytest.mark.parametrize(
    ("given", "e164"),
    [
        ("0162123456", "+33162123456"),
        ("01 62 12 34 56", "+33162123456"),
        ("01.62.12.34.56", "+33162123456"),
        ("01-62-12-34-56", "+33162123456"),
        ("(01) 62 12 34 56", "+33162123456"),
        ("+33162123456", "+33162123456"),
        ("+33 1 62 12 34 56", "+33162123456"),
        ("+33 (0)1 62 12 34 56", "+33162123456"),
        ("0033162123456", "+33162123456"),
        ("33162123456", "+33162123456"),
        ("sip:+33162123456@carrier.example;user=phone", "+33162123456"),
        ("sip:0162123456@10.0.0.1:5060", "+33162123456"),
        ("sips:+33162123456@carrier.example", "+33162123456"),
        ("<sip:+33162123456@carrier.example;user=phone>", "+33162123456"),
        ('"Acme" <sip:0162123456@dialer.local>;tag=abc', "+33162123456"),
        ("sip:+33-1-62-12-34-56;isub=1@carrier.example;user=phone", "+33162123456"),
        ("tel:+33-1-62-12-34-56", "+33162123456"),
        ("tel:+33.1.62.12.34.56;foo=bar", "+33162123456"),
        ("tel:01-62-12-34-56;phone-context=+33", "+33162123456"),
        ("sip:0162123456;phone-context=+33@carrier.example;user=phone", "+33162123456"),
        ("<tel:+33162123456>", "+33162123456"),
        ("sip:%2B33162123456@carrier.example", "+33162123456"),
        ("0611223344", "+33611223344"),
        # Overseas departments: the E.164 country code is not +33.
        ("0692123456", "+262692123456"),
        ("+33692123456", "+262692123456"),
        ("0262123456", "+262262123456"),
        ("+262262123456", "+262262123456"),
        ("0696123456", "+596696123456"),
        ("0596301234", "+596596301234"),
        ("0590123456", "+590590123456"),
        ("0594123456", "+594594123456"),
        ("0639401234", "+262639401234"),
        # Ranges the national plan gives to overseas territories beyond the classic 0262/069x ones.
        ("0709212345", "+262709212345"),  # Réunion mobile
        ("0709312345", "+594709312345"),  # Guyane mobile
        ("0976221234", "+262976221234"),  # Réunion VoIP
        ("0939912345", "+262939912345"),
        ("0263101234", "+262263101234"),
        ("0269001234", "+262269001234"),  # Mayotte
        ("0598712345", "+590598712345"),
        ("0947512345", "+590947512345"),  # overseas NPV
        ("+33947912345", "+262947912345"),
        ("0800123456", "+33800123456"),  # special numbers stay national
        ("0899123456", "+33899123456"),
        # Foreign numbers go through phonenumbers.
        ("+447911123456", "+447911123456"),
        ("00447911123456", "+447911123456"),
        ("+1 212 555 0100", "+12125550100"),
    ],
)
def test_forms_normalise_to_e164(norm: Normaliser, given: str, e164: str) -> None:
    n = parse(norm, given)
    assert (n.kind, n.e164) == (E164, e164)
    if ":" not in given:
        assert n.raw == given  # a URI's number is its user part: the raw text is that user part


@pytest.mark.parametrize(
    ("given", "kind"),
    [
        ("sip:anonymous@anonymous.invalid", ANONYMOUS),
        ('"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1', ANONYMOUS),
        ("sip:restricted@carrier.example", ANONYMOUS),
        ("sip:Unavailable@carrier.example", ANONYMOUS),
        ("sip:+33162123456@anonymous.invalid", ANONYMOUS),
        ("sip:carrier.example", ANONYMOUS),  # no user part
        ("<sip:carrier.example>", ANONYMOUS),
        ("3010", SHORT),
        ("sip:3179@dialer.local", SHORT),
        ("118218", SHORT),
        ("0712345678", INVALID),  # 07 1x: not assigned
        ("+33700000000", INVALID),
        ("0596123456", INVALID),  # Martinique's zone, a range phonenumbers does not list
        ("0947823456", INVALID),  # Mayotte's NPV block, not (yet) listed
        ("+262123456789", INVALID),
        ("+590612345678", INVALID),
        ("sip:0712345678@dialer", INVALID),
        ("sip:alice@example.com", INVALID),
        ("01621234", INVALID),
        ("016212345678", INVALID),
        ("+4416329609", INVALID),
        ("tel:abc", INVALID),
        ("", ANONYMOUS),
    ],
)
def test_other_kinds(norm: Normaliser, given: str, kind: str) -> None:
    assert parse(norm, given).kind == kind


@pytest.mark.parametrize("region", ["FR", "RE", "YT", "GP", "MQ"])
def test_trunks_of_every_territory_read_national_numbers_alike(norm: Normaliser, region: str) -> None:
    """One national plan: a dialer in Réunion dials 06… for a metropolitan mobile, as one in Paris does."""
    assert parse(norm, "0612345678", region).e164 == "+33612345678"
    assert parse(norm, "0692123456", region).e164 == "+262692123456"
    assert parse(norm, "0596301234", region).e164 == "+596596301234"
    assert parse(norm, "0712345678", region).kind == INVALID


def test_cache_returns_same_object(norm: Normaliser) -> None:
    assert norm.read("0162123456") is norm.read("0162123456")


def test_e164_helper_for_importers(norm: Normaliser) -> None:
    assert norm.e164("06 92 12 34 56") == "+262692123456"
    assert norm.e164("3010") is None
    assert norm.e164("garbage") is None




@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nsn=st.from_regex(r"[1-9][0-9]{8}", fullmatch=True), sep=st.sampled_from(["", " ", ".", "-"]))
def test_every_form_of_one_number_agrees(norm: Normaliser, nsn: str, sep: str) -> None:
    national = "0" + nsn
    spaced = sep.join([national[:2], national[2:4], national[4:6], national[6:8], national[8:]])
    tel_sep = sep.strip()  # a tel: URI holds visual separators, no spaces (RFC 3966)
    tel_spaced = spaced.replace(" ", "")
    forms = [
        national,
        spaced,
        "+33" + nsn,
        "0033" + nsn,
        "33" + nsn,
        f"sip:{national}@h",
        f"sips:+33{nsn}@h",
        f"sip:+33{nsn}@h;user=phone",
        f"tel:+33{tel_sep}{nsn}",
        f"tel:{tel_spaced};phone-context=+33",
        f'"x" <sip:{national}@h>;tag=1',
    ]
    results = {(n.kind, n.e164) for n in (parse(norm, f) for f in forms)}
    assert len(results) == 1
    ((kind, e164),) = results
    assert kind == INVALID or (kind == E164 and e164.endswith(nsn) and e164.startswith("+"))
