"""The transaction machines on a real UDP socket against SIPp: ACK for non-2xx, 100 Trying, Timer D/I.

A minimal asyncio adapter (the kind the B2BUA writes) executes the actions; SIPp checks what reaches it.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from sipfilter.sip import Request, Response, parse
from sipfilter.sip.timers import TimerConfig
from sipfilter.sip.transaction import (
    Action,
    CancelTimer,
    Deliver,
    InviteClientTransaction,
    InviteServerTransaction,
    MessageReceived,
    Send,
    SendResponse,
    StartTimer,
    Terminated,
    TimerFired,
    Transaction,
    TransportFailed,
    TxState,
    response_for,
    server_key,
)

SIPP = shutil.which("sipp")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)"),
]
LOOP = "127.0.0.1"
FAST = TimerConfig(t1=0.5, t2=4.0, t4=0.5, timer_d=0.5)


class Adapter(asyncio.DatagramProtocol):
    """Runs one transaction's actions on a UDP socket and the event loop's timers."""

    def __init__(self, peer: tuple[str, int] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.peer = peer
        self.tx: Transaction | None = None
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.sent: list[Request | Response] = []
        self.delivered: asyncio.Queue[Request | Response] = asyncio.Queue()
        self.states: list[TxState] = []
        self.ended: asyncio.Future[str] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def run(self, actions: list[Action]) -> None:
        assert self.tx is not None and self.transport is not None
        for a in actions:
            if isinstance(a, Send):
                self.sent.append(a.msg)
                self.transport.sendto(a.msg.serialize(), self.peer)
            elif isinstance(a, Deliver):
                self.delivered.put_nowait(a.msg)
            elif isinstance(a, StartTimer):
                old = self.timers.pop(a.name, None)
                if old is not None:
                    old.cancel()
                self.timers[a.name] = self.loop.call_later(a.seconds, self.fire, a.name)
            elif isinstance(a, CancelTimer):
                self.timers.pop(a.name).cancel()
            elif isinstance(a, Terminated):
                self.ended.set_result(a.reason)
            else:
                assert isinstance(a, TransportFailed)
        if not self.states or self.states[-1] is not self.tx.state:
            self.states.append(self.tx.state)

    def fire(self, name: str) -> None:
        del self.timers[name]
        assert self.tx is not None
        self.run(self.tx.handle(TimerFired(name)))

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = parse(data)
        if self.tx is None:  # the server side: the first request creates the transaction
            assert isinstance(msg, Request) and msg.method == "INVITE"
            self.peer = addr
            self.tx = InviteServerTransaction(msg, timers=FAST)
            self.run(self.tx.start())
            return
        if isinstance(msg, Request) and server_key(msg) != self.tx.key:
            return  # not ours (a 2xx ACK would go to the dialog)
        self.run(self.tx.handle(MessageReceived(msg)))

    def close(self) -> None:
        for handle in self.timers.values():
            handle.cancel()
        if self.transport is not None:
            self.transport.close()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOP, 0))
        return int(s.getsockname()[1])


def _wait_bound(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sipp exited early ({proc.returncode})")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((LOOP, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return
                raise
        time.sleep(0.05)
    raise AssertionError(f"sipp did not bind UDP {port}")


def _sipp(tmp_path: Path, scenario: str, port: int, remote: str | None = None) -> subprocess.Popen[bytes]:
    xml = tmp_path / "scenario.xml"
    xml.write_text(scenario)
    assert SIPP is not None
    cmd = [SIPP, *([remote] if remote else []), "-sf", str(xml), "-i", LOOP, "-p", str(port), "-t", "u1"]
    cmd += ["-m", "1", "-timeout", "20s", "-timeout_error", "-nostdin", "-trace_err", "-trace_msg"]
    return subprocess.Popen(cmd, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


async def _finish(proc: subprocess.Popen[bytes], tmp_path: Path) -> int:
    try:
        for _ in range(300):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("sipp did not finish")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if proc.returncode != 0:
        logs = "".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*.log"))
        raise AssertionError(f"sipp failed ({proc.returncode}):\n{logs}")
    return proc.returncode


UAS_486 = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="180, 486: the ACK is checked header by header">
  <recv request="INVITE"/>
  <send><![CDATA[

      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=carrier77
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]></send>
  <send><![CDATA[

      SIP/2.0 486 Busy Here
      [last_Via:]
      [last_From:]
      [last_To:];tag=carrier77
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]></send>
  <recv request="ACK">
    <action>
      <ereg regexp="BRANCH" search_in="hdr" header="Via:" check_it="true" assign_to="b1"/>
      <ereg regexp="tag=carrier77" search_in="hdr" header="To:" check_it="true" assign_to="t1"/>
      <ereg regexp="^ *4711 ACK" search_in="hdr" header="CSeq:" check_it="true" assign_to="c1"/>
      <ereg regexp="sip:edge.example.net;lr" search_in="hdr" header="Route:" check_it="true" assign_to="r1"/>
    </action>
  </recv>
  <pause milliseconds="300"/>
  <Reference variables="b1,t1,c1,r1"/>
</scenario>
"""


async def test_invite_client_against_sipp_uas(tmp_path: Path) -> None:
    sipp_port = _free_udp_port()
    branch = "z9hG4bKsipfiltertx4711"
    proc = _sipp(tmp_path, UAS_486.replace("BRANCH", branch), sipp_port)
    loop = asyncio.get_running_loop()
    adapter: Adapter | None = None
    try:
        _wait_bound(sipp_port, proc)
        transport, adapter = await loop.create_datagram_endpoint(
            lambda: Adapter((LOOP, sipp_port)), local_addr=(LOOP, 0)
        )
        port = transport.get_extra_info("sockname")[1]
        invite = parse(
            f"INVITE sip:+33612345678@{LOOP}:{sipp_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOP}:{port};branch={branch}\r\n"
            "Max-Forwards: 70\r\n"
            "Route: <sip:edge.example.net;lr>\r\n"
            f"From: <sip:+33188776655@{LOOP}>;tag=dialer1\r\n"
            f"To: <sip:+33612345678@{LOOP}>\r\n"
            "Call-ID: tx-e2e-1@sipfilter\r\n"
            "CSeq: 4711 INVITE\r\n"
            f"Contact: <sip:sipfilter@{LOOP}:{port}>\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        assert isinstance(invite, Request)
        adapter.tx = InviteClientTransaction(invite, timers=FAST)
        adapter.run(adapter.tx.start())
        assert await asyncio.wait_for(adapter.ended, 15) == "normal"  # Timer D
        await _finish(proc, tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if adapter is not None:
            adapter.close()
    got = [adapter.delivered.get_nowait() for _ in range(adapter.delivered.qsize())]
    assert [m.status for m in got if isinstance(m, Response)] == [180, 486]
    # SIPp answers a repeated ACK by repeating its 486, so retransmission absorption is left to unit tests.
    assert [m.method for m in adapter.sent if isinstance(m, Request)] == ["INVITE", "ACK"]
    assert adapter.states == [TxState.CALLING, TxState.PROCEEDING, TxState.COMPLETED, TxState.TERMINATED]


UAC_INVITE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="INVITE refused: 100 from the transaction, then 486, ACK">
  <send retrans="500"><![CDATA[

      INVITE sip:+33612345678@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:+33188776655@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:+33612345678@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:dialer@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]></send>
  <recv response="100"/>
  <recv response="486" rrs="true"/>
  <send><![CDATA[

      ACK sip:+33612345678@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: <sip:+33188776655@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]></send>
  <pause milliseconds="200"/>
</scenario>
"""


async def test_invite_server_against_sipp_uac(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    transport, adapter = await loop.create_datagram_endpoint(Adapter, local_addr=(LOOP, 0))
    port = transport.get_extra_info("sockname")[1]
    proc = _sipp(tmp_path, UAC_INVITE, _free_udp_port(), remote=f"{LOOP}:{port}")
    try:
        invite = await asyncio.wait_for(adapter.delivered.get(), 15)
        assert isinstance(invite, Request)
        await asyncio.sleep(0.35)  # the "policy" takes longer than 200 ms: the transaction sends 100 itself
        assert adapter.tx is not None
        adapter.run(adapter.tx.handle(SendResponse(response_for(invite, 486, to_tag="sf1"))))
        assert await asyncio.wait_for(adapter.ended, 15) == "normal"  # ACK, then Timer I
        await _finish(proc, tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        adapter.close()
    assert [m.status for m in adapter.sent if isinstance(m, Response)][:2] == [100, 486]
    assert adapter.states == [TxState.PROCEEDING, TxState.COMPLETED, TxState.CONFIRMED, TxState.TERMINATED]
    assert adapter.delivered.empty()  # the ACK for a non-2xx stays inside the transaction
