"""Two workers' routers in one process, on real UDP sockets and inboxes: a datagram read by a worker that does
not own it reaches its owner, found from the raw bytes where the kernel does not steer, and from the parsed
message in any case (what the B2BUA asks of every message it parsed, through `route_parsed`)."""

from __future__ import annotations

import asyncio
import mmap
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sipfilter import metrics
from sipfilter.sip import parse
from sipfilter.transport.udp import UdpEndpoint, UdpGroup, bind_udp_socket
from sipfilter.workers import worker as worker_module
from sipfilter.workers.routing import number_owner
from sipfilter.workers.worker import Router, WorkerContext

WORKERS = 2


class _Parsing:
    """What the B2BUA does with a datagram: parse it, and ask the router's parsed check before acting."""

    def __init__(self) -> None:
        self.router: Router | None = None
        self.acted: list[bytes] = []

    def on_datagram(self, ep: Any, data: bytes, addr: tuple[str, int]) -> None:
        msg = parse(data)
        assert self.router is not None
        if self.router.parsed(ep, data, addr, msg):
            return
        self.acted.append(data)


def _options(uri: str, n: int, prefix: str = "") -> bytes:
    return (f"{prefix}OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-{n}\r\n"
            f"From: <sip:+33162000001@d>;tag=t{n}\r\nTo: <sip:x@y>\r\nCall-ID: c{n}\r\nCSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("kernel_steers", [True, False])
async def test_every_datagram_is_acted_on_by_its_owner_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           kernel_steers: bool) -> None:
    # Each worker on a socket of its own (not one SO_REUSEPORT group): every datagram is sent to worker 0's,
    # as a kernel that cannot steer it would.
    monkeypatch.setattr(worker_module, "steer", lambda ep, workers: kernel_steers)
    inboxes = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(WORKERS)]
    restarts = mmap.mmap(-1, 8 * WORKERS)
    handlers = [_Parsing() for _ in range(WORKERS)]
    endpoints: list[UdpEndpoint] = []
    routers: list[Router] = []
    try:
        for index in range(WORKERS):
            context = WorkerContext(index, WORKERS, [], [pair[1] for pair in inboxes], inboxes[index][0],
                                    tmp_path, restarts)  # fmt: skip
            ep = UdpEndpoint("inside", "127.0.0.1", 0, handlers[index], bind_udp_socket("127.0.0.1", 0),
                             UdpGroup())  # fmt: skip
            endpoints.append(ep)
            monkeypatch.setattr(metrics, "REGISTRY", CollectorRegistry())  # one per worker
            router = Router(context, [ep])
            handlers[index].router = router
            routers.append(router)
            assert (ep.route is None) == kernel_steers
        datagrams = {}
        for n in range(12):
            callee = f"+336123{n:05d}"
            # Even: a plain Request-URI. Odd: a CRLF before the start line, which the raw reading takes for an
            # empty start line and the parser skips.
            data = _options(f"sip:{callee}@h", n, "\r\n" if n % 2 else "")
            datagrams[data] = number_owner(callee, WORKERS)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for data in datagrams:
                sender.sendto(data, ("127.0.0.1", endpoints[0].port))
            for _ in range(300):
                if sum(len(h.acted) for h in handlers) >= len(datagrams):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # nothing acted on twice
        finally:
            sender.close()
        for index, handler in enumerate(handlers):
            owned = sorted(data for data, owner in datagrams.items() if owner == index)
            assert sorted(handler.acted) == owned, index
    finally:
        for router in routers:
            router.close()
        for ep in endpoints:
            await ep.close()
        for pair in inboxes:
            for s in pair:
                s.close()
