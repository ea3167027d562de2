"""TCP and TLS endpoints: a listening server plus outbound connections, one StreamFramer per connection.

Frames with the SIP core's StreamFramer and hands whole messages to the handler; never interprets them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, cast

from sipfilter.sip.framing import KeepAlive, StreamFramer
from sipfilter.transport.base import Addr, Endpoint, Handler

log = logging.getLogger(__name__)

_MAX_PENDING = 1 << 20  # bytes queued on a connection still being opened; beyond that, drop


def _new_framer(limits: Any) -> StreamFramer:
    return StreamFramer(limits)


class _Connection(asyncio.Protocol):
    """One TCP/TLS connection: frames bytes into messages, answers RFC 5626 CRLF pings."""

    def __init__(self, endpoint: StreamEndpoint) -> None:
        self.endpoint = endpoint
        self.framer = _new_framer(endpoint.limits)
        self.transport: asyncio.Transport | None = None
        self.peer: Addr = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        self.endpoint._connections[self.peer] = self

    def connection_lost(self, exc: Exception | None) -> None:
        if self.endpoint._connections.get(self.peer) is self:
            del self.endpoint._connections[self.peer]

    def data_received(self, data: bytes) -> None:
        try:
            items = self.framer.feed(data)
        except Exception as exc:  # a framer bug must close this connection, not the process
            log.warning("closing %s connection from %s: framing failed: %r", self.endpoint.transport,
                        self.peer, exc)
            self.close()
            return
        handler, endpoint, peer = self.endpoint.handler, self.endpoint, self.peer
        for item in items:
            if isinstance(item, KeepAlive):
                if item.ping:  # RFC 5626 §3.5.1: answer a CRLFCRLF ping with a CRLF pong
                    self.write(b"\r\n")
                continue
            try:
                handler.on_message(endpoint, item, peer)
            except Exception:
                log.exception("unhandled error on a %s message from %s", endpoint.transport, peer)
            if getattr(item, "fatal", False):  # framing lost: RFC 3261 §18.3, close the connection
                self.close()
                return

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class StreamEndpoint(Endpoint):
    """A TCP (or TLS) server; `send(data, addr)` reuses the peer's connection or opens one."""

    reliable = True

    def __init__(
        self,
        side: str,
        host: str,
        port: int,
        handler: Handler,
        *,
        tls: ssl.SSLContext | None = None,
        client_tls: ssl.SSLContext | None = None,
        limits: Any = None,
    ) -> None:
        super().__init__(side, host, port)
        self.transport = "tls" if tls is not None else "tcp"
        self.handler = handler
        self.limits = limits
        self._tls = tls
        self._client_tls = client_tls
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[Addr, _Connection] = {}
        self._connecting: dict[Addr, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, ssl=self._tls, reuse_address=True
        )
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def send(self, data: bytes, addr: Addr) -> None:
        conn = self._connections.get(addr)
        if conn is not None:
            conn.write(data)
            return
        pending = self._connecting.get(addr)
        if pending is not None:
            if sum(map(len, pending)) < _MAX_PENDING:
                pending.append(data)
            return
        self._connecting[addr] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, addr: Addr) -> None:
        loop = asyncio.get_running_loop()
        try:
            ctx = self._client_tls if self.transport == "tls" else None
            if self.transport == "tls" and ctx is None:
                ctx = ssl.create_default_context()
            _, conn = await loop.create_connection(lambda: _Connection(self), addr[0], addr[1], ssl=ctx)
        except OSError as exc:
            log.info("%s connection to %s:%s failed: %s", self.transport, addr[0], addr[1], exc)
            self._connecting.pop(addr, None)
            return
        # The connection registered itself under the peer address it reports.
        for data in self._connecting.pop(addr, []):
            conn.write(data)
        if addr not in self._connections:
            self._connections[addr] = conn

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()


def tls_server_context(cert: str, key: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context from a PEM certificate chain and key."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


async def open_stream_endpoint(
    side: str,
    host: str,
    port: int,
    handler: Handler,
    *,
    tls: ssl.SSLContext | None = None,
    limits: Any = None,
) -> StreamEndpoint:
    """Listen for TCP (or TLS when `tls` is given) on host:port (0 = any free port)."""
    endpoint = StreamEndpoint(side, host, port, handler, tls=tls, limits=limits)
    await endpoint.start()
    return endpoint
