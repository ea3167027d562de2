"""Every number form sipfilter may see normalises to the same E.164 string (or a clear kind). URI forms are
read as the B2BUA reads them: the SIP core parses, the normaliser reads the user part it hands over."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfilter.b2bua.facts import read_address
from sipfilter.config import Config
from sipfilter.policy.numbers import ANONYMOUS, E164, INVALID, SHORT, Normaliser, Number, NumberReader


@pytest.fixture
def norm(config: Config) -> Normaliser:
    return config.rules["dialer"].normaliser


def parse(norm: Normaliser, text: str) -> Number:
    """The number of a caller identity written as `text` (URI, name-addr or bare number)."""
    (identity,) = read_address(NumberReader(norm), text)
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
        ("0596123456", "+596596123456"),
        ("0590123456", "+590590123456"),
        ("0594123456", "+594594123456"),
        ("0639123456", "+262639123456"),
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


def test_cache_returns_same_object(norm: Normaliser) -> None:
    assert norm.read("0162123456") is norm.read("0162123456")


def test_e164_helper_for_importers(norm: Normaliser) -> None:
    assert norm.e164("06 92 12 34 56") == "+262692123456"
    assert norm.e164("3010") is None
    assert norm.e164("garbage") is None


def test_overseas_table_agrees_with_phonenumbers(config: Config) -> None:
    """The pack's fast-path table must give numbers phonenumbers considers valid for that territory."""
    norm = config.rules["dialer"].normaliser
    for prefix in (
        "262",
        "263",
        "269",
        "692",
        "693",
        "639",
        "590",
        "690",
        "691",
        "594",
        "694",
        "596",
        "696",
        "697",
    ):
        e164 = norm.read("0" + prefix + "123456").e164
        parsed = phonenumbers.parse(e164)
        assert phonenumbers.region_code_for_country_code(parsed.country_code) != "FR", (prefix, e164)
        assert parsed.country_code != 33


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
    results = {parse(norm, f).e164 for f in forms}
    assert len(results) == 1
    (e164,) = results
    assert e164.endswith(nsn) and e164.startswith("+")
