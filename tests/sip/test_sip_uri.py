"""URIs: parsing, RFC 3261 §19.1.4 comparison, tel URIs, escaping and injection-safe serialization."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sipfilter.sip.grammar as g
import sipfilter.sip.uri as uri_module
from sipfilter.sip import AbsoluteUri, NameAddr, ParseError, SipUri, TelUri, parse_uri, uri_equal
from sipfilter.sip.headers import parse_name_addrs

# RFC 3261 §19.1.4, the pairs the RFC itself lists.
EQUAL = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
    ("tel:+358-555-1234567", "tel:+358.555.1234567"),
]
NOT_EQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
    ("sip:alice@atlanta.com;user=phone", "sip:alice@atlanta.com"),
    ("tel:+33123456789", "sip:+33123456789@example.com;user=phone"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_equal_pairs(a: str, b: str) -> None:
    assert uri_equal(parse_uri(a), parse_uri(b))
    assert uri_equal(parse_uri(b), parse_uri(a))


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_unequal_pairs(a: str, b: str) -> None:
    assert not uri_equal(parse_uri(a), parse_uri(b))
    assert not uri_equal(parse_uri(b), parse_uri(a))


def test_sip_uri_components() -> None:
    u = parse_uri("sips:alice:secret@[2001:db8::1]:5061;transport=tls;lr;maddr=239.255.255.1?subject=hi")
    assert isinstance(u, SipUri)
    assert (u.scheme, u.user, u.password, u.host, u.port) == (
        "sips",
        "alice",
        "secret",
        "[2001:db8::1]",
        5061,
    )
    assert list(u.params) == ["transport", "lr", "maddr"] and u.transport == "tls" and u.lr
    assert u.headers == {"subject": "hi"}
    assert u.hostport == "[2001:db8::1]:5061"
    assert parse_uri(str(u)) == u


def test_user_phone() -> None:
    u = parse_uri("sip:+33-1-23-45-67-89;isub=1411@gw.example.net;user=phone")
    assert isinstance(u, SipUri) and u.is_phone and u.user == "+33-1-23-45-67-89;isub=1411"


def test_tel_uri() -> None:
    g = parse_uri("tel:+33-6-12-34-56-78;ext=12")
    assert isinstance(g, TelUri) and g.is_global and g.digits == "+33612345678"
    assert g.params == {"ext": "12"}
    local = parse_uri("tel:0612345678;phone-context=+33")
    assert isinstance(local, TelUri) and not local.is_global and local.phone_context == "+33"
    assert str(local) == "tel:0612345678;phone-context=+33"


@pytest.mark.parametrize(
    "text",
    [
        "sip:",
        "sip:user@",
        "sip:host:99999",
        "sip:a b@host",
        "sip:us%zzer@host",
        "sip:user@host;lr;",
        "<sip:user@host>",
        "sip:user@host>",
        "tel:",
        "tel:+",
        "",
        "nocolon",
        "1abc:def",
    ],
)
def test_malformed_uris(text: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_uri(text)
    assert info.value.status == 400


def test_unknown_scheme_is_opaque() -> None:
    assert parse_uri("urn:service:sos") == AbsoluteUri("urn", "service:sos")
    assert str(parse_uri("HTTP://example.com/x")) == "http://example.com/x"


def test_serialization_escapes_what_would_break_the_message() -> None:
    u = SipUri(user='a\r\nVia: x<>"%', host="example.com", params={"x": "a b;c"}, headers={"h": "v&w"})
    text = str(u)
    for bad in ("\r", "\n", "<", ">", '"', " "):
        assert bad not in text
    assert parse_uri(text) == u


@pytest.mark.parametrize("host", ["evil.com\r\nVia: x", "a b", "", "<x>"])
def test_invalid_host_refused_on_output(host: str) -> None:
    with pytest.raises(ValueError):
        str(SipUri(host=host))


def test_a_refused_host_is_refused_every_time_and_a_good_one_each_time_too() -> None:
    for _ in range(2):  # the second time answers from the memo of checked hosts: the same answers
        with pytest.raises(ValueError):
            str(SipUri(user="a", host="evil.com\r\nVia: x"))
        assert str(SipUri(user="a", host="carrier.example", port=5060)) == "sip:a@carrier.example:5060"
    assert "evil.com\r\nVia: x" not in uri_module._HOSTS


_CLASSES = {
    "USER_SAFE": (uri_module.USER_SAFE, g.UNRESERVED + g.USER_UNRESERVED),
    "PASSWORD_SAFE": (uri_module.PASSWORD_SAFE, g.UNRESERVED + "&=+$,"),
    "PARAM_SAFE": (uri_module.PARAM_SAFE, g.UNRESERVED + r"\[\]/:&+$"),
    "HEADER_SAFE": (uri_module.HEADER_SAFE, g.UNRESERVED + r"\[\]/?:+$"),
}


@pytest.mark.parametrize("name", sorted(_CLASSES))
def test_each_safe_set_is_exactly_its_grammar_class(name: str) -> None:
    """The sets are written out from ASCII alone: no character beyond ASCII may match the class."""
    chars, char_class = _CLASSES[name]
    pattern = re.compile(f"[{char_class}]")
    every = "".join(map(chr, range(0x110000)))
    assert "".join(pattern.findall(every)) == chars
    assert not set(chars) & set('%\r\n<>" ')


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x2FF) | st.sampled_from("+%;=@:"), max_size=12),
       st.sampled_from(sorted(_CLASSES)))  # fmt: skip
def test_escape_keeps_exactly_the_class_and_escapes_the_rest(text: str, name: str) -> None:
    chars, char_class = _CLASSES[name]
    pattern = re.compile(f"[{char_class}]")
    expected = "".join(
        ch if pattern.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
        for ch in text
    )
    assert uri_module.escape(text, chars) == expected


def test_display_name_cannot_inject() -> None:
    na = NameAddr(
        uri=parse_uri("sip:a@b.example"), display_name='Eve"\r\nVia: SIP/2.0/UDP evil', params={"tag": "1"}
    )
    text = str(na)
    assert "\r" not in text and "\n" not in text
    (back,) = parse_name_addrs([text])
    assert back.display_name == 'Eve"  Via: SIP/2.0/UDP evil'
    assert back.tag == "1" and back.uri == na.uri


def test_header_param_values_are_quoted_when_needed() -> None:
    na = NameAddr(uri=parse_uri("sip:a@b.example"), params={"x": "two words;and=more", "tag": "t1"})
    (back,) = parse_name_addrs([str(na)])
    assert back.params == {"x": '"two words;and=more"', "tag": "t1"}


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), min_codepoint=0, max_codepoint=0x2FF), min_size=1
)
_pname = st.from_regex(r"[a-z][a-z0-9\-]{0,8}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    scheme=st.sampled_from(["sip", "sips"]),
    user=st.none() | _text,
    password=st.none() | st.text(max_size=5),
    host=st.sampled_from(["example.com", "192.0.2.1", "[2001:db8::5]", "a-b.c_d.example."]),
    port=st.none() | st.integers(0, 65535),
    params=st.dictionaries(_pname, st.none() | _text, max_size=4),
    headers=st.dictionaries(_text, st.text(), max_size=3),
)
def test_sip_uri_round_trip(
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    params: dict[str, str | None],
    headers: dict[str, str],
) -> None:
    if user is None:
        password = None
    u = SipUri(scheme, user, password, host, port, params, headers)
    text = str(u)
    assert "\r" not in text and "\n" not in text and " " not in text
    back = parse_uri(text)
    assert back == u
    assert uri_equal(back, u)


def test_output_never_produces_unparseable_uris() -> None:
    with pytest.raises(ValueError):
        str(SipUri(user="", host="example.com"))
    with pytest.raises(ValueError):
        str(SipUri(host="example.com", params={"": "x"}))
    assert str(SipUri(host="example.com", params={"lr": "", "x": None})) == "sip:example.com;lr;x"
