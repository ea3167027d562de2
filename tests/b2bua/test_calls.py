"""Call logic of the B2BUA fed with datagrams through fake endpoints: no sockets, a manual clock."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from b2bua_rig import (
    CARRIER1,
    CARRIER2,
    DIALER,
    Rig,
    StubPolicy,
    answer,
    invite,
    make_rig,
    rig_for,
    write_config,
)
from b2bua_rig import requests_named as _requests
from b2bua_rig import responses_only as _responses

from sipfilter.b2bua.observe import Observer
from sipfilter.sip import Request, parse


@pytest.fixture(name="rig")
def _rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


def _establish(rig: Rig, **kw: Any) -> tuple[Request, Request]:
    """Dialer INVITE → carrier 180 → 200; returns (the B-leg INVITE, the dialer's INVITE)."""
    raw = invite(body=b"v=0\r\n", **kw)
    rig.from_dialer(raw)
    from sipfilter.sip import parse

    a_inv = parse(raw)
    out = rig.outside.take()
    (b_inv,) = _requests(out, "INVITE")
    rig.from_carrier(answer(b_inv, 180))
    rig.from_carrier(answer(b_inv, 200, body=b"v=0\r\ns=carrier\r\n"))
    return b_inv, a_inv


def test_rejected_call_gets_100_then_the_verdict_with_reason_and_warning(rig: Rig) -> None:
    rig.policy.reject.add("+33612000009")
    rig.from_dialer(invite("+33612000009"))
    sent = rig.inside.take()
    assert [r.status for r in sent] == [100, 603]
    final = sent[1]
    assert final.headers.get("Reason") == 'SIP;cause=603;text="callee.dnc.bloctel"'
    assert "sipfilter.test" in (final.headers.get("Warning") or "")
    assert final.to.tag  # our To tag on the final answer
    assert rig.outside.sent == []  # never relayed
    # The dialer's ACK ends the transaction; nothing is left behind.
    ack = invite("+33612000009").replace(b"INVITE sip", b"ACK sip")
    assert rig.b2b.active_calls == 1
    rig.b2b._end(next(iter(rig.b2b.calls_a.values())), "test")
    assert rig.b2b.active_calls == 0
    del ack


def test_relayed_invite_hides_topology_and_decrements_max_forwards(rig: Rig) -> None:
    rig.from_dialer(invite(call_id="dialer-call-1", body=b"v=0\r\n"))
    assert [r.status for r in rig.inside.take()] == [100]
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    wire = bytes(b_inv).decode()
    assert "10.0.0.9" not in wire and "10.0.0.2" not in wire and "10.0.0.5" not in wire
    assert "dialer-call-1" not in wire and "dialertag" not in wire
    assert b_inv.uri == "sip:+33612000001@127.0.0.1:5071"
    assert b_inv.max_forwards == 69
    assert len(b_inv.vias) == 1 and b_inv.vias[0].port == 5080
    assert b_inv.headers.get("X-Campaign") == "spring"
    assert b_inv.headers.get("P-Asserted-Identity") == "<sip:+33162000001@sipfilter.test>"
    assert b_inv.headers.get("Secret-Header") is None
    assert b_inv.headers.get("Record-Route") is None and b_inv.headers.get("Route") is None
    assert b_inv.body == b"v=0\r\n"  # SDP untouched
    assert b_inv.from_.display_name == "Agent" and b_inv.from_.tag


def test_full_call_answer_ack_bye_from_dialer(rig: Rig) -> None:
    b_inv, a_inv = _establish(rig)
    sent = rig.inside.take()
    assert [r.status for r in sent] == [100, 180, 200]
    ok = sent[2]
    assert ok.body == b"v=0\r\ns=carrier\r\n"
    assert ok.call_id == a_inv.call_id and ok.vias[0].branch == a_inv.vias[0].branch
    assert "127.0.0.1:5071" not in bytes(ok).decode()  # carrier Contact hidden
    assert ok.contacts[0].uri.port == 5060
    our_tag = ok.to.tag
    assert sent[1].to.tag == our_tag
    # ACK end to end: the dialer's ACK becomes the B-leg ACK to the carrier's Contact.
    ack = (
        f"ACK sip:sipfilter@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5999;branch=z9hG4bKack1\r\n"
        f"Max-Forwards: 70\r\nFrom: {a_inv.headers.get('From')}\r\nTo: {a_inv.headers.get('To')};tag={our_tag}\r\n"  # noqa: E501
        f"Call-ID: {a_inv.call_id}\r\nCSeq: 10 ACK\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    rig.from_dialer(ack)
    (b_ack,) = _requests(rig.outside.take(), "ACK")
    assert b_ack.uri == "sip:gw@127.0.0.1:5071"
    assert b_ack.cseq.seq == b_inv.cseq.seq and b_ack.call_id == b_inv.call_id
    assert b_ack.to.tag == "carriertag"
    # No retransmission of the 200 after the ACK.
    rig.clock.advance(10)
    assert _responses(rig.inside.take()) == []
    # BYE from the dialer is relayed; the carrier's 200 is relayed back and the call is gone.
    bye = ack.replace(b"ACK sip", b"BYE sip").replace(b"10 ACK", b"11 BYE").replace(b"z9hG4bKack1", b"z9hG4bKbye1")  # noqa: E501
    rig.from_dialer(bye)
    (b_bye,) = _requests(rig.outside.take(), "BYE")
    assert b_bye.call_id == b_inv.call_id and b_bye.cseq.seq > b_inv.cseq.seq
    rig.from_carrier(answer(b_bye, 200))
    (bye_ok,) = _responses(rig.inside.take())
    assert bye_ok.status == 200 and bye_ok.cseq.method == "BYE" and bye_ok.call_id == a_inv.call_id
    assert rig.b2b.active_calls == 0 and rig.b2b.calls_b == {}
    rig.clock.advance(100)  # absorption windows over: no transaction state is left behind either
    assert rig.b2b.server_tx == {} and rig.b2b.client_tx == {}
    assert rig.b2b.admission.active_dialogs() == 0


def test_bye_from_carrier_reaches_the_dialer_contact(rig: Rig) -> None:
    b_inv, a_inv = _establish(rig)
    ok = rig.inside.take()[-1]
    rig.b2b._on_ack  # noqa: B018 (the ACK is not needed for a BYE from the carrier)
    bye = (
        "BYE sip:sipfilter@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKcbye\r\n"
        f"Max-Forwards: 70\r\nFrom: {b_inv.headers.get('To')};tag=carriertag\r\n"
        f"To: {b_inv.headers.get('From')}\r\nCall-ID: {b_inv.call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"  # noqa: E501
    ).encode()
    rig.from_carrier(bye)
    (a_bye,) = _requests(rig.inside.take(), "BYE")
    assert a_bye.uri == "sip:agent@10.0.0.9:5999"
    assert a_bye.call_id == a_inv.call_id
    assert a_bye.from_.tag == ok.to.tag and a_bye.to.tag == "dialertag"
    assert [r.value for r in a_bye.routes] if hasattr(a_bye.routes, "value") else True
    rig.from_dialer(answer(a_bye, 200, to_tag=""), DIALER)
    (ok_to_carrier,) = _responses(rig.outside.take())
    assert ok_to_carrier.status == 200 and ok_to_carrier.call_id == b_inv.call_id
    assert rig.b2b.active_calls == 0


def test_cancel_from_dialer_cancels_the_b_leg(rig: Rig) -> None:
    raw = invite()
    rig.from_dialer(raw)
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_inv, 180))
    rig.inside.take()
    cancel = raw.split(b"\r\n\r\n")[0].replace(b"INVITE sip", b"CANCEL sip").replace(b"10 INVITE", b"10 CANCEL")  # noqa: E501
    rig.from_dialer(cancel + b"\r\n\r\n")
    statuses = sorted((r.status, r.cseq.method) for r in rig.inside.take())
    assert statuses == [(200, "CANCEL"), (487, "INVITE")]
    (b_cancel,) = _requests(rig.outside.take(), "CANCEL")
    assert b_cancel.vias[0].branch == b_inv.vias[0].branch
    rig.from_carrier(answer(b_cancel, 200, to_tag=""))
    rig.from_carrier(answer(b_inv, 487))
    (b_ack,) = _requests(rig.outside.take(), "ACK")
    assert b_ack.vias[0].branch == b_inv.vias[0].branch  # hop-by-hop ACK for the 487
    rig.clock.advance(40)
    assert rig.b2b.active_calls == 0 and rig.b2b.client_tx == {}


def test_failover_on_503_then_on_timeout(rig: Rig) -> None:
    rig.from_dialer(invite())
    (first,) = _requests(rig.outside.take(), "INVITE")
    assert rig.outside.sent == []
    rig.from_carrier(answer(first, 503))
    out = rig.outside.take()
    assert _requests(out, "ACK")
    (second,) = _requests(out, "INVITE")
    assert second.uri.endswith(f":{CARRIER2[1]}") and second.call_id == first.call_id
    assert second.cseq.seq == first.cseq.seq + 1
    # No answer at all from the second: retransmissions (Timer A), then Timer B → 408 to the dialer.
    rig.clock.advance(40)
    retrans = _requests(rig.outside.take(), "INVITE")
    assert len(retrans) >= 5
    finals = [r.status for r in _responses(rig.inside.take()) if r.status >= 200]
    assert finals[0] in (408, 503)
    rig.clock.advance(40)
    assert rig.b2b.active_calls == 0
    assert not rig.b2b.rt.pools["dialer"].states[0].up  # the 503 target is out of rotation


def test_486_is_relayed_and_acked(rig: Rig) -> None:
    rig.from_dialer(invite())
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_inv, 486))
    assert _requests(rig.outside.take(), "ACK")
    finals = [r for r in rig.inside.take() if r.status >= 200]
    assert [r.status for r in finals] == [486]
    # Without the dialer's ACK the 486 is retransmitted (Timer G), then the call is dropped (Timer H).
    rig.clock.advance(2)
    assert [r.status for r in rig.inside.take()] == [486, 486]
    rig.clock.advance(40)
    assert rig.b2b.active_calls == 0


def test_unknown_source_is_refused_and_never_relayed(rig: Rig) -> None:
    rig.from_dialer(invite(), ("127.0.0.77", 5060))
    assert rig.outside.sent == []
    assert [r.status for r in rig.inside.take()] == [403]
    assert rig.b2b.active_calls == 0


def test_new_invite_from_the_carrier_side_opens_nothing(rig: Rig) -> None:
    rig.from_carrier(invite())
    assert rig.inside.sent == []
    assert [r.status for r in rig.outside.take()] == [403]


def test_malformed_request_gets_400_and_the_call_path_keeps_working(rig: Rig) -> None:
    bad = invite().replace(b"CSeq: 10 INVITE", b"CSeq: 10 BYE")
    rig.from_dialer(bad)
    assert [r.status for r in rig.inside.take()] == [400]
    rig.from_dialer(b"\x00garbage\r\n\r\n")
    rig.from_dialer(invite())
    assert [r.status for r in rig.inside.take()] == [100]


def test_retransmitted_invite_is_absorbed(rig: Rig) -> None:
    raw = invite(branch="z9hG4bKsame")
    rig.from_dialer(raw)
    rig.from_dialer(raw)
    assert len(_requests(rig.outside.take(), "INVITE")) == 1
    assert [r.status for r in rig.inside.take()] == [100, 100]


def test_ring_timeout_cancels_the_carrier_and_answers_408(rig: Rig) -> None:
    rig.from_dialer(invite())
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_inv, 180))
    rig.clock.advance(61)
    assert 408 in [r.status for r in rig.inside.take()]
    assert _requests(rig.outside.take(), "CANCEL")
    rig.clock.advance(60)
    assert rig.b2b.active_calls == 0


def test_reinvite_from_carrier_and_ack_relay(rig: Rig) -> None:
    b_inv, a_inv = _establish(rig)
    ok = rig.inside.take()[-1]
    rig.from_dialer(
        f"ACK sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5999;branch=z9hG4bKa2\r\nMax-Forwards: 70\r\n"  # noqa: E501
        f"From: {a_inv.headers.get('From')}\r\nTo: {ok.headers.get('To')}\r\nCall-ID: {a_inv.call_id}\r\n"
        "CSeq: 10 ACK\r\nContent-Length: 0\r\n\r\n".encode()
    )
    rig.outside.take()
    reinv = (
        "INVITE sip:sipfilter@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKre1\r\n"
        f"Max-Forwards: 70\r\nFrom: {b_inv.headers.get('To')};tag=carriertag\r\nTo: {b_inv.headers.get('From')}\r\n"  # noqa: E501
        f"Call-ID: {b_inv.call_id}\r\nCSeq: 2 INVITE\r\nContact: <sip:gw@127.0.0.1:5071>\r\n"
        "Content-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=1\r\n"
    ).encode()
    rig.from_carrier(reinv)
    (a_reinv,) = _requests(rig.inside.take(), "INVITE")
    assert [r.status for r in _responses(rig.outside.take())] == [100]  # Trying at once (§17.2.1)
    assert a_reinv.body == b"v=1\r\n" and a_reinv.call_id == a_inv.call_id
    # Glare: a re-INVITE from the dialer while one is pending towards it is answered 491.
    rig.from_dialer(answer(a_reinv, 200, to_tag="", body=b"v=2\r\n"))
    (ok2,) = _responses(rig.outside.take())
    assert ok2.status == 200 and ok2.body == b"v=2\r\n" and ok2.cseq.seq == 2
    ack = reinv.split(b"\r\n\r\n")[0].replace(b"INVITE sip", b"ACK sip").replace(b"2 INVITE", b"2 ACK")
    ack = ack.replace(b"Content-Length: 5", b"Content-Length: 0").replace(b"z9hG4bKre1", b"z9hG4bKre1ack")
    rig.from_carrier(ack + b"\r\n\r\n")
    (a_ack,) = _requests(rig.inside.take(), "ACK")
    assert a_ack.cseq.seq == a_reinv.cseq.seq


def test_options_probe_marks_target_down_and_up(rig: Rig) -> None:
    pool = rig.b2b.rt.pools["dialer"]
    rig.b2b.probe_targets()
    probes = _requests(rig.outside.take(), "OPTIONS")
    assert len(probes) == 2
    rig.from_carrier(answer(probes[0], 200, to_tag="x"), CARRIER1)
    rig.clock.advance(10)  # the second never answers
    assert [s.up for s in pool.states] == [True, False]
    rig.b2b.probe_targets()
    for p in _requests(rig.outside.take(), "OPTIONS"):
        if p.uri.endswith(str(CARRIER2[1])):
            rig.from_carrier(answer(p, 200, to_tag="x"), CARRIER2)
    assert [s.up for s in pool.states] == [True, True]


def test_reliable_183_is_relayed_and_prack_rack_is_translated(rig: Rig) -> None:
    raw = invite(extra="Supported: 100rel\r\n")
    rig.from_dialer(raw)
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_inv, 183, body=b"v=0\r\n", extra="Require: 100rel\r\nRSeq: 7"))
    prov = [r for r in rig.inside.take() if r.status == 183]
    assert prov and prov[0].headers.get("RSeq") == "7" and prov[0].body == b"v=0\r\n"
    assert "100rel" in (prov[0].headers.get("Require") or "")
    a_inv = parse(raw)
    prack = (
        "PRACK sip:sipfilter@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5999;branch=z9hG4bKpr1\r\n"
        f"Max-Forwards: 70\r\nFrom: {a_inv.headers.get('From')}\r\nTo: {prov[0].headers.get('To')}\r\n"
        f"Call-ID: {a_inv.call_id}\r\nCSeq: 11 PRACK\r\nRAck: 7 10 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    rig.from_dialer(prack)
    (b_prack,) = _requests(rig.outside.take(), "PRACK")
    assert b_prack.headers.get("RAck") == f"7 {b_inv.cseq.seq} INVITE"
    assert b_prack.to.tag == "carriertag" and b_prack.call_id == b_inv.call_id
    rig.from_carrier(answer(b_prack, 200, to_tag=""))
    (ok,) = _responses(rig.inside.take())
    assert ok.status == 200 and ok.cseq.method == "PRACK" and ok.cseq.seq == 11


def test_cancel_before_any_provisional_waits_for_one(rig: Rig) -> None:
    raw = invite()
    rig.from_dialer(raw)
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    cancel = raw.split(b"\r\n\r\n")[0].replace(b"INVITE sip", b"CANCEL sip").replace(b"10 INVITE", b"10 CANCEL")  # noqa: E501
    rig.from_dialer(cancel + b"\r\n\r\n")
    assert _requests(rig.outside.take(), "CANCEL") == []  # RFC 3261 §9.1: not before a provisional
    rig.from_carrier(answer(b_inv, 180))
    assert _requests(rig.outside.take(), "CANCEL")
    # A 200 racing the CANCEL is acknowledged and hung up on, never relayed.
    rig.inside.take()
    rig.from_carrier(answer(b_inv, 200))
    out = rig.outside.take()
    assert _requests(out, "ACK") and _requests(out, "BYE")
    assert [r.status for r in rig.inside.take() if r.status == 200] == []


def test_draining_refuses_new_invites_with_retry_after(rig: Rig) -> None:
    rig.b2b.start_draining(30)
    rig.from_dialer(invite())
    (refused,) = rig.inside.take()
    assert refused.status == 503 and refused.headers.get("Retry-After") == "30"
    assert rig.outside.sent == [] and rig.b2b.active_calls == 0


def _carrier_bye(b_inv: Request, cseq: int = 1) -> bytes:
    """A BYE from the carrier in the (early) dialog its To tag "carriertag" made."""
    return (
        "BYE sip:sipfilter@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKebye\r\n"
        f"Max-Forwards: 70\r\nFrom: {b_inv.headers.get('To')};tag=carriertag\r\n"
        f"To: {b_inv.headers.get('From')}\r\nCall-ID: {b_inv.call_id}\r\nCSeq: {cseq} BYE\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _nothing_left(rig: Rig) -> None:
    b2b = rig.b2b
    assert b2b.calls_a == {} and b2b.calls_b == {}
    assert b2b.client_tx == {} and b2b.server_tx == {}
    assert b2b.admission.active_dialogs() == 0


def test_early_bye_from_carrier_then_only_a_provisional_leaves_no_transaction(rig: Rig) -> None:
    """Fuzz finding tx-leak-early-bye-then-183: the call ends before any final answer, then the carrier
    sends a 183 and nothing more. The B-leg INVITE is cancelled and its transaction dropped in time."""
    rig.from_dialer(invite())
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.inside.take()
    rig.from_carrier(_carrier_bye(b_inv))
    sent = rig.inside.take()
    (a_bye,) = _requests(sent, "BYE")
    # The dialer's INVITE gets its final answer (§15.1.2), not just the BYE.
    assert [(r.status, r.cseq.method) for r in _responses(sent)] == [(487, "INVITE")]
    out = rig.outside.take()
    assert _requests(out, "CANCEL") == []  # no provisional yet: no CANCEL (§9.1)
    # The carrier's BYE is answered at once (a BYE cannot fail), not when the dialer answers ours.
    (bye_ok,) = _responses(out)
    assert bye_ok.status == 200 and bye_ok.cseq.method == "BYE"
    rig.from_dialer(answer(a_bye, 200, to_tag=""))
    assert _responses(rig.outside.take()) == []
    assert rig.b2b.active_calls == 0
    rig.from_carrier(answer(b_inv, 183))
    assert _responses(rig.inside.take()) == []  # the call is over: never relayed
    (b_cancel,) = _requests(rig.outside.take(), "CANCEL")
    assert b_cancel.vias[0].branch == b_inv.vias[0].branch
    rig.from_carrier(answer(b_cancel, 200, to_tag=""))
    rig.from_carrier(answer(b_inv, 183))  # still only provisionals: no second CANCEL
    assert _requests(rig.outside.take(), "CANCEL") == []
    assert rig.b2b.client_tx  # the INVITE transaction waits 64*T1 for the 487 …
    rig.clock.advance(33)
    _nothing_left(rig)  # … then is given up
    rig.from_carrier(answer(b_inv, 487))  # a late final answer to a forgotten transaction is dropped
    _nothing_left(rig)


def test_early_bye_from_carrier_after_ringing_cancels_at_once(rig: Rig) -> None:
    rig.from_dialer(invite())
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_inv, 180))
    rig.inside.take()
    rig.from_carrier(_carrier_bye(b_inv))
    assert [r.status for r in _responses(rig.inside.take())] == [487]
    (b_cancel,) = _requests(rig.outside.take(), "CANCEL")
    rig.from_carrier(answer(b_cancel, 200, to_tag=""))
    rig.from_carrier(answer(b_inv, 487))
    assert _requests(rig.outside.take(), "ACK")
    assert _responses(rig.inside.take()) == []  # the carrier's 487 is not relayed twice
    rig.clock.advance(120)
    _nothing_left(rig)


def test_cancelled_invite_without_487_is_dropped_64_t1_after_the_cancel(rig: Rig) -> None:
    raw = invite()
    rig.from_dialer(raw)
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_inv, 180))
    cancel = raw.split(b"\r\n\r\n")[0].replace(b"INVITE sip", b"CANCEL sip").replace(b"10 INVITE", b"10 CANCEL")  # noqa: E501
    rig.from_dialer(cancel + b"\r\n\r\n")
    (b_cancel,) = _requests(rig.outside.take(), "CANCEL")
    rig.from_carrier(answer(b_cancel, 200, to_tag=""))
    rig.clock.advance(20)
    rig.from_carrier(answer(b_inv, 180))  # a provisional after the CANCEL does not extend the wait
    rig.clock.advance(13)
    assert b_inv.vias[0].branch not in rig.b2b.client_tx
    rig.clock.advance(60)
    _nothing_left(rig)


def test_timer_c_ends_a_ringing_call_when_no_ring_timeout_does(rig: Rig) -> None:
    rt = rig.b2b.rt
    rt.timers = replace(rt.timers, ring_timeout=1e9)
    assert rt.timers.timer_c >= 180  # RFC 3261 §16.6: more than three minutes
    rig.from_dialer(invite())
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_inv, 180))
    rig.clock.advance(rt.timers.timer_c - 10)
    rig.from_carrier(answer(b_inv, 183))  # each provisional restarts Timer C
    rig.clock.advance(20)
    assert _requests(rig.outside.take(), "CANCEL") == []
    rig.clock.advance(rt.timers.timer_c)
    assert 408 in [r.status for r in _responses(rig.inside.take())]
    assert _requests(rig.outside.take(), "CANCEL")
    rig.clock.advance(100)  # the carrier never answers the CANCEL either
    _nothing_left(rig)


class _DialogGauge(Observer):
    def __init__(self) -> None:
        self.value = 0

    def dialogs(self, trunk: str, delta: int) -> None:
        self.value += delta


def test_2xx_after_the_call_ended_is_acked_and_hung_up_once(rig: Rig) -> None:
    gauge = rig.b2b.obs = _DialogGauge()
    rig.from_dialer(invite())
    assert gauge.value == 1
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(_carrier_bye(b_inv))
    (a_bye,) = _requests(rig.inside.take(), "BYE")
    rig.from_dialer(answer(a_bye, 200, to_tag=""))
    rig.outside.take()
    assert rig.b2b.active_calls == 0
    rig.from_carrier(answer(b_inv, 200))
    out = rig.outside.take()
    assert _requests(out, "ACK") and _requests(out, "BYE")
    rig.clock.advance(60)
    _nothing_left(rig)
    assert gauge.value == 0  # the ended call is not revived (and released a second time) by the 2xx


def test_early_bye_from_dialer_cancels_the_carrier_and_ends_everything(rig: Rig) -> None:
    raw = invite()
    rig.from_dialer(raw)
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_inv, 180))
    ringing = next(r for r in rig.inside.take() if r.status == 180)
    a_inv = parse(raw)
    bye = (
        "BYE sip:sipfilter@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5999;branch=z9hG4bKdbye\r\n"
        f"Max-Forwards: 70\r\nFrom: {a_inv.headers.get('From')}\r\nTo: {ringing.headers.get('To')}\r\n"
        f"Call-ID: {a_inv.call_id}\r\nCSeq: 11 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    rig.from_dialer(bye)
    # The INVITE gets 487 and the BYE its 200 at once (a BYE cannot fail), not when the carrier answers.
    got = [(r.status, r.cseq.method) for r in _responses(rig.inside.take())]
    assert got == [(487, "INVITE"), (200, "BYE")]
    out = rig.outside.take()
    (b_bye,) = _requests(out, "BYE")
    (b_cancel,) = _requests(out, "CANCEL")
    rig.from_carrier(answer(b_bye, 200, to_tag=""))
    assert _responses(rig.inside.take()) == []
    rig.from_carrier(answer(b_cancel, 200, to_tag=""))
    rig.from_carrier(answer(b_inv, 487))
    assert _requests(rig.outside.take(), "ACK")
    rig.clock.advance(120)
    _nothing_left(rig)


class FuturePolicy(StubPolicy):
    """Decides after awaiting a future, as a Redis read or a first x5u fetch makes a decision wait."""

    async def decide(self, facts: Any, store: Any) -> Any:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.call_later(0.01, ready.set_result, None)
        await ready
        return await super().decide(facts, store)


async def test_a_decision_that_waits_on_a_future_completes(tmp_path: Path) -> None:
    r = rig_for(write_config(tmp_path))
    r.b2b.rt.policy = FuturePolicy()
    r.from_dialer(invite(body=b"v=0\r\n"))
    for _ in range(100):
        if r.outside.sent:
            break
        await asyncio.sleep(0.01)
    assert [m.method for m in r.outside.take() if m.is_request] == ["INVITE"]
    assert [m.status for m in r.inside.take()] == [100]  # no 500 from a stepped coroutine
