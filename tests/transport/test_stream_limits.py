"""Inbound TCP connections as an attacker would open them: real sockets on loopback against a B2BUA behind a
real stream endpoint. Unknown sources get no connection, caps hold per source and in total, idle connections
close (but not one a call still needs), and broken framing is answered 400/513 before the close."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "b2bua"))
from b2bua_rig import StubPolicy, write_config

from sipfilter.b2bua.core import B2BUA, compile_runtime
from sipfilter.b2bua.observe import Observer
from sipfilter.configure import load_config
from sipfilter.sip import ParseError, parse
from sipfilter.transport import open_stream_endpoint, open_udp_endpoint
from sipfilter.transport.stream import ConnectionLimits, ConnectionTable

DIALERS = "127.0.0.2/31"  # 127.0.0.2 and 127.0.0.3 are the trunk's sources; 127.0.0.1 is a stranger


class Seen(Observer):
    def __init__(self) -> None:
        self.closed: list[tuple[str, str]] = []
        self.unknown: list[str] = []

    def connection_closed(self, transport: str, reason: str) -> None:
        self.closed.append((transport, reason))

    def unknown_source(self, transport: str) -> None:
        self.unknown.append(transport)


class Live:
    def __init__(self, b2b: B2BUA, tcp: Any, seen: Seen, table: ConnectionTable) -> None:
        self.b2b, self.tcp, self.seen, self.table = b2b, tcp, seen, table

    async def connect(self, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.tcp.port, local_addr=(source, 0))


@pytest.fixture
async def live(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Live]:
    limits = getattr(request, "param", ConnectionLimits())
    config = load_config(write_config(tmp_path, match={"sources": [DIALERS]}))
    seen = Seen()
    b2b = B2BUA(compile_runtime(config, StubPolicy(), store=None), parse=parse, parse_error=ParseError,
                observer=seen)  # fmt: skip
    table = ConnectionTable(limits)
    tcp = await open_stream_endpoint("inside", "127.0.0.1", 0, b2b, connections=table)
    out = await open_udp_endpoint("outside", "127.0.0.1", 0, b2b)
    for ep in (tcp, out):
        b2b.add_endpoint(ep)
    try:
        yield Live(b2b, tcp, seen, table)
    finally:
        for ep in (tcp, out):
            await ep.close()


def _request(method: str, writer: asyncio.StreamWriter, *, body: bytes = b"", extra: str = "",
             length: int | None = None) -> bytes:  # fmt: skip
    host, port = writer.get_extra_info("sockname")[:2]
    tag = uuid.uuid4().hex[:8]
    head = (
        f"{method} sip:+33612000001@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bK{tag}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:+33162000001@{host}>;tag={tag}\r\nTo: <sip:+33612000001@127.0.0.1>\r\n"
        f"Call-ID: {tag}@{host}\r\nCSeq: 1 {method}\r\nContact: <sip:dialer@{host}:{port};transport=tcp>\r\n"
        f"{extra}"
    )
    if length is not None or body:
        head += f"Content-Length: {len(body) if length is None else length}\r\n"
    if body:
        head += "Content-Type: application/sdp\r\n"
    return (head + "\r\n").encode() + body


async def _answer(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)


async def _closed(reader: asyncio.StreamReader, timeout: float = 3.0) -> bool:
    """True when the peer closed (EOF or reset) within `timeout`, reading and dropping anything before."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


async def _options_answered(live: Live, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await live.connect(source)
    writer.write(_request("OPTIONS", writer, length=0))
    await writer.drain()
    assert (await _answer(reader)).startswith(b"SIP/2.0 200 "), source
    return reader, writer


async def _refused(live: Live, source: str) -> bool:
    """Connect from `source` and send an OPTIONS: True when the connection is reset or closed without an
    answer (the reset may come before the connect even returns)."""
    try:
        reader, writer = await live.connect(source)
    except ConnectionResetError:
        return True
    try:
        writer.write(_request("OPTIONS", writer, length=0))
        await writer.drain()
        data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
        return True
    finally:
        writer.close()
    raise AssertionError(f"answered: {data!r}")


async def test_an_unknown_source_gets_no_connection(live: Live) -> None:
    assert await _refused(live, "127.0.0.1")
    assert live.tcp.connection_count == 0 and live.table.total == 0
    assert live.seen.closed == [("tcp", "unknown-source")] and live.seen.unknown == ["tcp"]
    _, ok = await _options_answered(live, "127.0.0.2")  # a trunk source is served
    ok.close()


async def test_a_thousand_strangers_hold_no_descriptor(live: Live) -> None:
    """The fd exhaustion the probe found: connections from unknown sources are closed at once."""
    socks = []
    try:
        for batch in range(1, 7):  # 300 connections, 50 at a time
            for _ in range(50):
                s = socket.socket()
                s.setblocking(False)
                s.bind(("127.0.0.1", 0))
                try:
                    s.connect(("127.0.0.1", live.tcp.port))
                except BlockingIOError:
                    pass
                socks.append(s)
            deadline = time.monotonic() + 10
            while len(live.seen.closed) < 50 * batch and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert live.tcp.connection_count == 0 and live.table.total == 0
        assert len(live.seen.closed) == 300
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("live", [ConnectionLimits(max_total=5, max_per_source=3)], indirect=True)
async def test_caps_per_source_and_in_total(live: Live) -> None:
    held = [await _options_answered(live, "127.0.0.2") for _ in range(3)]
    assert await _refused(live, "127.0.0.2"), "a 4th connection from one source must be refused"
    held += [await _options_answered(live, "127.0.0.3") for _ in range(2)]
    assert await _refused(live, "127.0.0.3"), "a 6th connection in total must be refused"
    assert live.seen.closed == [("tcp", "per-source"), ("tcp", "total")]
    assert live.table.total == 5
    held.pop()[1].close()  # one goes: its slot is free again
    deadline = time.monotonic() + 3
    while live.table.total > 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    held.append(await _options_answered(live, "127.0.0.3"))
    for _, w in held:
        w.close()


@pytest.mark.parametrize("live", [ConnectionLimits(idle_timeout_s=0.4)], indirect=True)
async def test_an_idle_connection_is_closed_unless_a_call_needs_it(live: Live) -> None:
    before = time.monotonic()
    idle_reader, idle_writer = await _options_answered(live, "127.0.0.2")
    # Another connection carries a call (the carrier never answers: it stays in progress for 64*T1).
    call_reader, call_writer = await live.connect("127.0.0.3")
    call_writer.write(_request("INVITE", call_writer, body=b"v=0\r\n"))
    await call_writer.drain()
    assert (await _answer(call_reader)).startswith(b"SIP/2.0 100 ")
    assert await _closed(idle_reader, timeout=3.0)
    started = before  # its last message was the OPTIONS, sent after `before`
    assert 0.4 <= time.monotonic() - started < 3.0
    assert ("tcp", "idle") in live.seen.closed
    assert not await _closed(call_reader, timeout=1.5), "the connection of a call in progress was closed"
    assert live.b2b.active_calls == 1
    idle_writer.close()
    call_writer.close()


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda w: _request("OPTIONS", w, length=1_000_000), b"SIP/2.0 513 "),  # body over max_message_bytes
        (lambda w: _request("OPTIONS", w, extra=f"X-Pad: {'a' * 70_000}\r\n", length=0), b"SIP/2.0 513 "),
        (lambda w: _request("OPTIONS", w), b"SIP/2.0 400 "),  # no Content-Length on a stream
        (lambda w: _request("OPTIONS", w, length=-3), b"SIP/2.0 400 "),
        (lambda w: _request("OPTIONS", w, extra="Content-Length: 0\r\n", length=0), b"SIP/2.0 400 "),
    ],
)
async def test_broken_framing_is_answered_before_the_close(live: Live, make: Any, status: bytes) -> None:
    reader, writer = await live.connect("127.0.0.2")
    try:
        writer.write(make(writer))
        await writer.drain()
        answer = await _answer(reader)
        assert answer.startswith(status), answer[:80]
        assert b"Via: SIP/2.0/TCP " in answer and b"CSeq: 1 OPTIONS" in answer
        assert await _closed(reader)
    finally:
        writer.close()
