"""The normaliser's fast path (the user parts dialers nearly always send) answers exactly what the general
path answers, and leaves every other form to it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import EXAMPLE

from sipfilter.config import Config
from sipfilter.configure import load_config
from sipfilter.policy.numbers import ANONYMOUS, E164, INVALID, Normaliser, Number


@pytest.fixture(scope="module")
def norm() -> Normaliser:
    # The French pack's numbering plan (overseas territories, blocks), anonymous users and hosts.
    plan = load_config(EXAMPLE).rules["dialer"].normaliser.plan
    return Normaliser(plan=plan, anonymous_users=("anonymous", "0000000000"),
                      anonymous_hosts=("anonymous.invalid",))


def general(n: Normaliser, user: str, host: str = "", context: str = "") -> Number:
    """What Normaliser.read answers without its fast path: user parameters, anonymous users and hosts, then
    the number (phone-context checked against the number alone)."""
    number, sep, rest = user.partition(";")
    if sep:
        for item in rest.split(";"):
            key, _, value = item.partition("=")
            if key.strip().lower() == "phone-context":
                context = value.strip()
    if not number.strip() or number.strip().lower() in n._anon_users or host.lower() in n._anon_hosts:
        return Number(user, "", ANONYMOUS, "anonymous")
    got = n._number_uncached(number, "FR", context, user)
    if context and not number.lstrip().startswith("+"):
        alone = n._number_uncached(number, "FR", "", user)
        if (alone.kind, alone.e164) != (got.kind, got.e164):
            return n._read(user, host, context)  # the INVALID answer, whose words the test does not pin
    return got


@pytest.mark.parametrize(
    ("user", "host"),
    [
        ("+33612345678", "carrier.example"),
        ("0612345678", "10.0.0.1"),
        ("+33692123456", "carrier.example"),  # overseas: +262
        ("+33612345678", ""),
        ("0612345678", ""),
        ("0336123456", ""),  # 0 + 33… is a national number too
    ],
)
def test_common_forms_take_the_fast_path(norm: Normaliser, user: str, host: str) -> None:
    fast = norm._parse_fast(user, host)
    assert fast is not None and fast.kind == E164
    assert fast == general(norm, user, host)


@pytest.mark.parametrize(
    ("user", "host"),
    [
        ("+33612345678", "anonymous.invalid"),  # anonymous host wins
        ("+33612345678", "ANONYMOUS.INVALID"),
        ("0000000000", "dialer"),  # a configured anonymous user
        ("+33612345678;isub=1", "carrier.example"),
        ("+33012345678", "carrier.example"),  # +33 0…: the general path's trunk-prefix rule
        ("0012345678", "x"),
        ("0612345678;phone-context=+33", ""),
        ("0033612345678", ""),
        ("33612345678", ""),
        ("06 12 34 56 78", ""),
        ("+3361234567٨", ""),  # a non-ASCII digit
        ("0612345678\n", ""),
    ],
)
def test_other_forms_are_left_to_the_general_path(norm: Normaliser, user: str, host: str) -> None:
    assert norm._parse_fast(user, host) is None
    assert norm.read(user, host) == general(norm, user, host)


@pytest.mark.parametrize(
    ("user", "host"),
    [
        ("0712345678", "10.0.0.1"),  # 07 1x: not assigned
        ("+33700000000", ""),
        ("0596123456", ""),  # Martinique's block, a range no territory lists
        ("0947823456", ""),
        ("+33263900000", "carrier.example"),  # Réunion's 0263 block, not listed there
    ],
)
def test_the_fast_path_validates(norm: Normaliser, user: str, host: str) -> None:
    fast = norm._parse_fast(user, host)
    assert fast is not None and fast.kind == INVALID
    assert fast == general(norm, user, host)


_digits = st.text("0123456789", min_size=0, max_size=13)
_user = st.one_of(_digits, _digits.map(lambda d: "+" + d), _digits.map(lambda d: "+33" + d),
                  _digits.map(lambda d: "0" + d), st.text(min_size=0, max_size=14),
                  st.tuples(_digits, st.sampled_from([";isub=1", ";phone-context=+33", ";phone-context=+44",
                                                      ";PHONE-CONTEXT=x.example", ";"])).map("".join))
_host = st.sampled_from(["carrier.example", "10.0.0.1", "anonymous.invalid", "ANONYMOUS.INVALID", "[::1]",
                         ""])  # fmt: skip
_context = st.sampled_from(["", "", "+33", "+44", "+33-1", "example.com"])


@settings(max_examples=400, deadline=None)
@given(user=_user, host=_host, context=_context)
def test_fast_path_agrees_with_the_general_path(norm: Normaliser, user: str, host: str, context: str) -> None:
    norm.read_cache.cache_clear()
    assert norm.read(user, host, context) == general(norm, user, host, context)
    assert norm.read_callee(user, host, context) == norm.read(user, host, context)


def test_the_configured_pack_uses_it(config: Config) -> None:
    n = config.rules["dialer"].normaliser
    assert n._parse_fast("+33612345678", "carrier.example") == Number("+33612345678", "+33612345678", E164)


def test_a_phone_context_that_changes_the_number_makes_it_invalid(norm: Normaliser) -> None:
    """The carrier may not honour phone-context (a tel: Request-URI loses it on the B-leg): the policy never
    decides on another number than the one dialled."""
    assert norm.read("0612345678", "", "+33").e164 == "+33612345678"  # the same number either way
    assert norm.read("0612345678;phone-context=+33").e164 == "+33612345678"
    other = norm.read("0612345678", "", "+44")
    assert other.kind == "invalid" and "global form" in other.error
    assert norm.read("+33612345678", "", "+44").e164 == "+33612345678"  # a global number ignores it
