"""The normaliser's fast path (the URI and number forms dialers nearly always send) answers exactly what the
general path answers, and leaves every other form to it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import EXAMPLE

from sipfilter.config import Config, load_config
from sipfilter.policy.numbers import ANONYMOUS, E164, INVALID, Normaliser, Number, split_uri_user


@pytest.fixture(scope="module")
def norm() -> Normaliser:
    # The French pack's numbering plan (overseas territories, blocks), anonymous users and hosts.
    plan = load_config(EXAMPLE).rules["dialer"].normaliser.plan
    return Normaliser(plan=plan, anonymous_users=("anonymous", "0000000000"),
                      anonymous_hosts=("anonymous.invalid",))


def general(n: Normaliser, text: str) -> Number:
    """What _parse_uncached answered before the fast path existed: split_uri_user, then _number_uncached."""
    parts = split_uri_user(text)
    if parts is None:
        return Number(text, "", ANONYMOUS, "no user part in the URI")
    user, host, params = parts
    if host in n._anon_hosts or user.strip().lower() in n._anon_users or not user.strip():
        return Number(text, "", ANONYMOUS, "anonymous")
    return n._number_uncached(user, "FR", params.get("phone-context", ""), text)


@pytest.mark.parametrize(
    "text",
    [
        "sip:+33612345678@carrier.example;user=phone",
        "sip:0612345678@10.0.0.1",
        "sip:0612345678@10.0.0.1:5060;transport=udp",
        "sip:+33692123456@carrier.example",  # overseas: +262
        "tel:+33612345678",
        "tel:0612345678",
        "0612345678",
        "+33612345678",
        "0336123456",  # 0 + 33… is a national number too
    ],
)
def test_common_forms_take_the_fast_path(norm: Normaliser, text: str) -> None:
    fast = norm._parse_fast(text)
    assert fast is not None and fast.kind == E164
    assert fast == general(norm, text)


@pytest.mark.parametrize(
    "text",
    [
        "sip:0712345678@10.0.0.1",  # 07 1x: not assigned
        "+33700000000",
        "tel:0596123456",  # Martinique's block, a range no territory lists
        "0947823456",
        "sip:+33263900000@carrier.example",  # Réunion's 0263 block, not listed there
    ],
)
def test_the_fast_path_validates(norm: Normaliser, text: str) -> None:
    fast = norm._parse_fast(text)
    assert fast is not None and fast.kind == INVALID
    assert fast == general(norm, text)


@pytest.mark.parametrize(
    "text",
    [
        "sip:+33612345678@anonymous.invalid",  # anonymous host wins
        "sip:0000000000@dialer",  # a configured anonymous user
        "SIP:+33612345678@carrier.example",
        "sip:+33612345678@carrier.example ",
        "<sip:+33612345678@carrier.example>",
        "sip:+33612345678;isub=1@carrier.example",
        "sip:+33012345678@carrier.example",  # +33 0…: the general path's trunk-prefix rule
        "sip:0012345678@x",
        "sip:+33612345678@[2001:db8::1]",
        "tel:0612345678;phone-context=+33",
        "0033612345678",
        "33612345678",
        "06 12 34 56 78",
        "+3361234567٨",  # a non-ASCII digit
        "sip:+33612345678@a@b",
    ],
)
def test_other_forms_are_left_to_the_general_path(norm: Normaliser, text: str) -> None:
    assert norm._parse_fast(text) is None
    assert norm.parse(text) == general(norm, text)


_digits = st.text("0123456789", min_size=0, max_size=13)
_user = st.one_of(_digits, _digits.map(lambda d: "+" + d), _digits.map(lambda d: "+33" + d),
                  _digits.map(lambda d: "0" + d), st.text(min_size=0, max_size=14))
_host = st.sampled_from(["carrier.example", "10.0.0.1:5060", "anonymous.invalid", "ANONYMOUS.INVALID",
                         "[::1]", "h;user=phone", "h?x=1", ""])
_text = st.one_of(
    st.tuples(st.sampled_from(["sip:", "tel:", "", "sips:", "Sip:"]), _user,
              st.sampled_from(["@", "", ";a=b@"]), _host).map("".join),
    st.text(max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(text=_text)
def test_fast_path_agrees_with_the_general_path(norm: Normaliser, text: str) -> None:
    norm.parse.cache_clear()  # type: ignore[attr-defined]
    assert norm.parse(text) == general(norm, text)


def test_the_configured_pack_uses_it(config: Config) -> None:
    n = config.rules["dialer"].normaliser
    assert n._parse_fast("sip:+33612345678@carrier.example;user=phone") == Number(
        "sip:+33612345678@carrier.example;user=phone", "+33612345678", E164)
