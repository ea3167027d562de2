"""Every RFC 4475 torture message: valid ones parse with their facts, invalid ones fail as the RFC says."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from sipfilter.sip import (
    AbsoluteUri,
    ParseError,
    Request,
    Response,
    SipUri,
    parse,
    parse_uri,
    uri_equal,
)
from sipfilter.sip.framing import StreamFramer

DATA = Path(__file__).resolve().parents[1] / "data" / "rfc4475"
INDEX = list(csv.DictReader((DATA / "index.tsv").open(encoding="utf-8"), delimiter="\t"))


def load(name: str) -> bytes:
    return (DATA / f"{name}.dat").read_bytes()


def req(name: str) -> Request:
    msg = parse(load(name))
    assert isinstance(msg, Request)
    return msg


def resp(name: str) -> Response:
    msg = parse(load(name))
    assert isinstance(msg, Response)
    return msg


def test_torture_files_are_intact() -> None:
    assert len(INDEX) == 49
    for row in INDEX:
        raw = (DATA / row["file"]).read_bytes()
        assert len(raw) == int(row["bytes"]), row["file"]
        assert hashlib.sha256(raw).hexdigest() == row["sha256"], row["file"]


# --- 3.1.1 valid messages: they parse, and the facts the RFC names hold -----------------------------
def check_wsinv() -> None:
    m = req("wsinv")
    assert m.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    ruri = m.request_uri
    assert isinstance(ruri, SipUri) and ruri.params == {"unknownparam": None}
    assert m.max_forwards == 68 and (m.cseq.seq, m.cseq.method) == (9, "INVITE")
    assert m.to.tag == "1918181833n" and m.from_.tag == "98asjd8"
    assert m.from_.display_name == 'J Rosenberg \\"'
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("Subject") == ""
    (contact,) = m.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert m.routes[0].uri.params["lr"] is None  # type: ignore[union-attr]
    assert len(m.body) == 150 == m.content_length


def check_intmeth() -> None:
    m = req("intmeth")
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~" == m.cseq.method
    ruri = m.request_uri
    assert isinstance(ruri, SipUri)
    assert ruri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert ruri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.vias[0].branch == "z9hG4bK-.!%66*_+`'~"
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def check_esc01() -> None:
    m = req("esc01")
    ruri = m.request_uri
    assert isinstance(ruri, SipUri) and ruri.user == "sips:user@example.com" and ruri.host == "example.net"
    assert uri_equal(m.to.uri, parse_uri("sip:user@example.com"))
    assert m.from_.uri.user == "I have spaces"  # type: ignore[union-attr]
    contact = m.contacts[0].uri
    assert isinstance(contact, SipUri)
    assert contact.user == "caller" and contact.params == {"lr": None, "name": "value%41"}


def check_escnull() -> None:
    m = req("escnull")
    assert m.to.uri.user == "null-\x00-null"  # type: ignore[union-attr]
    assert [c.uri.user for c in m.contacts] == ["\x00", "\x00\x00"]  # type: ignore[union-attr]
    assert str(m.contacts[1].uri) == "sip:%00%00@host5.example.com"


def check_esc02() -> None:
    m = req("esc02")
    assert m.method == "RE%47IST%45R" != "REGISTER"
    assert m.to.display_name == "%Z%45"
    assert m.vias[0].branch == "z9hG4bK209%fzsnel234"
    assert len(m.contacts) == 2  # C%6Fntact is another (unknown) header
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def check_lwsdisp() -> None:
    m = req("lwsdisp")
    assert m.from_.display_name == "caller" and m.from_.tag == "323"


def check_longreq() -> None:
    m = req("longreq")
    assert len(m.vias) == 34
    assert len(m.to.display_name or "") == 103
    assert m.from_.uri.user.startswith("amazinglylongcallername")  # type: ignore[union-attr]
    assert len(m.body) == 150


def check_dblreq() -> None:
    m = req("dblreq")
    assert m.method == "REGISTER" and m.body == b""
    assert m.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert b"INVITE" not in bytes(m)


def check_semiuri() -> None:
    m = req("semiuri")
    ruri = m.request_uri
    assert isinstance(ruri, SipUri)
    assert (ruri.user, ruri.host, dict(ruri.params)) == ("user;par=u@example.net", "example.com", {})
    assert len(m.headers.get_all("Accept")) == 6


def check_transports() -> None:
    m = req("transports")
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def check_mpart01() -> None:
    m = req("mpart01")
    assert len(m.body) == 553 == m.content_length
    assert m.content_type is not None and m.content_type.mime == "multipart/mixed"
    assert m.content_type.params == {"boundary": "7a9cbec02ceef655"}
    assert (m.identity or "").startswith("r5mwreLuyDRYBi")
    # Binary part: bare CR and LF survive the round trip.
    assert parse(bytes(m)).body == m.body


def check_unreason() -> None:
    m = resp("unreason")
    assert m.status == 200 and m.reason.startswith("= 2**3 * 5**2 ") and "сто" in m.reason
    assert parse(bytes(m)) == m


def check_noreason() -> None:
    m = resp("noreason")
    assert (m.status, m.reason) == (100, "")


VALID: dict[str, Callable[[], None]] = {
    "wsinv": check_wsinv,
    "intmeth": check_intmeth,
    "esc01": check_esc01,
    "escnull": check_escnull,
    "esc02": check_esc02,
    "lwsdisp": check_lwsdisp,
    "longreq": check_longreq,
    "dblreq": check_dblreq,
    "semiuri": check_semiuri,
    "transports": check_transports,
    "mpart01": check_mpart01,
    "unreason": check_unreason,
    "noreason": check_noreason,
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid(name: str) -> None:
    VALID[name]()
    msg = parse(load(name))
    assert parse(bytes(msg)) == msg


# --- 3.1.2 invalid messages: ParseError with the status the RFC expects, requests answered ------------
INVALID: dict[str, tuple[int, bool]] = {
    "badinv01": (400, True),
    "clerr": (400, True),
    "ncl": (400, True),
    "scalar02": (400, True),
    "scalarlg": (400, False),  # response: dropped
    "quotbal": (400, True),
    "ltgtruri": (400, True),
    "lwsruri": (400, True),
    "lwsstart": (400, True),
    "trws": (400, True),
    "escruri": (400, True),
    "regbadct": (400, True),
    "badaspec": (400, True),
    "baddn": (400, True),
    "badvers": (505, True),
    "mismatch01": (400, True),
    "mismatch02": (501, True),
    "bigcode": (400, False),  # response: dropped
    # valid-semantic, rejected by the B2BUA's validation
    "insuf": (400, True),
    "unkscm": (416, True),
    "novelsc": (416, True),
    "multi01": (400, True),
    "mcl01": (400, True),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_rejected(name: str) -> None:
    status, is_request = INVALID[name]
    with pytest.raises(ParseError) as info:
        parse(load(name))
    err = info.value
    assert (err.status, err.is_request) == (status, is_request)
    assert err.should_answer is is_request
    assert "\r" not in err.reason and "\n" not in err.reason and err.reason


def test_baddate_is_accepted_liberally() -> None:
    m = req("baddate")  # the Date value does not matter to a B2BUA: relayed as is
    assert m.headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"


def test_unknown_schemes_parse_as_opaque_uris() -> None:
    m = parse(load("unkscm"), validate=False)
    assert isinstance(m, Request)
    assert m.request_uri == AbsoluteUri("nobodyknowsthisscheme", "totallyopaquecontent")
    m = parse(load("novelsc"), validate=False)
    assert isinstance(m, Request) and isinstance(m.request_uri, AbsoluteUri)
    assert m.request_uri.scheme == "soap.beep"


def test_unksm2_non_sip_uris_in_headers() -> None:
    m = req("unksm2")
    assert m.to.uri == AbsoluteUri("isbn", "2983792873")
    assert isinstance(m.from_.uri, AbsoluteUri) and m.from_.uri.scheme == "http"
    assert m.contacts[0].uri == AbsoluteUri("name", "John_Smith")


def test_badbranch_is_not_an_rfc3261_branch() -> None:
    via = req("badbranch").vias[0]
    assert via.branch == "z9hG4bK" and not via.has_rfc3261_branch


def test_bext01_option_tags() -> None:
    m = req("bext01")
    assert m.require == {"nothingsupportsthis", "nothingsupportsthiseither"}
    assert m.proxy_require == {"noproxiessupportthis", "nordoanyproxiessupportthis"}


def test_invut_and_sdp01_media_types() -> None:
    m = req("invut")
    assert m.content_type is not None and m.content_type.mime == "application/unknownformat"
    assert len(m.body) == 40
    assert req("sdp01").headers.get_all("Accept") == ["text/nobodyKnowsThis"]


def test_regaut01_authorization_is_opaque() -> None:
    assert req("regaut01").headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


def test_bcast_broadcast_via_is_visible() -> None:
    assert resp("bcast").vias[1].host == "255.255.255.255"


def test_zeromf_max_forwards_zero() -> None:
    assert req("zeromf").max_forwards == 0


def test_cparam01_param_belongs_to_header_without_angle_brackets() -> None:
    (c,) = req("cparam01").contacts
    assert isinstance(c.uri, SipUri) and c.uri.user == "+19725552222"
    assert dict(c.uri.params) == {} and c.params == {"unknownparam": None}


def test_cparam02_param_belongs_to_uri_inside_angle_brackets() -> None:
    (c,) = req("cparam02").contacts
    assert isinstance(c.uri, SipUri) and c.uri.params == {"unknownparam": None} and c.params == {}


def test_regescrt_keeps_escaped_header_in_binding() -> None:
    (c,) = req("regescrt").contacts
    assert isinstance(c.uri, SipUri) and c.uri.headers == {"Route": "<sip:sip.example.com>"}
    assert str(c.uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_inv2543_accepted_for_backward_compatibility() -> None:
    m = req("inv2543")
    assert m.vias[0].branch is None and m.from_.tag is None
    assert m.max_forwards is None and m.content_length is None
    raw = load("inv2543")
    assert m.body == raw[raw.index(b"\r\n\r\n") + 4 :]  # no Content-Length on UDP: rest of datagram
    assert m.record_routes[0].uri.params["maddr"] == "ss1.example.com"  # type: ignore[union-attr]


def test_every_indexed_message_is_covered() -> None:
    covered = set(VALID) | set(INVALID)
    covered |= {"baddate", "unksm2", "badbranch", "bext01", "invut", "sdp01", "regaut01", "bcast"}
    covered |= {"zeromf", "cparam01", "cparam02", "regescrt", "inv2543"}
    assert covered == {row["file"].removesuffix(".dat") for row in INDEX}


# --- stream transport behaviour the RFC describes ------------------------------------------------------
def test_clerr_on_a_stream_is_an_incomplete_message() -> None:
    framer = StreamFramer()
    assert framer.feed(load("clerr")) == []
    assert not framer.failed and framer.buffered == len(load("clerr"))


@pytest.mark.parametrize("name", ["ncl", "mcl01"])
def test_bad_content_length_on_a_stream_closes_the_connection(name: str) -> None:
    framer = StreamFramer()
    (err,) = framer.feed(load(name))
    assert isinstance(err, ParseError) and err.fatal and framer.failed
