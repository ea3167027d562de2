"""Inside an established call: REFER, MESSAGE, SUBSCRIBE… are answered, never relayed; identity headers the
dialer writes (re-INVITE, UPDATE, responses) never reach the carrier: the identities checked on the INVITE do,
at sipfilter's host."""

from __future__ import annotations

from pathlib import Path

import pytest
from b2bua_rig import Rig, answer, invite, make_rig, requests_named, responses_only

from sipfilter.sip import Request, parse

DIALER_HOST = "10.0.0.9"


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    # P-Preferred-Identity and Remote-Party-ID in the pass list: identity headers cross only as checked.
    return make_rig(tmp_path, headers={"pass": ["P-Asserted-Identity", "P-Preferred-Identity",
                                                "Remote-Party-ID", "Privacy", "X-*"]})  # fmt: skip


def establish(rig: Rig, extra: str = "") -> tuple[Request, Request, Request]:
    """Dialer INVITE → carrier 200 → dialer ACK; returns (B-leg INVITE, dialer INVITE, 200 to the dialer)."""
    raw = invite(extra=extra)
    rig.from_dialer(raw)
    a_inv = parse(raw)
    assert isinstance(a_inv, Request)
    (b_inv,) = requests_named(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_inv, 200))
    ok = rig.inside.take()[-1]
    rig.from_dialer(dialer_request(a_inv, ok, "ACK", 10))
    rig.outside.take()
    return b_inv, a_inv, ok


def dialer_request(a_inv: Request, ok: object, method: str, cseq: int, extra: str = "") -> bytes:
    to = ok.headers.get("To")  # type: ignore[attr-defined]
    return (
        f"{method} sip:sipfilter@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {DIALER_HOST}:5999;branch=z9hG4bK{method.lower()}{cseq}\r\nMax-Forwards: 70\r\n"
        f"From: {a_inv.headers.get('From')}\r\nTo: {to}\r\nCall-ID: {a_inv.call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: <sip:agent@{DIALER_HOST}:5999>\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def carrier_request(b_inv: Request, method: str, cseq: int, extra: str = "") -> bytes:
    return (
        f"{method} sip:sipfilter@127.0.0.1:5080 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKc{cseq}\r\nMax-Forwards: 70\r\n"
        f"From: {b_inv.headers.get('To')};tag=carriertag\r\nTo: {b_inv.headers.get('From')}\r\n"
        f"Call-ID: {b_inv.call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:gw@127.0.0.1:5071>\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("method", "extra", "status"),
    [
        ("REFER", "Refer-To: <sip:+33899123456@evil.example>\r\nReferred-By: <sip:agent@10.0.0.9>\r\n", 403),
        ("MESSAGE", "Content-Type: text/plain\r\n", 403),
        ("SUBSCRIBE", "Event: dialog\r\nExpires: 60\r\n", 403),
        ("NOTIFY", "Event: refer\r\nSubscription-State: active\r\n", 403),
        ("PUBLISH", "Event: presence\r\n", 403),
        ("FROBNICATE", "", 501),
    ],
)
def test_requests_outside_a_calls_needs_are_answered_never_relayed(
    rig: Rig, method: str, extra: str, status: int
) -> None:
    b_inv, a_inv, ok = establish(rig)
    rig.from_dialer(dialer_request(a_inv, ok, method, 11, extra))
    assert rig.outside.sent == []  # nothing reaches the carrier
    (refused,) = responses_only(rig.inside.take())
    assert refused.status == status and refused.cseq.method == method
    assert method in (refused.headers.get("Warning") or "")
    # From the carrier's side too (a REFER there would make the dialer call anyone).
    rig.from_carrier(carrier_request(b_inv, method, 5, extra))
    assert rig.inside.sent == []
    (refused,) = responses_only(rig.outside.take())
    assert refused.status == status
    # The call itself goes on: a BYE still ends it on both legs.
    rig.from_dialer(dialer_request(a_inv, ok, "BYE", 12))
    assert len(requests_named(rig.outside.take(), "BYE")) == 1


def test_the_dialers_identity_headers_never_cross_inside_the_call(rig: Rig) -> None:
    identities = (
        f"P-Asserted-Identity: <sip:+33612345678@{DIALER_HOST}>\r\n"
        f"P-Preferred-Identity: <sip:+33612345678@{DIALER_HOST}>\r\n"
        f"Remote-Party-ID: <sip:+33612345678@{DIALER_HOST}>;party=calling\r\n"
    )
    on_invite = identities.replace("P-Asserted-Identity: <sip:+33612345678@10.0.0.9>\r\n", "")
    b_inv, a_inv, ok = establish(rig, extra=on_invite)
    checked = b_inv.headers.get_all("P-Asserted-Identity")
    assert checked == ["<sip:+33162000001@sipfilter.test>"]  # the INVITE's, as checked
    assert b_inv.headers.get("P-Preferred-Identity") is None and b_inv.headers.get("Remote-Party-ID") is None
    for method, cseq in (("INVITE", 11), ("UPDATE", 12), ("INFO", 13), ("OPTIONS", 14)):
        rig.from_dialer(dialer_request(a_inv, ok, method, cseq, identities))
        (relayed,) = requests_named(rig.outside.take(), method)
        wire = bytes(relayed).decode()
        assert DIALER_HOST not in wire and "+33612345678" not in wire, wire
        assert relayed.headers.get_all("P-Asserted-Identity") == checked
        rig.from_carrier(answer(relayed, 200))
        rig.inside.take()
    # A response of the dialer's to the carrier's re-INVITE: same rule.
    rig.from_carrier(carrier_request(b_inv, "UPDATE", 7))
    (update,) = requests_named(rig.inside.take(), "UPDATE")
    rig.from_dialer(answer(update, 200, to_tag="", extra=identities.strip()))
    (answered,) = responses_only(rig.outside.take())
    wire = bytes(answered).decode()
    assert answered.status == 200 and DIALER_HOST not in wire and "+33612345678" not in wire, wire
    assert answered.headers.get_all("P-Asserted-Identity") == checked


def test_without_an_identity_header_none_is_added(rig: Rig) -> None:
    _, a_inv, ok = establish(rig)
    rig.from_dialer(dialer_request(a_inv, ok, "UPDATE", 11))
    (relayed,) = requests_named(rig.outside.take(), "UPDATE")
    assert relayed.headers.get("P-Asserted-Identity") is None


def test_the_carriers_identity_still_reaches_the_dialer(rig: Rig) -> None:
    """Towards the dialer nothing changes: the carrier's identity is relayed as the pass list says."""
    b_inv, _, _ = establish(rig)
    rig.from_carrier(carrier_request(b_inv, "UPDATE", 6, "P-Asserted-Identity: <tel:+33612000001>\r\n"))
    (update,) = requests_named(rig.inside.take(), "UPDATE")
    assert update.headers.get("P-Asserted-Identity") == "<tel:+33612000001>"
