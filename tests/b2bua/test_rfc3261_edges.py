"""RFC 3261 duties at the edges of a call, on fake endpoints and a manual clock: a forked INVITE answered
twice (§13.2.2.4), a request too large for UDP (§18.1.1), and the overload metric of unknown sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from b2bua_rig import CARRIER1, DIALER, FakeEndpoint, ManualClock, Rig, StubPolicy, answer, invite, make_rig
from b2bua_rig import requests_named as _requests

from sipfilter.b2bua.core import B2BUA, compile_runtime
from sipfilter.b2bua.observe import Observer
from sipfilter.b2bua.transactions import UDP_MAX_REQUEST
from sipfilter.configure import load_config
from sipfilter.sip import ParseError, Request, parse


class Seen(Observer):
    def __init__(self) -> None:
        self.drops: list[str] = []
        self.large: list[str] = []

    def overload(self, reason: str) -> None:
        self.drops.append(reason)

    def large_request(self, transport: str) -> None:
        self.large.append(transport)


def _rig_on(tmp_path: Path, *, tcp_outside: bool = False,
            **trunk: Any) -> tuple[Rig, Seen, FakeEndpoint | None]:  # fmt: skip
    rig = make_rig(tmp_path, **trunk)
    seen = Seen()
    rig.b2b.obs = seen
    tcp = None
    if tcp_outside:
        tcp = FakeEndpoint("outside", 5080, "tcp")
        rig.b2b.add_endpoint(tcp)
    return rig, seen, tcp


# --- forked 2xx -------------------------------------------------------------------------------------------


def _answered(rig: Rig) -> Request:
    rig.from_dialer(invite(body=b"v=0\r\n"))
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_inv, 180, to_tag="fork-a"))
    rig.from_carrier(answer(b_inv, 200, to_tag="fork-a", contact="<sip:gw-a@127.0.0.1:5071>"))
    rig.inside.take()
    return b_inv


def _ack_and_bye(msgs: list[Any], tag: str) -> tuple[list[Request], list[Request]]:
    acks = [m for m in _requests(msgs, "ACK") if m.to.tag == tag]
    byes = [m for m in _requests(msgs, "BYE") if m.to.tag == tag]
    return acks, byes


@pytest.mark.parametrize("dialer_acked_first", [True, False])
def test_a_second_fork_2xx_is_acked_and_hung_up(tmp_path: Path, dialer_acked_first: bool) -> None:
    rig, _, _ = _rig_on(tmp_path)
    b_inv = _answered(rig)
    if dialer_acked_first:
        a_ok = next(iter(rig.b2b.calls_a.values()))
        ack = (f"ACK sip:x@10.0.0.5 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5999;branch=z9hG4bKack1\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:a@10.0.0.9>;tag=dialertag\r\nTo: {a_ok.a.local}\r\n"
               f"Call-ID: {a_ok.a.call_id}\r\nCSeq: 10 ACK\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
        rig.from_dialer(ack.encode())
    first = rig.outside.take()
    assert _ack_and_bye(first, "fork-a")[1] == []  # the call's own dialog stays up
    # Another fork of the carrier answers too: a second dialog nobody wants.
    rig.from_carrier(answer(b_inv, 200, to_tag="fork-b", contact="<sip:gw-b@127.0.0.1:5071>",
                            extra="Record-Route: <sip:edge-b.carrier;lr>"))  # fmt: skip
    sent = rig.outside.take()
    acks, byes = _ack_and_bye(sent, "fork-b")
    assert len(acks) == 1 and len(byes) == 1
    assert acks[0].uri == byes[0].uri == "sip:gw-b@127.0.0.1:5071"  # to the fork's Contact
    assert acks[0].cseq.seq == b_inv.cseq.seq and byes[0].cseq.seq == b_inv.cseq.seq + 1
    assert acks[0].headers.get("Route") == byes[0].headers.get("Route") == "<sip:edge-b.carrier;lr>"
    assert acks[0].call_id == byes[0].call_id == b_inv.call_id
    assert _ack_and_bye(sent, "fork-a") == ([], [])
    # Its retransmission gets the same ACK again, and no second BYE.
    rig.from_carrier(answer(b_inv, 200, to_tag="fork-b", contact="<sip:gw-b@127.0.0.1:5071>"))
    again = rig.outside.take()
    assert [bytes(m) for m in _ack_and_bye(again, "fork-b")[0]] == [bytes(acks[0])]
    assert _ack_and_bye(again, "fork-b")[1] == []
    # The call itself is untouched: one dialog, still relayed to the dialer.
    assert rig.b2b.active_calls == 1 and rig.inside.take() == []
    call = next(iter(rig.b2b.calls_a.values()))
    assert call.b is not None and call.b.remote_tag == "fork-a"


def test_a_fork_2xx_after_the_call_ended_is_acked_and_hung_up(tmp_path: Path) -> None:
    rig, _, _ = _rig_on(tmp_path)
    b_inv = _answered(rig)
    rig.b2b.hang_up_all()
    rig.outside.take()
    rig.from_carrier(answer(b_inv, 200, to_tag="fork-c", contact="<sip:gw-c@127.0.0.1:5071>"))
    acks, byes = _ack_and_bye(rig.outside.take(), "fork-c")
    assert len(acks) == 1 and len(byes) == 1


# --- §18.1.1: large requests -------------------------------------------------------------------------------


def _big_invite() -> bytes:
    sdp = b"v=0\r\n" + b"".join(b"a=fmtp:%d mode-set=0,1,2,3,4,5,6,7\r\n" % i for i in range(60))
    raw = invite(body=sdp)
    assert len(raw) > UDP_MAX_REQUEST
    return raw


TWINS = {"targets": [{"uri": f"sip:{CARRIER1[0]}:{CARRIER1[1]}", "transport": "udp", "priority": 1},
                     {"uri": f"sip:{CARRIER1[0]}:{CARRIER1[1]}", "transport": "tcp", "priority": 2}]}


def test_a_large_invite_moves_to_the_tcp_twin_of_its_udp_target(tmp_path: Path) -> None:
    rig, seen, tcp = _rig_on(tmp_path, tcp_outside=True, **TWINS)
    assert tcp is not None
    rig.from_dialer(_big_invite())
    assert rig.outside.sent == []  # nothing over UDP
    (b_inv,) = _requests(tcp.take(), "INVITE")
    assert b_inv.vias[0].transport == "TCP" and b_inv.headers.get("Contact").endswith(";transport=tcp>")
    assert seen.large == ["tcp"]
    # The dialog lives on TCP: the ACK and the BYE follow it there.
    rig.b2b.on_datagram(tcp, answer(b_inv, 200), CARRIER1)
    call = next(iter(rig.b2b.calls_a.values()))
    assert call.b is not None and call.b.ep is tcp
    rig.b2b.hang_up_all()
    assert _requests(tcp.take(), "BYE") and rig.outside.sent == []
    # A small INVITE stays on UDP.
    rig.from_dialer(invite(body=b"v=0\r\n"))
    assert _requests(rig.outside.take(), "INVITE") and tcp.sent == [] and seen.large == ["tcp"]


def test_a_large_invite_without_a_tcp_path_goes_over_udp_and_is_counted(tmp_path: Path) -> None:
    rig, seen, _ = _rig_on(tmp_path)  # UDP targets only, and no TCP listener outside
    rig.from_dialer(_big_invite())
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    assert b_inv.vias[0].transport == "UDP"
    assert seen.large == ["udp"]
    # With a TCP listener but no TCP target at that address: still UDP (the carrier offers no TCP).
    (tmp_path / "2").mkdir()
    rig2, seen2, tcp = _rig_on(tmp_path / "2", tcp_outside=True)
    rig2.from_dialer(_big_invite())
    assert _requests(rig2.outside.take(), "INVITE") and tcp is not None and tcp.sent == []
    assert seen2.large == ["udp"]


# --- unknown sources in the overload metric ----------------------------------------------------------------


@pytest.mark.parametrize("unknown_source", ["drop", "reject", None])
def test_requests_from_unknown_sources_count_as_overload_drops(tmp_path: Path,
                                                               unknown_source: str | None) -> None:
    path = tmp_path / "sipfilter.yaml"
    make_rig(tmp_path)  # writes the config
    cfg = yaml.safe_load(path.read_text())
    if unknown_source is not None:
        cfg["limits"] = {"unknown_source": unknown_source, "source_rate": 5, "source_burst": 10}
    path.write_text(yaml.safe_dump(cfg))
    clock = ManualClock()
    inside, outside = FakeEndpoint("inside", 5060), FakeEndpoint("outside", 5080)
    seen = Seen()
    b2b = B2BUA(compile_runtime(load_config(path), StubPolicy(), store=None), parse=parse,
                parse_error=ParseError, endpoints={"inside": [inside], "outside": [outside]},
                scheduler=clock.later, clock=clock, observer=seen)  # fmt: skip
    stranger = ("192.0.2.66", 5060)
    b2b.on_datagram(inside, invite(), stranger)
    options = invite().replace(b"INVITE sip:", b"OPTIONS sip:").replace(b"10 INVITE", b"1 OPTIONS")
    b2b.on_datagram(inside, options, stranger)
    b2b.on_datagram(outside, invite(), stranger)  # a new request on the carrier side, from no carrier
    assert seen.drops == ["unknown-source"] * 3
    assert stranger != DIALER


# --- To tags -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("to", ["<sip:+33612000001@10.0.0.5;tag=uri-param>",
                                '"x;tag=y" <sip:+33612000001@10.0.0.5>'])
def test_a_tag_inside_the_to_uri_or_its_display_name_is_not_a_to_tag(tmp_path: Path, to: str) -> None:
    # §8.2.6.2: the UAS adds its tag to To. `;tag=` inside the brackets is a URI parameter (or display text):
    # taking it for a tag left the dialog without ours, and the dialer's BYE matched no call (481).
    rig, _, _ = _rig_on(tmp_path)
    rig.from_dialer(invite(body=b"v=0\r\n").replace(b"To: <sip:+33612000001@10.0.0.5>", f"To: {to}".encode()))
    (b_inv,) = _requests(rig.outside.take(), "INVITE")
    rig.from_carrier(answer(b_inv, 180))
    rig.from_carrier(answer(b_inv, 200, contact="<sip:gw@127.0.0.1:5071>"))
    sent = [m for m in rig.inside.take() if not m.is_request]
    assert [m.status for m in sent] == [100, 180, 200]
    ours = sent[2].to.tag
    assert ours and sent[1].to.tag == ours and sent[2].headers.get("To") == f"{to};tag={ours}"
    a_inv = parse(invite())
    head = (f"Max-Forwards: 70\r\nFrom: {a_inv.headers.get('From')}\r\nTo: {sent[2].headers.get('To')}\r\n"
            f"Call-ID: {sent[2].call_id}\r\n")
    for method, cseq in (("ACK", 10), ("BYE", 11)):
        rig.from_dialer((f"{method} sip:sipfilter@127.0.0.1:5060 SIP/2.0\r\n"
                         f"Via: SIP/2.0/UDP 10.0.0.9:5999;branch=z9hG4bK{method}\r\n{head}"
                         f"CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n").encode())
    out = rig.outside.take()
    assert len(_requests(out, "ACK")) == 1 and len(_requests(out, "BYE")) == 1  # the call ended end to end
    assert 481 not in [m.status for m in rig.inside.take() if not m.is_request]
