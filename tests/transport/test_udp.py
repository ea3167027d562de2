"""UDP endpoint: datagrams reach the handler, and the socket buffers are enlarged (as far as the kernel
lets an unprivileged process) so that a pause of the event loop does not drop datagrams."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from sipfilter.transport.udp import SOCKET_BUFFER_BYTES, open_udp_endpoint


class _Handler:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int]]] = []

    def on_datagram(self, endpoint: Any, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append((data, addr))

    def on_message(self, endpoint: Any, message: Any, addr: tuple[str, int]) -> None:
        raise AssertionError("UDP hands raw datagrams")


def _kernel_max(name: str) -> int:
    try:
        return int(Path(f"/proc/sys/net/core/{name}").read_text())
    except (OSError, ValueError):
        return 0


async def test_receives_and_enlarges_its_buffers() -> None:
    handler = _Handler()
    ep = await open_udp_endpoint("inside", "127.0.0.1", 0, handler)  # type: ignore[arg-type]
    try:
        sock = ep._sock.get_extra_info("socket")  # type: ignore[union-attr]
        for option, limit in ((socket.SO_RCVBUF, "rmem_max"), (socket.SO_SNDBUF, "wmem_max")):
            wanted = min(SOCKET_BUFFER_BYTES, _kernel_max(limit))
            # Linux reports twice what was set (bookkeeping overhead included).
            assert sock.getsockopt(socket.SOL_SOCKET, option) >= wanted
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sender.sendto(b"OPTIONS sip:x SIP/2.0\r\n\r\n", ("127.0.0.1", ep.port))
            for _ in range(200):
                if handler.got:
                    break
                await asyncio.sleep(0.01)
        finally:
            sender.close()
        assert handler.got and handler.got[0][0].startswith(b"OPTIONS")
    finally:
        await ep.close()
