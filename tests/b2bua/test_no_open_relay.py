"""No open relay: real UDP sockets on loopback around a real `sipfilter run`.

Requests from unlisted sources, to foreign domains or with Route headers pointing elsewhere never reach
anything but the trunk's configured carrier, and unlisted sources reach nothing at all.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from sipp_harness import sipfilter_available
from udp_peer import Listener

_MISSING = sipfilter_available()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

LEGIT_SOURCE = "127.0.0.1"
UNLISTED_SOURCE = "127.0.0.77"  # inside 127/8, outside the trunk's 127.0.0.1/32
CALLER, CALLEE = "+33162000001", "+33612000001"  # a legal call once provisioned (CONSENTED)
QUIET_S = 1.5  # how long "nothing arrives" is watched for after the last request


def invite(
    ruri: str,
    src: tuple[str, int],
    *,
    route: str | None = None,
    extra: str = "",
    caller: str = CALLER,
    callee: str = CALLEE,
) -> bytes:
    call_id = uuid.uuid4().hex
    host, port = src
    lines = [
        f"INVITE {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{call_id[:12]};rport",
        "Max-Forwards: 70",
        f"From: <sip:{caller}@{host}>;tag={call_id[:8]}",
        f"To: <sip:{callee}@{host}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:{caller}@{host}:{port}>",
        f"P-Asserted-Identity: <sip:{caller}@{host}>",
    ]
    if route:
        lines.append(f"Route: {route}")
    if extra:
        lines.append(extra)
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


@dataclass
class Rig:
    inside: tuple[str, int]
    outside: tuple[str, int]
    carrier: Listener
    foreign: Listener  # an address nobody configured: it must never receive anything
    dialer: Listener  # the legitimate dialer's socket (127.0.0.1)
    stranger: Listener  # an unlisted source (127.0.0.77)
    log_tail: Callable[[], str]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    from sipfilter_provision import provision
    from sipp_harness import Sipfilter, SipfilterPorts, free_ports, sipfilter_config, write_config

    carrier = Listener(answer=True, answers_probes=True)
    foreign = Listener(answer=True)
    dialer = Listener(LEGIT_SOURCE)
    stranger = Listener(UNLISTED_SOURCE)
    listeners = [carrier, foreign, dialer, stranger]
    proc = None
    try:
        workdir = tmp_path_factory.mktemp("open-relay")
        ports = SipfilterPorts(*free_ports(3))
        config = sipfilter_config(
            workdir, ports, [carrier.port], trunk={"match": {"sources": [f"{LEGIT_SOURCE}/32"]}}
        )
        config_path = write_config(workdir / "sipfilter.yaml", config)
        provision(config_path, workdir)
        for listener in listeners:
            listener.start()
        proc = Sipfilter(config_path, ports, workdir / "run").start()
        yield Rig(("127.0.0.1", ports.inside), ("127.0.0.1", ports.outside), carrier, foreign, dialer,
                  stranger, proc.log_tail)  # fmt: skip
    finally:
        if proc is not None:
            proc.stop()
        for listener in listeners:
            listener.close()


def _send(sock: Listener, data: bytes, to: tuple[str, int]) -> None:
    sock.sock.sendto(data, to)


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_control_a_legal_call_from_the_listed_source_reaches_the_carrier(rig: Rig) -> None:
    """Proves the rig can see a relay: the other tests' silence is meaningful."""
    before = len(rig.carrier.requests("INVITE"))
    _send(rig.dialer, invite(f"sip:{CALLEE}@{rig.inside[0]}:{rig.inside[1]}", rig.dialer.sock.getsockname()),
          rig.inside)  # fmt: skip
    assert _wait_for(lambda: len(rig.carrier.requests("INVITE")) > before, 5.0), rig.log_tail()
    # The dialer is told how it ended (486 from our carrier, relayed back).
    assert _wait_for(lambda: any(d.startswith(b"SIP/2.0 486") for d, _ in rig.dialer.received), 5.0)


def test_unlisted_source_is_never_relayed_nor_answered(rig: Rig) -> None:
    carrier_before = len(rig.carrier.received)
    for ruri in (
        f"sip:{CALLEE}@{rig.inside[0]}:{rig.inside[1]}",
        f"sip:{CALLEE}@127.0.0.1:{rig.foreign.port}",
        f"sip:{CALLEE}@127.0.0.1:{rig.carrier.port}",
    ):
        _send(rig.stranger, invite(ruri, rig.stranger.sock.getsockname()), rig.inside)
        opts = invite(ruri, rig.stranger.sock.getsockname()).replace(b"INVITE", b"OPTIONS")
        _send(rig.stranger, opts, rig.inside)
    time.sleep(QUIET_S)
    assert len(rig.carrier.received) == carrier_before
    assert rig.foreign.received == []
    # Silent drop (the default `unknown_source: drop`), or at most a final refusal: never a provisional
    # or success answer that would show a scanner a working trunk.
    for data, _ in rig.stranger.received:
        assert re.match(rb"SIP/2.0 (4|5|6)\d\d ", data), data[:80]


def test_foreign_request_uri_or_route_never_reaches_another_host(rig: Rig) -> None:
    foreign = f"127.0.0.1:{rig.foreign.port}"
    src = rig.dialer.sock.getsockname()
    attempts = [
        invite(f"sip:{CALLEE}@{foreign}", src),  # foreign domain in the Request-URI
        invite(f"sip:{CALLEE}@{foreign};maddr=127.0.0.1;transport=udp", src),
        invite(f"sip:{CALLEE}@{rig.inside[0]}:{rig.inside[1]}", src, route=f"<sip:{foreign};lr>"),
        invite(
            f"sip:{CALLEE}@{rig.inside[0]}:{rig.inside[1]}", src, route=f"<sip:{foreign}>"
        ),  # strict route
        invite(f"sip:{CALLEE}@{foreign}", src, route=f"<sip:{foreign};lr>, <sip:evil.example;lr>"),
        invite(f"sip:{CALLEE}@evil.example", src),
    ]
    carrier_before = list(rig.carrier.received)
    for data in attempts:
        _send(rig.dialer, data, rig.inside)
    time.sleep(QUIET_S)
    assert rig.foreign.received == [], rig.foreign.received[:1]
    # Whatever reached the carrier went to the configured target (that is the trunk, not a relay): its
    # Request-URI names that target, not the foreign host, and no Route header points anywhere else.
    target = f"@127.0.0.1:{rig.carrier.port}".encode()
    for data, _ in rig.carrier.received[len(carrier_before) :]:
        head = data.split(b"\r\n\r\n", 1)[0]
        if data.startswith(b"INVITE "):
            assert target in head.split(b"\r\n", 1)[0], head.split(b"\r\n", 1)[0]
        assert str(rig.foreign.port).encode() not in head and b"evil.example" not in head, head


def test_escaped_route_header_in_uri_is_not_turned_into_a_header(rig: Rig) -> None:
    foreign = f"127.0.0.1:{rig.foreign.port}"
    src = rig.dialer.sock.getsockname()
    data = invite(f"sip:{CALLEE}@{rig.inside[0]}:{rig.inside[1]}?Route=%3Csip:{foreign}%3E", src)
    carrier_before = len(rig.carrier.received)
    _send(rig.dialer, data, rig.inside)
    time.sleep(QUIET_S)
    assert rig.foreign.received == []
    for data_, _ in rig.carrier.received[carrier_before:]:
        assert not re.search(rb"(?im)^route\s*:", data_.split(b"\r\n\r\n", 1)[0])


def test_requests_arriving_on_the_carrier_side_are_not_relayed(rig: Rig) -> None:
    """A new INVITE to the outside port (from the carrier's address or any other) opens nothing."""
    dialer_before = len(rig.dialer.received)
    carrier_before = len(rig.carrier.received)
    for sender in (rig.carrier, rig.foreign):
        src = sender.sock.getsockname()
        with contextlib.suppress(OSError):
            _send(sender, invite(f"sip:{CALLEE}@127.0.0.1:{rig.dialer.port}", src), rig.outside)
            _send(sender, invite(f"sip:{CALLEE}@127.0.0.1:{rig.foreign.port}", src), rig.outside)
    time.sleep(QUIET_S)
    # Nothing relayed to the dialer (answers to its own earlier INVITEs may still be retransmitted).
    assert not [d for d, _ in rig.dialer.received[dialer_before:] if not d.startswith(b"SIP/2.0 ")]
    # Nothing new went out towards the carrier socket other than answers to its own requests.
    new = rig.carrier.received[carrier_before:]
    assert all(d.startswith(b"SIP/2.0 ") for d, _ in new), [d[:60] for d, _ in new]
    assert not [d for d, _ in rig.foreign.received if not d.startswith(b"SIP/2.0 ")]


# --- request_uri.domains: foreign hosts are refused outright, not rewritten ----------------------------

OUR_DOMAIN = "calls.acme.example"


@dataclass
class StrictRig:
    inside: tuple[str, int]
    carrier: Listener
    dialer: Listener
    metrics: Callable[[], str]
    log_tail: Callable[[], str]


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictRig]:
    from sipfilter_provision import provision
    from sipp_harness import Sipfilter, SipfilterPorts, free_ports, sipfilter_config, write_config

    carrier = Listener(answer=True, answers_probes=True)
    dialer = Listener(LEGIT_SOURCE)
    proc = None
    try:
        workdir = tmp_path_factory.mktemp("request-uri")
        ports = SipfilterPorts(*free_ports(3))
        trunk = {"match": {"sources": [f"{LEGIT_SOURCE}/32"]},
                 "request_uri": {"domains": [OUR_DOMAIN.upper(), "127.0.0.1"]}}  # fmt: skip
        config = sipfilter_config(workdir, ports, [carrier.port], trunk=trunk)
        config_path = write_config(workdir / "sipfilter.yaml", config)
        provision(config_path, workdir)
        carrier.start()
        dialer.start()
        proc = Sipfilter(config_path, ports, workdir / "run").start()
        yield StrictRig(("127.0.0.1", ports.inside), carrier, dialer, proc.metrics, proc.log_tail)
    finally:
        if proc is not None:
            proc.stop()
        carrier.close()
        dialer.close()


def _answers(listener: Listener, call_id: bytes) -> list[bytes]:
    return [d for d, _ in list(listener.received) if d.startswith(b"SIP/2.0 ") and call_id in d]


def _call_id(data: bytes) -> bytes:
    found = re.search(rb"(?m)^Call-ID: (\S+)", data)
    assert found is not None
    return found.group(1)


def test_request_uri_outside_the_trunk_domains_gets_403_with_a_warning(strict: StrictRig) -> None:
    src = strict.dialer.sock.getsockname()
    carrier_before = len(strict.carrier.requests("INVITE"))
    refused = [invite(f"sip:{CALLEE}@evil.example", src), invite(f"sip:{CALLEE}@acme.example", src),
               invite(f"sip:{CALLEE}@{OUR_DOMAIN}.evil.example;transport=udp", src)]  # fmt: skip
    for data in refused:
        _send(strict.dialer, data, strict.inside)
    for data in refused:
        cid = _call_id(data)
        assert _wait_for(lambda cid=cid: _answers(strict.dialer, cid), 5.0), strict.log_tail()
        (answer,) = _answers(strict.dialer, cid)
        assert answer.startswith(b"SIP/2.0 403 "), answer[:80]  # no 100 Trying: refused before anything
        warning = rb'(?m)^Warning: 399 \S+ "Request-URI host \S+ is not in request_uri.domains'
        assert re.search(warning, answer), answer
    time.sleep(QUIET_S)
    assert len(strict.carrier.requests("INVITE")) == carrier_before
    counted = re.search(r'(?m)^sipfilter_request_uri_refused_total\{trunk="(\w+)"\} (\S+)', strict.metrics())
    assert counted is not None and float(counted.group(2)) == len(refused)


def test_request_uri_in_the_trunk_domains_is_relayed(strict: StrictRig) -> None:
    """The control: listed hosts (any case, our own address too) reach the carrier, rewritten to it."""
    src = strict.dialer.sock.getsockname()
    for ruri in (f"sip:{CALLEE}@{OUR_DOMAIN}", f"sip:{CALLEE}@Calls.ACME.example.:5060",
                 f"sip:{CALLEE}@{strict.inside[0]}:{strict.inside[1]}"):  # fmt: skip
        before = len(strict.carrier.requests("INVITE"))
        _send(strict.dialer, invite(ruri, src), strict.inside)
        assert _wait_for(lambda b=before: len(strict.carrier.requests("INVITE")) > b, 5.0), strict.log_tail()
        line = strict.carrier.requests("INVITE")[-1].split(b"\r\n", 1)[0]
        assert f"@127.0.0.1:{strict.carrier.port}".encode() in line, line
