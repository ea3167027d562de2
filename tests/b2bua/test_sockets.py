"""Socket-level tests: the B2BUA behind real UDP and TCP endpoints on loopback, plain Python clients."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from b2bua_rig import StubPolicy, write_config

from sipfilter.b2bua.core import B2BUA, compile_runtime
from sipfilter.configure import load_config
from sipfilter.sip import ParseError, parse
from sipfilter.transport import open_stream_endpoint, open_udp_endpoint


def _options(port: int, transport: str, branch: str) -> bytes:
    return (
        f"OPTIONS sip:sipfilter@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} 127.0.0.1:{port};branch={branch}\r\n"  # noqa: E501
        "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:sipfilter@127.0.0.1>\r\n"
        f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
async def live(tmp_path: Path) -> Any:
    config = load_config(write_config(tmp_path))
    b2b = B2BUA(compile_runtime(config, StubPolicy(), store=None), parse=parse, parse_error=ParseError)
    udp = await open_udp_endpoint("inside", "127.0.0.1", 0, b2b)
    tcp = await open_stream_endpoint("inside", "127.0.0.1", 0, b2b)
    out = await open_udp_endpoint("outside", "127.0.0.1", 0, b2b)
    for ep in (udp, tcp, out):
        b2b.add_endpoint(ep)
    try:
        yield b2b, udp, tcp
    finally:
        for ep in (udp, tcp, out):
            await ep.close()


async def test_udp_options_answered_and_garbage_ignored(live: Any) -> None:
    _, udp, _ = live
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        port = sock.getsockname()[1]
        sock.sendto(b"\x00\xffnot sip at all", ("127.0.0.1", udp.port))
        sock.sendto(_options(port, "UDP", "z9hG4bKudp1"), ("127.0.0.1", udp.port))
        data = await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
        resp = parse(data)
        assert resp.status == 200 and resp.cseq.method == "OPTIONS"
    finally:
        sock.close()


async def test_tcp_messages_crlf_ping_and_fatal_framing(live: Any) -> None:
    _, _, tcp = live
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp.port)
    try:
        port = writer.get_extra_info("sockname")[1]
        msg = _options(port, "TCP", "z9hG4bKtcp1")
        writer.write(b"\r\n\r\n" + msg[:30])  # a ping, then a message in two pieces
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
        writer.write(msg[30:])
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"SIP/2.0 200 ")
        # A negative Content-Length loses framing: answered 400 (or not), then the connection is closed.
        writer.write(msg.replace(b"Content-Length: 0", b"Content-Length: -5").replace(b"tcp1", b"tcp2"))
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 5)
        assert rest == b"" or rest.startswith(b"SIP/2.0 400")
    finally:
        writer.close()
