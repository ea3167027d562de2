"""Message parsing, serialization and typed accessors on hand-written messages."""

from __future__ import annotations

import pytest

from sipfilter.sip import Headers, Limits, ParseError, Request, Response, SipUri, parse

INVITE = (
    b"INVITE sip:+33612345678@carrier.example.net;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Via: SIP/2.0/TCP dialer.example.com;branch=z9hG4bKabc;received=192.0.2.99\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Centre d\'appels" <sip:+33188776655@dialer.example.com>;tag=1928301774\r\n'
    b"To: <sip:+33612345678@carrier.example.net>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:dialer@192.0.2.10:5060;transport=udp>\r\n"
    b"P-Asserted-Identity: <sip:+33188776655@dialer.example.com;user=phone>, <tel:+33188776655>\r\n"
    b"Privacy: id;user\r\n"
    b"X-Campaign: 42 ; opaque ,, value\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\r\n"
)


def test_invite_typed_accessors() -> None:
    msg = parse(INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    ruri = msg.request_uri
    assert isinstance(ruri, SipUri) and ruri.user == "+33612345678" and ruri.is_phone
    assert [v.branch for v in msg.vias] == ["z9hG4bK776asdhds", "z9hG4bKabc"]
    assert msg.vias[0].port == 5060 and msg.vias[0].has_rport and msg.vias[0].rport is None
    assert msg.vias[1].transport == "TCP" and msg.vias[1].received == "192.0.2.99"
    assert msg.from_.display_name == "Centre d'appels" and msg.from_.tag == "1928301774"
    assert msg.to.tag is None
    assert msg.call_id == "a84b4c76e66710@pc33.example.com"
    assert (msg.cseq.seq, msg.cseq.method) == (314159, "INVITE")
    assert msg.max_forwards == 70
    assert [str(p.uri) for p in msg.p_asserted_identities] == [
        "sip:+33188776655@dialer.example.com;user=phone",
        "tel:+33188776655",
    ]
    assert msg.privacy == frozenset({"id", "user"})
    assert msg.content_type is not None and msg.content_type.mime == "application/sdp"
    assert msg.body == b"v=0\r"
    assert msg.headers.get("x-campaign") == "42 ; opaque ,, value"


def test_serialize_round_trip_keeps_unknown_headers_in_order() -> None:
    msg = parse(INVITE)
    again = parse(bytes(msg))
    assert again == msg
    assert again.headers.names() == msg.headers.names()


def test_serialize_recomputes_content_length() -> None:
    msg = parse(INVITE)
    msg.body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
    out = msg.serialize()
    assert f"Content-Length: {len(msg.body)}\r\n".encode() in out and len(msg.body) == 31
    assert parse(out).body == msg.body


def test_response_round_trip() -> None:
    resp = Response(180, None, [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("CSeq", "1 INVITE")])
    assert resp.reason == "Ringing"
    data = bytes(resp)
    assert data.startswith(b"SIP/2.0 180 Ringing\r\n")
    assert data.endswith(b"Content-Length: 0\r\n\r\n")
    assert parse(data, validate=False) == resp


def test_headers_cache_dropped_on_change() -> None:
    msg = parse(INVITE)
    assert msg.max_forwards == 70
    msg.headers.set("Max-Forwards", "69")
    assert msg.max_forwards == 69
    msg.headers.insert(0, "Via", "SIP/2.0/UDP b2bua.example.org;branch=z9hG4bKnew")
    assert msg.vias[0].host == "b2bua.example.org" and len(msg.vias) == 3


def test_header_injection_refused() -> None:
    h = Headers()
    with pytest.raises(ValueError):
        h.add("X-Evil", "a\r\nVia: forged")
    with pytest.raises(ValueError):
        h.add("Bad Name", "x")
    h.add("X-Known", "fine")  # a checked name is remembered; its values are still checked, every time
    for value in ("a\rb", "a\nb", "\r\n"):
        with pytest.raises(ValueError):
            h.add("X-Known", value)
    with pytest.raises(ValueError):  # a refused name is not remembered
        h.add("Bad Name", "x")
    assert h.items() == [("X-Known", "fine")]


def test_positions_follow_every_change() -> None:
    from sipfilter.sip.headers import ABSENT, SEVERAL

    h = parse(INVITE).headers
    assert h.position("call-id") >= 0 and h.position("x-none") == ABSENT and h.position("via") == SEVERAL
    assert h.get("Call-ID") == h.get_lines("i")[0] and h.count("Via") == len(h.get_lines("v")) == 2
    h.add("X-One", "1")
    assert h.position("x-one") == len(h) - 1 and h.get("x-one") == "1" and "X-One" in h
    h.add("X-One", "2")
    assert h.position("x-one") == SEVERAL and h.get("X-One") == "1" and h.get_lines("x-one") == ["1", "2"]
    h.set("X-One", "3")
    assert h.get_lines("x-one") == ["3"] and h.count("x-one") == 1
    h.insert(0, "X-One", "0")
    assert h.get("X-One") == "0" and h.count("x-one") == 2
    assert h.pop_first("X-One") == "0" and h.get("X-One") == "3"
    assert h.remove("X-One") == 1 and h.position("x-one") == ABSENT
    assert "X-One" not in h and h.get("X-One") is None
    assert h.pop_first("Via") is not None and h.position("via") >= 0 and h.count("via") == 1


def test_oversize_message_is_513() -> None:
    with pytest.raises(ParseError) as info:
        parse(INVITE, Limits(max_message_bytes=100))
    assert info.value.status == 513 and info.value.is_request is True


def test_leading_crlfs_are_ignored() -> None:
    assert parse(b"\r\n\r\n" + INVITE) == parse(INVITE)


def test_bare_lf_line_endings_are_rejected() -> None:
    with pytest.raises(ParseError) as info:
        parse(INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\nX-Injected: 1\r\n"))
    assert info.value.reason == "Bare CR or LF in header" and info.value.is_request


def test_errors_on_ack_are_never_answered() -> None:
    ack = INVITE.replace(b"INVITE sip:", b"ACK sip:").replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE")
    with pytest.raises(ParseError) as info:
        parse(ack)
    assert info.value.method == "ACK" and info.value.is_request and not info.value.should_answer


def test_validate_false_defers_semantic_checks() -> None:
    data = INVITE.replace(b"Call-ID: a84b4c76e66710@pc33.example.com\r\n", b"")
    msg = parse(data, validate=False)
    assert isinstance(msg, Request)
    with pytest.raises(ParseError, match="Missing Call-ID"):
        msg.validate()


def test_request_uri_follows_uri_changes() -> None:
    msg = parse(INVITE)
    assert isinstance(msg, Request)
    msg.uri = SipUri(user="+33699999999", host="carrier2.example.net")
    assert msg.request_uri.host == "carrier2.example.net"  # type: ignore[union-attr]
    assert bytes(msg).startswith(b"INVITE sip:+33699999999@carrier2.example.net SIP/2.0\r\n")
    msg.uri = "tel:+33699999999"
    assert str(msg.request_uri) == "tel:+33699999999"
