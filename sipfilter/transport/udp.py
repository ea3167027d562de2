"""UDP endpoint: one datagram socket, each datagram handed to the handler as bytes.

Never parses and never blocks: sendto errors (ICMP unreachable, full buffers) are logged at debug and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import cast

from sipfilter.transport.base import Addr, Endpoint, Handler

log = logging.getLogger(__name__)

# Socket buffers asked for (the kernel caps them at net.core.rmem_max / wmem_max): the default ~200 KB holds
# ~300 datagrams, i.e. a few hundred ms at 1,000 calls/s; a GC or disk pause longer than that dropped
# datagrams, and every drop is a retransmission, or a failed call once Timer B runs out.
SOCKET_BUFFER_BYTES = 4 << 20


class UdpEndpoint(Endpoint, asyncio.DatagramProtocol):
    transport = "udp"
    reliable = False

    def __init__(self, side: str, host: str, port: int, handler: Handler) -> None:
        Endpoint.__init__(self, side, host, port)
        self._handler = handler
        self._sock: asyncio.DatagramTransport | None = None

    # asyncio.DatagramProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sock = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        sockname = transport.get_extra_info("sockname")
        if sockname:
            self.port = int(sockname[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._handler.on_datagram(self, data, (addr[0], addr[1]))
        except Exception:  # the handler must not raise; if it does, keep the socket serving
            log.exception("unhandled error on a %s datagram from %s", self.side, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp %s: %s", self.side, exc)

    def send(self, data: bytes, addr: Addr) -> None:
        if self._sock is not None and not self._sock.is_closing():
            self._sock.sendto(data, addr)

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


async def open_udp_endpoint(side: str, host: str, port: int, handler: Handler) -> UdpEndpoint:
    """Bind a UDP socket on host:port (0 = any free port) and start delivering datagrams."""
    loop = asyncio.get_running_loop()
    endpoint = UdpEndpoint(side, host, port, handler)
    await loop.create_datagram_endpoint(lambda: endpoint, local_addr=(host, port))
    return endpoint
