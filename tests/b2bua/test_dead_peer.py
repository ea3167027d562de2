"""A peer that stops answering mid-call, with a manual clock: the BYE is answered at once, an unanswered
re-INVITE/UPDATE ends the call (408 then BYE both legs), and nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from b2bua_rig import Rig, answer, invite, make_rig
from b2bua_rig import requests_named as _requests
from b2bua_rig import responses_only as _responses

from sipfilter.sip import Request, Response, parse

T1 = 0.5  # the rig's sip.timers.t1_ms


@pytest.fixture(name="rig")
def _rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


def _confirmed_call(rig: Rig) -> tuple[Request, Request, Response]:
    """Dialer INVITE → carrier 200 → dialer ACK; returns (B-leg INVITE, dialer INVITE, 200 to the dialer)."""
    raw = invite(body=b"v=0\r\n")
    rig.from_dialer(raw)
    a_inv = parse(raw)
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_inv, 200, body=b"v=0\r\ns=carrier\r\n"))
    ok = next(r for r in _responses(rig.inside.take()) if r.status == 200)
    rig.from_dialer(_in_dialog(a_inv, ok, "ACK", 10, "z9hG4bKack"))
    assert _requests(rig.outside.take(), "ACK")
    assert rig.b2b.active_calls == 1
    return b_inv, a_inv, ok


def _in_dialog(a_inv: Request, ok: Response, method: str, cseq: int, branch: str, body: bytes = b"") -> bytes:
    head = (
        f"{method} sip:sipfilter@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5999;branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: {a_inv.headers.get('From')}\r\nTo: {ok.headers.get('To')}\r\n"
        f"Call-ID: {a_inv.call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:agent@10.0.0.9:5999>\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _nothing_left(rig: Rig) -> None:
    b2b = rig.b2b
    assert b2b.calls_a == {} and b2b.calls_b == {}
    assert b2b.client_tx == {} and b2b.server_tx == {}
    assert b2b.admission.active_dialogs() == 0


def test_bye_to_a_silent_carrier_is_answered_at_once_and_the_call_ends(rig: Rig) -> None:
    _, a_inv, ok = _confirmed_call(rig)
    rig.from_dialer(_in_dialog(a_inv, ok, "BYE", 11, "z9hG4bKbye"))
    assert [(r.status, r.cseq.method) for r in _responses(rig.inside.take())] == [(200, "BYE")]
    assert _requests(rig.outside.take(), "BYE")  # the carrier is told, for what it is worth
    rig.from_dialer(_in_dialog(a_inv, ok, "BYE", 11, "z9hG4bKbye"))  # retransmission: same answer
    assert [(r.status, r.cseq.method) for r in _responses(rig.inside.take())] == [(200, "BYE")]
    rig.clock.advance(64 * T1 + 0.1)  # Timer F of our BYE to the carrier: the call is forgotten
    assert rig.b2b.active_calls == 0
    assert _responses(rig.inside.take()) == []  # never a late 408 to a BYE already answered
    rig.clock.advance(100)
    _nothing_left(rig)


@pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
def test_unanswered_in_dialog_request_gets_408_and_ends_the_call(rig: Rig, method: str) -> None:
    _, a_inv, ok = _confirmed_call(rig)
    rig.from_dialer(_in_dialog(a_inv, ok, method, 11, "z9hG4bKre", body=b"v=1\r\n"))
    (b_req,) = _requests(rig.outside.take(), method)
    # A re-INVITE gets 100 Trying at once: the dialer waits for our answer instead of its own Timer B.
    assert [r.status for r in _responses(rig.inside.take())] == ([100] if method == "INVITE" else [])
    rig.clock.advance(64 * T1 - 0.1)
    assert _responses(rig.inside.take()) == []  # still waiting (retransmitting to the carrier)
    rig.clock.advance(0.2)
    sent = rig.inside.take()
    assert [(r.status, r.cseq.method) for r in _responses(sent)] == [(408, method)]
    (a_bye,) = _requests(sent, "BYE")  # the dialer is told the call is over
    assert a_bye.call_id == a_inv.call_id and 'text="peer-timeout"' in (a_bye.headers.get("Reason") or "")
    (b_bye,) = _requests(rig.outside.take(), "BYE")
    assert b_bye.call_id == b_req.call_id
    rig.from_dialer(answer(a_bye, 200, to_tag=""))
    rig.clock.advance(100)
    _nothing_left(rig)


def test_reinvite_after_one_answered_by_the_carrier_is_not_refused_491(rig: Rig) -> None:
    """A re-INVITE that got a final answer frees the slot for the next one (no glare left behind)."""
    _, a_inv, ok = _confirmed_call(rig)
    rig.from_dialer(_in_dialog(a_inv, ok, "INVITE", 11, "z9hG4bKre1", body=b"v=1\r\n"))
    (b_re,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_re, 488, to_tag=""))
    assert [r.status for r in _responses(rig.inside.take())] == [100, 488]
    rig.from_dialer(_in_dialog(a_inv, ok, "INVITE", 12, "z9hG4bKre2", body=b"v=1\r\n"))
    assert _requests(rig.outside.take(), "INVITE")
    assert [r.status for r in _responses(rig.inside.take())] == [100]  # not 491


def _mark_every_target_down(rig: Rig) -> None:
    pool = rig.b2b.rt.pools["dialer"]
    for state in pool.states:
        pool.mark(state.dest, ok=False, now=rig.clock())


def test_every_target_down_with_on_targets_down_reject_fails_fast(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, on_targets_down="reject")
    _mark_every_target_down(rig)
    rig.from_dialer(invite())
    finals = [r for r in _responses(rig.inside.take()) if r.status >= 200]
    assert [r.status for r in finals] == [503]
    assert finals[0].headers.get("Retry-After") == "10"  # sip.probe_interval_s
    assert "every carrier target of trunk dialer is down" in (finals[0].headers.get("Warning") or "")
    assert _requests(rig.outside.take(), "INVITE") == []  # nothing tried
    pool = rig.b2b.rt.pools["dialer"]
    pool.mark(pool.states[1].dest, ok=True, now=rig.clock())  # a probe answered: back in rotation
    rig.from_dialer(invite())
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    assert b_inv.uri.endswith(f"{pool.states[1].dest.uri_host}")


def test_every_target_down_by_default_still_tries_them(rig: Rig) -> None:
    _mark_every_target_down(rig)
    rig.from_dialer(invite())
    assert len(_requests(rig.outside.take(), "INVITE")) == 1  # tried anyway (on_targets_down: try)
    assert [r.status for r in _responses(rig.inside.take())] == [100]
