"""Display names (and every quoted-string sipfilter writes) go through one function, `quote`: whatever the
text, the result is a valid quoted-string of valid UTF-8 that parses back to the text (control characters as
spaces, undecodable octets as U+FFFD)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from sipfilter.sip import Request, parse
from sipfilter.sip import grammar as g
from sipfilter.sip.headers import NameAddr, parse_name_addr, parse_name_addrs, quote, unquote
from sipfilter.sip.uri import SipUri

_QUOTED = re.compile(g.QUOTED_STRING)


def cleaned(text: str) -> str:
    """What survives quoting: controls but HT become spaces, lone surrogates (octets that were not UTF-8)
    become U+FFFD."""
    out = re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", " ", text)
    return re.sub("[\ud800-\udfff]", "\ufffd", out)


def test_quote_escapes_what_the_grammar_requires() -> None:
    assert quote('a"b') == '"a\\"b"'
    assert quote("back\\slash") == '"back\\\\slash"'
    assert quote("x\r\nInjected: 1") == '"x  Injected: 1"'
    assert quote("nul\x00") == '"nul "'
    assert quote("\udcff\udcfe") == '"\ufffd\ufffd"'
    assert quote("tab\tand é") == '"tab\tand é"'


@given(st.text())
def test_quote_round_trips(text: str) -> None:
    quoted = quote(text)
    assert _QUOTED.fullmatch(quoted)
    quoted.encode("utf-8")  # strict: never a lone surrogate, so never invalid UTF-8 on the wire
    assert unquote(quoted) == cleaned(text)


@given(st.text())
def test_display_names_round_trip_through_name_addrs(text: str) -> None:
    na = NameAddr(uri=SipUri(user="0162123456", host="h.example"), display_name=text, params={"tag": "1"})
    written = str(na)
    assert parse_name_addr(written).display_name == cleaned(text)
    (again,) = parse_name_addrs([written])
    assert again.display_name == cleaned(text) and again.uri == na.uri


def _invite(from_: bytes) -> Request:
    msg = parse(
        b"INVITE sip:0612345678@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n"
        b"From: " + from_ + b"\r\nTo: <sip:0612345678@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert isinstance(msg, Request)
    return msg


@given(st.text(max_size=40))
def test_display_names_round_trip_through_a_whole_message(text: str) -> None:
    """Through bytes: a From written with quote() is read back with the same display name."""
    msg = _invite(f"{quote(text)} <sip:0162123456@h>;tag=1".encode())
    assert msg.from_.display_name == cleaned(text)


@given(st.binary(min_size=1, max_size=6).map(lambda b: bytes(x | 0x80 for x in b)))
def test_octets_that_are_not_utf8_are_written_as_replacement_characters(junk: bytes) -> None:
    msg = _invite(b'"a' + junk + b'" <sip:0162123456@h>;tag=1')
    display = msg.from_.display_name
    assert display is not None
    written = quote(display).encode("utf-8")  # strict: raises if a raw octet survived
    assert unquote(written.decode("utf-8")) == "a" + cleaned(junk.decode("utf-8", "surrogateescape"))
