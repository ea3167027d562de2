"""Headers container (order, case, compact forms, lists) and the typed header values."""

from __future__ import annotations

import pytest

from sipfilter.sip import (
    CSeq,
    Headers,
    NameAddr,
    ParseError,
    Reason,
    Request,
    SipUri,
    Via,
    WarningValue,
    parse,
)
from sipfilter.sip.headers import split_list

COMPACT = {
    "v": "Via", "f": "From", "t": "To", "i": "Call-ID", "m": "Contact", "l": "Content-Length",
    "c": "Content-Type", "k": "Supported", "s": "Subject", "e": "Content-Encoding", "o": "Event",
    "r": "Refer-To", "u": "Allow-Events", "x": "Session-Expires", "y": "Identity",
}  # fmt: skip


@pytest.mark.parametrize(("short", "long"), sorted(COMPACT.items()))
def test_compact_forms(short: str, long: str) -> None:
    h = Headers([(short, "one"), (long.upper(), "two")])
    assert h.get(long) == "one" and h.get(short.upper()) == "one"
    assert h.get_lines(long.lower()) == ["one", "two"]
    assert long in h and short in h


def test_order_and_raw_values_preserved() -> None:
    items = [("X-B", " odd  ;; value "), ("Via", "SIP/2.0/UDP a"), ("x-a", ""), ("X-B", "2")]
    h = Headers(items)
    assert h.items() == items and list(h) == items and len(h) == 4
    assert h.get("x-b") == " odd  ;; value " and h.get_all("X-B") == [" odd  ;; value ", "2"]
    assert h.get("Missing") is None and h.get_all("Missing") == []


def test_get_all_splits_list_headers_only() -> None:
    h = Headers(
        [
            ("Contact", '"Doe, John" <sip:j@a.example;x="1,2">;q=0.5, <sip:k@b.example>'),
            ("Contact", "<sip:l@c.example>"),
            ("Subject", "Hello, world"),
            ("Allow", "INVITE,ACK , BYE,,"),
        ]
    )
    assert h.get_all("m") == [
        '"Doe, John" <sip:j@a.example;x="1,2">;q=0.5',
        "<sip:k@b.example>",
        "<sip:l@c.example>",
    ]
    assert h.get_all("Subject") == ["Hello, world"]
    assert h.get_all("Allow") == ["INVITE", "ACK", "BYE"]


def test_split_list_respects_escaped_quotes() -> None:
    assert split_list(r'"a\", b" <sip:x>, <sip:y>') == [r'"a\", b" <sip:x>', "<sip:y>"]


def test_set_insert_remove_pop() -> None:
    h = Headers([("Via", "v1"), ("To", "t"), ("v", "v2"), ("Max-Forwards", "70")])
    h.insert(0, "Via", "v0")
    assert h.get_lines("via") == ["v0", "v1", "v2"]
    assert h.pop_first("Via") == "v0" and h.get("via") == "v1"
    h.set("max-forwards", "69")
    h.set("x-new", "1")
    assert h.items()[-2:] == [("Max-Forwards", "69"), ("X-New", "1")]
    h.set("VIA", "only")
    assert h.get_lines("v") == ["only"] and h.names()[0] == "Via"
    assert h.remove("via") == 1 and "Via" not in h
    assert h.remove("via") == 0
    assert h.pop_first("Via") is None


def test_added_lower_case_names_get_conventional_spelling() -> None:
    h = Headers()
    h.add("call-id", "x")
    h.add("cseq", "1 INVITE")
    h.add("p-asserted-identity", "<sip:a@b>")
    h.add("x-custom-thing", "v")
    assert h.names() == ["Call-ID", "CSeq", "P-Asserted-Identity", "X-Custom-Thing"]


def _req(*lines: str) -> Request:
    head = "\r\n".join(("OPTIONS sip:a@example.com SIP/2.0", *lines))
    msg = parse(head.encode() + b"\r\n\r\n", validate=False)
    assert isinstance(msg, Request)
    return msg


def test_via_values() -> None:
    m = _req(
        "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKx;rport=5062;received=198.51.100.9, "
        "SIP/2.0/tls [2001:db8::9];branch=z9hG4bKy;maddr=239.1.1.1;ttl=16",
        "v: SIP/2.0/WSS edge.example.com;branch=z9hG4bKz;rport",
    )
    a, b, c = m.vias
    assert (a.transport, a.host, a.port, a.rport, a.received) == (
        "UDP",
        "192.0.2.1",
        5062,
        5062,
        "198.51.100.9",
    )
    assert (b.transport, b.host, b.params["maddr"], b.params["ttl"]) == (
        "TLS",
        "[2001:db8::9]",
        "239.1.1.1",
        "16",
    )
    assert c.has_rport and c.rport is None and c.transport == "WSS"
    assert a.raw.startswith("SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKx")
    assert str(Via("UDP", "b2bua.example.org", 5060, {"branch": "z9hG4bKq", "rport": None})) == (
        "SIP/2.0/UDP b2bua.example.org:5060;branch=z9hG4bKq;rport"
    )


@pytest.mark.parametrize(
    "via",
    [
        "SIP/2.0/UDP",
        "SIP/2.0 192.0.2.1",
        "SIP/2.0/UDP 192.0.2.1;;",
        "SIP/2.0/UDP 192.0.2.1,",
        "SIP/2.0/UDP h:70000",
    ],
)
def test_bad_via_is_a_parse_error(via: str) -> None:
    with pytest.raises(ParseError):
        _ = _req(f"Via: {via}").vias


def test_name_addr_forms() -> None:
    m = _req(
        'From: "Agent \\"7\\"" <sip:+33188776655@dialer.example.com;user=phone>;tag=abc;x-camp="a;b"',
        "To: sip:+33612345678@carrier.example.net;user=phone",
        "P-Asserted-Identity: Agent <sip:+33188776655@dialer.example.com>, <tel:+33188776655>",
        "P-Preferred-Identity: <sip:ppi@example.com>",
        "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
        "Record-Route: <sip:rr.example.com;lr>",
        "Contact: *",
    )
    f = m.from_
    assert f.display_name == 'Agent "7"' and f.tag == "abc" and f.params["x-camp"] == '"a;b"'
    assert isinstance(f.uri, SipUri) and f.uri.is_phone
    # Without <>, the ;user=phone belongs to the header, not the URI (RFC 3261 §20.10).
    assert m.to.params == {"user": "phone"} and dict(m.to.uri.params) == {}  # type: ignore[union-attr]
    assert [p.display_name for p in m.p_asserted_identities] == ["Agent", None]
    assert str(m.p_asserted_identities[1].uri) == "tel:+33188776655"
    assert [str(p.uri) for p in m.p_preferred_identities] == ["sip:ppi@example.com"]
    assert [str(r.uri) for r in m.routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert m.record_routes[0].uri.lr  # type: ignore[union-attr]
    assert m.contacts == [] and m.contact_star


def test_name_addr_str_and_with_params() -> None:
    na = NameAddr(uri=SipUri(user="alice", host="example.com"), display_name="Alice")
    tagged = na.with_params(tag="t1")
    assert str(tagged) == '"Alice" <sip:alice@example.com>;tag=t1' and na.tag is None


@pytest.mark.parametrize(
    "value",
    [
        '"unterminated <sip:a@b>',
        "<sip:a@b",
        "sip:a@b, sip:c@d",
        "<sip:a@b> junk",
        "<sip:a @b>",
        "Bell, A <sip:a@b>",
    ],
)
def test_bad_from_is_a_parse_error(value: str) -> None:
    with pytest.raises(ParseError):
        _ = _req(f"From: {value}").from_


def test_single_value_headers() -> None:
    m = _req("Call-ID: a@b", "CSeq: 0007 OPTIONS", "Max-Forwards: 007", "Expires: 3600")
    assert m.call_id == "a@b" and m.cseq == CSeq(7, "OPTIONS") and str(m.cseq) == "7 OPTIONS"
    assert m.max_forwards == 7 and m.expires == 3600
    for bad in ("CSeq: 1", "CSeq: x INVITE", "CSeq: 99999999999 INVITE", "CSeq: 1 INVITE extra"):
        with pytest.raises(ParseError):
            _ = _req(bad).cseq
    for bad in ("Max-Forwards: -1", "Max-Forwards: 7a", "Max-Forwards: 1\r\nMax-Forwards: 2"):
        with pytest.raises(ParseError):
            _ = _req(bad).max_forwards
    for _ in range(2):  # the second read of a Call-ID takes the remembered-valid path
        assert _req("Call-ID: a@b").call_id == "a@b"
        with pytest.raises(ParseError):  # a refused one is never remembered
            _ = _req("Call-ID: has space").call_id
        with pytest.raises(ParseError):
            _ = _req("Call-ID: a@b@c").call_id
    with pytest.raises(ParseError, match="Missing Call-ID"):
        _ = _req().call_id


def test_reason_warning_privacy_retry_after_identity() -> None:
    m = _req(
        'Reason: SIP ;cause=603;text="Declined: Bloctel (L223-1)", Q.850;cause=21',
        'Warning: 399 sipfilter.example "Bloctel: callee opted out"',
        "Privacy: id; header",
        "Retry-After: 120 (maintenance);duration=600",
        "Identity: eyJhbGciOiJFUzI1NiJ9.e30.sig;info=<https://cert.example/x.pem>;alg=ES256;ppt=shaken",
        "Supported: timer, 100rel",
    )
    assert m.reasons == [
        Reason(
            "SIP", 603, "Declined: Bloctel (L223-1)", {"cause": "603", "text": '"Declined: Bloctel (L223-1)"'}
        ),
        Reason("Q.850", 21, None, {"cause": "21"}),
    ]
    assert m.warnings == [WarningValue(399, "sipfilter.example", "Bloctel: callee opted out")]
    assert m.privacy == {"id", "header"}
    ra = m.retry_after
    assert ra is not None and (ra.seconds, ra.comment, ra.duration) == (120, "maintenance", 600)
    assert (m.identity or "").startswith("eyJhbGciOiJFUzI1NiJ9")
    assert m.supported == {"timer", "100rel"}


def test_reason_and_warning_serialize_safely() -> None:
    r = Reason("SIP", 403, 'Bloctel "opposition"\r\nVia: x')
    text = str(r)
    assert "\r" not in text and "\n" not in text
    assert text == 'SIP;cause=403;text="Bloctel \\"opposition\\"  Via: x"'
    assert _req(f"Reason: {text}").reasons[0].text == 'Bloctel "opposition"  Via: x'
    w = WarningValue(399, "sipfilter", "hours: outside 10h-13h")
    assert _req(f"Warning: {w}").warnings == [w]


def test_typed_errors_are_not_cached() -> None:
    m = _req("Max-Forwards: x")
    for _ in range(2):
        with pytest.raises(ParseError):
            _ = m.max_forwards
    m.headers.set("Max-Forwards", "5")
    assert m.max_forwards == 5


def test_parsed_values_are_read_only_so_memoised_ones_can_be_shared() -> None:
    a = _req("Contact: <sip:dialer@192.0.2.10;transport=udp>;expires=60").contacts[0]
    b = _req("Contact: <sip:dialer@192.0.2.10;transport=udp>;expires=60").contacts[0]
    assert a == b and a.expires == 60
    with pytest.raises(TypeError):
        a.params["expires"] = "0"  # type: ignore[index]
    with pytest.raises(TypeError):
        a.uri.params["transport"] = "tcp"  # type: ignore[index]
    assert b.with_params(expires="0").expires == 0 and b.expires == 60
