"""UDP endpoint: one datagram socket, each datagram handed to the handler as bytes.

Never parses and never blocks: sendto errors (ICMP unreachable, full buffers) are logged at debug and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from sipfilter.transport.base import Addr, Endpoint, Handler

log = logging.getLogger(__name__)


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
