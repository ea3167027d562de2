"""`sipfilter run` as a process: SIGHUP with a broken config keeps serving, SIGTERM drains (503 +
Retry-After for new INVITEs while a call is up) and exits once calls have ended."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from sipp_harness import sipfilter_available

_MISSING = sipfilter_available()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

CALLER, CALLEE = "+33162000001", "+33612000001"


class Udp:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def wait_for(self, prefix: bytes, timeout_s: float = 5.0) -> tuple[bytes, tuple[str, int]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if data.startswith(prefix):
                return data, addr
        raise AssertionError(f"nothing starting with {prefix!r} within {timeout_s}s")


def _invite(dialer: Udp, inside: int, call_id: str) -> bytes:
    return (
        f"INVITE sip:{CALLEE}@127.0.0.1:{inside} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{dialer.port};branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{CALLER}@127.0.0.1>;tag=d1\r\nTo: <sip:{CALLEE}@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:dialer@127.0.0.1:{dialer.port}>\r\n"
        f"P-Asserted-Identity: <sip:{CALLER}@127.0.0.1>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _reply(request: bytes, status: str, to_tag: str = "c1", contact: str = "") -> bytes:
    head = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    keep = [h for h in head[1:] if h.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
    keep = [h + f";tag={to_tag}" if h.lower().startswith("to:") and "tag=" not in h else h for h in keep]
    if contact:
        keep.append(f"Contact: <{contact}>")
    return (f"SIP/2.0 {status}\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[object, Path, Udp, Udp]]:
    from sipfilter_provision import provision
    from sipp_harness import Sipfilter, SipfilterPorts, free_ports, sipfilter_config, write_config

    carrier, dialer = Udp(), Udp()
    proc = None
    try:
        ports = SipfilterPorts(*free_ports(3))
        config = sipfilter_config(tmp_path, ports, [carrier.port], sip={"drain_timeout_s": 30})
        path = write_config(tmp_path / "sipfilter.yaml", config)
        provision(path, tmp_path)
        proc = Sipfilter(path, ports, tmp_path / "run").start()
        yield proc, path, carrier, dialer
    finally:
        if proc is not None:
            proc.stop()
        carrier.sock.close()
        dialer.sock.close()


def test_reload_and_drain(running: tuple[object, Path, Udp, Udp]) -> None:
    proc, path, carrier, dialer = running
    inside = ("127.0.0.1", proc.ports.inside)  # type: ignore[attr-defined]
    # A call is answered and stays up.
    dialer.sock.sendto(_invite(dialer, inside[1], "call-up"), inside)
    b_invite, b_addr = carrier.wait_for(b"INVITE ")
    carrier.sock.sendto(_reply(b_invite, "200 OK", contact=f"sip:gw@127.0.0.1:{carrier.port}"), b_addr)
    ok, _ = dialer.wait_for(b"SIP/2.0 200")
    # SIGHUP with a broken file: refused, the old config keeps serving.
    good = path.read_text()
    path.write_text(good + "\ntrunks: [this is not valid\n")
    os.kill(proc.proc.pid, signal.SIGHUP)  # type: ignore[attr-defined]
    time.sleep(0.5)
    assert proc.alive(), proc.log_tail()  # type: ignore[attr-defined]
    assert "reload refused" in proc.log_tail()  # type: ignore[attr-defined]
    path.write_text(good)
    os.kill(proc.proc.pid, signal.SIGHUP)  # type: ignore[attr-defined]
    time.sleep(0.5)
    assert "config reloaded" in proc.log_tail()  # type: ignore[attr-defined]
    # SIGTERM: draining. New INVITEs get 503 with Retry-After; the call in progress is untouched.
    os.kill(proc.proc.pid, signal.SIGTERM)  # type: ignore[attr-defined]
    time.sleep(0.3)
    dialer.sock.sendto(_invite(dialer, inside[1], "call-new"), inside)
    refused, _ = dialer.wait_for(b"SIP/2.0 503")
    assert b"Retry-After:" in refused
    assert proc.alive()  # type: ignore[attr-defined]
    # The dialer hangs up: BYE relayed, answered, and the process exits on its own.
    to = next(h for h in ok.decode().split("\r\n") if h.lower().startswith("to:"))
    bye = (
        f"BYE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{dialer.port};branch=z9hG4bKbye{uuid.uuid4().hex[:6]}\r\n"  # noqa: E501
        f"Max-Forwards: 70\r\nFrom: <sip:{CALLER}@127.0.0.1>;tag=d1\r\n{to}\r\nCall-ID: call-up\r\nCSeq: 2 BYE\r\n"  # noqa: E501
        "Content-Length: 0\r\n\r\n"
    ).encode()
    dialer.sock.sendto(bye, inside)
    b_bye, b_addr = carrier.wait_for(b"BYE ")
    carrier.sock.sendto(_reply(b_bye, "200 OK", to_tag=""), b_addr)
    dialer.wait_for(b"SIP/2.0 200")
    proc.proc.wait(timeout=10)  # type: ignore[attr-defined]
    assert proc.proc.returncode == 0, proc.log_tail()  # type: ignore[attr-defined]


def test_a_second_sigterm_hangs_up_both_legs_before_exiting(running: tuple[object, Path, Udp, Udp]) -> None:
    """An operator who cannot wait for the drain sends SIGTERM again: no carrier leg may stay up (billed)
    after the process is gone, so both legs get a BYE first."""
    proc, _, carrier, dialer = running
    inside = ("127.0.0.1", proc.ports.inside)  # type: ignore[attr-defined]
    dialer.sock.sendto(_invite(dialer, inside[1], "call-kept"), inside)
    b_invite, b_addr = carrier.wait_for(b"INVITE ")
    carrier.sock.sendto(_reply(b_invite, "200 OK", contact=f"sip:gw@127.0.0.1:{carrier.port}"), b_addr)
    dialer.wait_for(b"SIP/2.0 200")
    pid = proc.proc.pid  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGTERM)  # drain: up to drain_timeout_s (30 s) for the call to end
    time.sleep(0.5)
    assert proc.alive()  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGTERM)  # again: now
    b_bye, b_addr = carrier.wait_for(b"BYE ", timeout_s=3.0)
    assert b"Call-ID: call-kept" not in b_bye  # the B-leg's own Call-ID (topology hiding)
    carrier.sock.sendto(_reply(b_bye, "200 OK", to_tag=""), b_addr)
    a_bye, a_addr = dialer.wait_for(b"BYE ", timeout_s=3.0)
    assert b"Call-ID: call-kept" in a_bye
    dialer.sock.sendto(_reply(a_bye, "200 OK", to_tag=""), a_addr)
    proc.proc.wait(timeout=10)  # type: ignore[attr-defined]
    assert proc.proc.returncode == 0, proc.log_tail()  # type: ignore[attr-defined]
    assert "second signal: hanging up 1 call(s)" in proc.log_tail()  # type: ignore[attr-defined]
