"""The parser's memo fast paths (From without its tag, Via without its branch, URI without its user)
give exactly what a full parse gives, including parameter order, last-wins duplicates and errors."""

from __future__ import annotations

import pytest

from sipfilter import compiled
from sipfilter.sip import header_values as h
from sipfilter.sip import uri as u
from sipfilter.sip.errors import ParseError
from sipfilter.sip.headers import parse_name_addr, parse_vias
from sipfilter.sip.uri import parse_uri


def _fresh() -> None:
    for memo in (h._TAGLESS_MEMO, h._VIA_MEMO, h._NA_MEMO, u._MEMO, u._HOST_PART_MEMO):
        memo.clear()


@pytest.mark.parametrize(
    "value",
    [
        '"Clients" <sip:+33188776655@dialer.example.com;user=phone>;tag=8f3a2c1d',
        "<sip:a@b>;x=1;tag=second",
        "<sip:a@b>;tag=first;x=1;tag=last",
        "sip:a@b;tag=t",
        "<sip:a@b;tag=inside>",
        '"x;tag=y" <sip:a@b>;tag=z',
    ],
)
def test_name_addr_memo_matches_full_parse(value: str) -> None:
    _fresh()
    full = h._parse_name_addr(value, "From header")
    warm = parse_name_addr(value.replace("=8f3a2c1d", "=other"), "From header")  # fills the memo
    got = parse_name_addr(value, "From header")
    assert got == full and list(got.params.items()) == list(full.params.items()) and got.raw == value
    assert warm.uri == full.uri


def test_name_addr_memo_keeps_errors() -> None:
    _fresh()
    with pytest.raises(ParseError, match="Malformed From header"):
        parse_name_addr('"unterminated <sip:a@b>;tag=x', "From header")
    with pytest.raises(ParseError, match="Malformed From header"):
        parse_name_addr(";tag=x", "From header")


@pytest.mark.parametrize(
    "line",
    [
        "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1;rport",
        "SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK-1",
        "SIP/2.0/TCP host;branch=z9hG4bK-1;received=1.2.3.4;branch=z9hG4bK-2",
        "SIP/2.0/UDP a;branch=z9hG4bK-1, SIP/2.0/UDP b;branch=z9hG4bK-2",
        "SIP/2.0/UDP a;branch=z9hG4bK-1;rport,SIP/2.0/UDP b;branch=z9hG4bK-2",
    ],
)
def test_via_memo_matches_full_parse(line: str) -> None:
    _fresh()
    full: list[h.Via] = []
    h._parse_via_line(line, full, h.g.VIA_RE.match)
    parse_vias([line.replace("z9hG4bK-1", "z9hG4bK-9")])  # fills the memo
    got = parse_vias([line])
    assert got == full
    assert [list(v.params.items()) for v in got] == [list(v.params.items()) for v in full]
    assert [v.raw for v in got] == [v.raw for v in full]


def test_via_memo_hit_gives_own_params_and_raw() -> None:
    _fresh()
    a, b = parse_vias(
        ["SIP/2.0/UDP h:5060;branch=z9hG4bK-a;rport", "SIP/2.0/UDP h:5060;branch=z9hG4bK-b;rport"]
    )
    assert (a.branch, b.branch) == ("z9hG4bK-a", "z9hG4bK-b")
    assert b.raw == "SIP/2.0/UDP h:5060;branch=z9hG4bK-b;rport" and list(b.params) == ["branch", "rport"]


@pytest.mark.parametrize(
    "text",
    [
        "sip:+33612345678@carrier.example.net;user=phone",
        "SIPS:alice%20x@example.com:5061;transport=tls?subject=hi",
        "sip:a;b=c@host",
    ],
)
def test_uri_host_part_memo_matches_full_parse(text: str) -> None:
    _fresh()
    parse_uri(text.replace("@", "1@", 1))  # fills the host-part memo
    assert parse_uri(text) == u._parse_uri(text)


def test_uri_host_part_memo_keeps_errors_and_other_schemes() -> None:
    _fresh()
    parse_uri("sip:user@host")
    with pytest.raises(ParseError):
        parse_uri("sip:bad%zz@host")
    assert parse_uri("sip:x:pw@host").password == "pw"
    hit = parse_uri("sip:a%41@host")
    assert isinstance(hit, u.SipUri) and hit.user == "aA" and hit == u._parse_uri("sip:a%41@host")


@pytest.mark.parametrize(
    "value",
    [
        "<sip:+33612345678@carrier.example.net;user=phone>",
        '"Service Clients" <sip:a@b>;x=1;y',
        '"\t" <sip:a@b>',
        "<sip:a@b>;tag=1;tag=2",
        '"a\\"b" <sip:a@b>',
        '<sip:a@b>;x="q"',
        " <sip:a@b> ",
        "<sip:a@b>",
        "<sip:a\u00a0b@c>",
        "<sip:a@b\x1f>",
        "<>",
        "<sip:a<b>",
    ],
)
def test_simple_name_addr_path_matches_general_pattern(value: str) -> None:
    _fresh()
    try:
        (general,) = h.parse_name_addrs([value], single=True, what="To header")
    except ParseError as exc:
        with pytest.raises(ParseError, match=str(exc)):
            h._parse_name_addr(value, "To header")
        return
    got = h._parse_name_addr(value, "To header")
    assert got == general and got.raw == general.raw
    assert list(got.params.items()) == list(general.params.items())


def test_cseq_fast_path_matches_pattern() -> None:
    assert h.parse_cseq("0042 INVITE") == h.parse_cseq("0042\tINVITE") == h.CSeq(42, "INVITE")
    assert h.parse_cseq("1 FOO") == h.CSeq(1, "FOO")
    for bad in (" INVITE", "1 INVITE x", "-1 INVITE", "1 INV ITE"):
        with pytest.raises(ParseError):
            h.parse_cseq(bad)


def test_written_out_inits_build_ordinary_frozen_dataclasses() -> None:
    import dataclasses
    import pickle

    via = h.Via("UDP", "h", 5060, {"branch": "z9hG4bK-1"}, "SIP/2.0", "raw")
    assert via == h.Via("UDP", "h", 5060, {"branch": "z9hG4bK-1"}, "SIP/2.0", "other")  # raw: not compared
    assert via != h.Via("UDP", "h", 5061, {"branch": "z9hG4bK-1"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        via.host = "x"  # type: ignore[misc]
    assert h.Via("UDP", "h").params == {} and h.Via("UDP", "h").params is not h.Via("UDP", "h").params
    uri = parse_uri("sip:alice@example.com:5070;transport=tcp")
    assert type(uri) is u.SipUri and hash(uri.scheme) and dataclasses.replace(uri, port=1).port == 1
    moved = u.SipUri("sip", "alice", None, "example.com", 1, uri.params, {})
    assert dataclasses.replace(uri, port=1) == moved
    name_addr = h.NameAddr(uri, "Alice", {"tag": "t"}, "raw")
    assert dataclasses.replace(name_addr, display_name=None).tag == "t"
    assert repr(h.CSeq(7, "BYE")) == "CSeq(seq=7, method='BYE')"
    if not compiled.status.startswith("compiled"):  # mypyc's frozen classes refuse the setattr pickle uses
        assert pickle.loads(pickle.dumps(h.parse_cseq("7 BYE"))) == h.CSeq(7, "BYE")


@pytest.mark.parametrize("value", ["70", "0", "255", "007", "256", "4294967295", "70 ", "+1", "x"])
def test_max_forwards_table_matches_general_check(value: str) -> None:
    from sipfilter.sip import typed_headers as m

    heads = m.Headers([("Max-Forwards", value.strip())])
    try:
        expected: int | str | None = m._int_header(heads, "max-forwards", "Max-Forwards")
    except ParseError as exc:
        expected = str(exc)
    try:
        got: int | str | None = m._max_forwards(heads)
    except ParseError as exc:
        got = str(exc)
    assert got == expected


def test_cseq_memo_shares_equal_values() -> None:
    h._CSEQ_MEMO.clear()
    assert h.parse_cseq("3 BYE") is h.parse_cseq("3 BYE") == h.CSeq(3, "BYE")
