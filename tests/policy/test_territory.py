"""The numbering plan compiled from phonenumbers' metadata, checked against phonenumbers itself over every
range: which territories list a number, which E.164 form the normaliser gives it, and that numbers no
territory lists are refused."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_helpers import EXAMPLE

from sipfilter.b2bua.facts import read_address
from sipfilter.configure import load_config
from sipfilter.policy.numbers import E164, INVALID, Normaliser, Number, NumberReader
from sipfilter.policy.territory import NSN_LENGTH, NumberingPlan, PatternError, boxes, french_plan

NORM: Normaliser = load_config(EXAMPLE).rules["dialer"].normaliser
PLAN: NumberingPlan = NORM.plan  # type: ignore[assignment]
BARE = french_plan()  # phonenumbers' regions only, without the pack's blocks and ranges
HOME_FIRST = ("8",)


def parse(text: str) -> Number:
    """The number of `text` (URI or bare number) as the B2BUA reads a caller identity."""
    (identity,) = read_address(NumberReader(NORM), text)
    return identity.number


def listed_by(nsn: str) -> list[str]:
    """The oracle: the regions of the plan for which phonenumbers says the number is valid."""
    out = []
    for region in PLAN.regions:
        number = phonenumbers.PhoneNumber(country_code=int(PLAN.codes[region][1:]), national_number=int(nsn))
        if phonenumbers.is_valid_number_for_region(number, region):
            out.append(region)
    return out


_PACK_BLOCKS = load_config(EXAMPLE).rule_packs["fr"].data["numbering"]["blocks"]
BLOCKS = {str(k): tuple(v) for k, v in _PACK_BLOCKS.items()}


def block_of(nsn: str) -> tuple[str, ...] | None:
    hits = [p for p in BLOCKS if nsn.startswith(p)]
    return BLOCKS[max(hits, key=len)] if hits else None


# Every range of the table, with random completions, plus uniformly random numbers.
_nsn = st.one_of(
    st.tuples(st.sampled_from(PLAN.prefixes()), st.randoms(use_true_random=False)).map(
        lambda pr: pr[0] + "".join(pr[1].choice("0123456789") for _ in range(NSN_LENGTH - len(pr[0])))
    ),
    st.from_regex(r"[1-9][0-9]{8}", fullmatch=True),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nsn=_nsn)
def test_the_table_lists_exactly_what_phonenumbers_lists(nsn: str) -> None:
    assert list(PLAN.valid_regions(nsn)) == listed_by(nsn)
    assert list(BARE.valid_regions(nsn)) == listed_by(nsn)


def test_every_range_once() -> None:
    """One completion of every prefix of the table (deterministic: a complement to the random test)."""
    rnd = random.Random(17)
    for prefix in PLAN.prefixes():
        nsn = prefix + "".join(rnd.choice("0123456789") for _ in range(NSN_LENGTH - len(prefix)))
        assert list(PLAN.valid_regions(nsn)) == listed_by(nsn), nsn


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nsn=_nsn, form=st.sampled_from(["0{}", "+33{}", "sip:0{}@dialer", "tel:+33{}", "0033{}"]))
def test_national_forms_normalise_to_the_territory_that_lists_them(nsn: str, form: str) -> None:
    n = parse(form.format(nsn))
    listed = listed_by(nsn)
    overseas = [r for r in listed if r != "FR"]
    block = block_of(nsn)
    if n.kind == INVALID:
        # Nobody lists it, or it is in a block whose territories do not.
        assert not listed or (block is not None and not set(block) & set(listed)), (nsn, listed)
        return
    assert n.kind == E164 and n.e164.endswith(nsn)
    parsed = phonenumbers.parse(n.e164)
    assert phonenumbers.is_valid_number(parsed), n.e164  # never an E.164 form phonenumbers calls invalid
    region = phonenumbers.region_code_for_number(parsed)
    if n.e164.startswith("+33"):
        # Metropolitan only when no overseas territory claims it (or a national special number).
        assert block is None and (not overseas or nsn.startswith(HOME_FIRST)), (nsn, listed)
        assert region == "FR"
    else:
        assert (overseas and region in overseas) or (block is not None and region in block), (nsn, n.e164)


@settings(max_examples=500, deadline=None)
@given(nsn=_nsn, code=st.sampled_from(["+262", "+590", "+594", "+596"]))
def test_overseas_e164_numbers_are_valid_exactly_when_phonenumbers_says_so(nsn: str, code: str) -> None:
    n = parse(code + nsn)
    parsed = phonenumbers.parse(code + nsn)
    regions = phonenumbers.region_codes_for_country_code(parsed.country_code)
    valid = any(phonenumbers.is_valid_number_for_region(parsed, r) for r in regions)
    block = block_of(nsn)
    in_block_elsewhere = block is not None and PLAN.codes[block[0]] == code and not (
        set(block) & {r for r in regions if phonenumbers.is_valid_number_for_region(parsed, r)})
    assert (n.kind == E164) == (valid and not in_block_elsewhere), (code, nsn)
    if n.kind == E164:
        assert n.e164 == code + nsn


@pytest.mark.parametrize(
    ("national", "e164", "regions"),
    [
        ("0262123456", "+262262123456", ("RE",)),
        ("0263101234", "+262263101234", ("RE",)),
        ("0269001234", "+262269001234", ("YT",)),
        ("0639401234", "+262639401234", ("YT",)),
        ("0692123456", "+262692123456", ("RE", "YT")),  # Réunion's mobiles are used in Mayotte too
        ("0693001234", "+262693001234", ("RE", "YT")),
        ("0709212345", "+262709212345", ("RE",)),
        ("0709312345", "+594709312345", ("GF",)),
        ("0709012345", "+590709012345", ("GP", "BL", "MF")),
        ("0976221234", "+262976221234", ("RE",)),
        ("0976912345", "+262976912345", ("YT",)),
        ("0939912345", "+262939912345", ("RE",)),
        ("0939812345", "+262939812345", ("YT",)),
        ("0590271234", "+590590271234", ("BL", "MF")),  # Saint-Barthélemy or Saint-Martin
        ("0590771234", "+590590771234", ("MF",)),
        ("0590011234", "+590590011234", ("GP",)),
        ("0690001234", "+590690001234", ("GP", "BL", "MF")),
        ("0594001234", "+594594001234", ("GF",)),
        ("0596301234", "+596596301234", ("MQ",)),
        ("0947512345", "+590947512345", ("GP", "BL", "MF")),  # overseas NPV
        ("0947612345", "+594947612345", ("GF",)),
        ("0947712345", "+596947712345", ("MQ",)),
        ("0947812345", "+262947812345", ("YT",)),
        ("0947912345", "+262947912345", ("RE",)),
        ("0612345678", "+33612345678", ("FR",)),
        ("0800123456", "+33800123456", ("FR",)),
        ("0948123456", "+33948123456", ("FR",)),
    ],
)
def test_known_ranges(national: str, e164: str, regions: tuple[str, ...]) -> None:
    assert NORM.e164(national) == e164
    assert NORM.e164("+33" + national[1:]) == e164  # carriers also send +33 before overseas numbers
    assert NORM.e164(e164) == e164
    res = PLAN.resolve_e164(e164)
    assert res is not None and res.regions == regions


@pytest.mark.parametrize(
    "national",
    ["0712345678", "0700000000", "0596123456", "0947823456", "0263900000", "0590751234", "0709512345"],
)
def test_numbers_no_territory_lists_are_invalid(national: str) -> None:
    assert parse(national).kind == INVALID
    assert parse("+33" + national[1:]).kind == INVALID


def test_pattern_compiler() -> None:
    assert boxes(r"7[3-9]\d{7}") == [(frozenset("7"), frozenset("3456789"), *(frozenset("0123456789"),) * 7)]
    assert len(boxes(r"4\d{5}(?:\d{2})?", 8)) == 1 and len(boxes(r"4\d{5}(?:\d{2})?", 6)) == 1
    assert len(boxes(r"(?:[13]\d|2[0-57-9])\d{7}")) == 2
    for bad in (r"7+\d", r"\w{9}", r"(7\d{8}", r"[a-z]\d{8}"):
        with pytest.raises(PatternError):
            boxes(bad)


CALLER_ID = load_config(EXAMPLE).rules["dialer"].caller_id


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nsn=_nsn)
def test_every_mobile_number_of_the_plan_is_in_the_mobile_category(nsn: str) -> None:
    """The pack lists mobile ranges by prefix: phonenumbers' mobile ranges of every territory must fall in."""
    n = parse("0" + nsn)
    if n.kind != E164:
        return
    kind = phonenumbers.number_type(phonenumbers.parse(n.e164))
    if kind == phonenumbers.PhoneNumberType.MOBILE:
        assert CALLER_ID.classify(n).name == "mobile", n.e164
