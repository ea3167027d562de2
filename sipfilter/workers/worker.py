"""One worker's side of `sip.workers`: what the supervisor gave it, and the hand-over of datagrams it read but
does not own (routing.py) to their owner, over the owner's local datagram socket (its inbox)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, generate_latest

from sipfilter import metrics
from sipfilter.b2bua.wire import via_prefix
from sipfilter.transport.base import Addr
from sipfilter.transport.udp import MAX_BATCH, RECV_BYTES, UdpEndpoint
from sipfilter.workers import routing, steering

log = logging.getLogger(__name__)

# A handed-over datagram: listener position, source port, source host length, then the host and the bytes.
_HEADER = struct.Struct("!HHB")
INBOX_BUFFER_BYTES = 4 << 20


@dataclass
class WorkerContext:
    """Given by the supervisor to worker `index` of `count`."""

    index: int
    count: int
    udp_sockets: list[socket.socket]  # its own socket on each listening address (sip.inside, then outside)
    inboxes: list[socket.socket]  # the sending end of each worker's inbox
    inbox: socket.socket  # this worker's receiving end
    runtime_dir: Path  # the workers' metrics sockets
    restarts: mmap.mmap  # 8 bytes per worker: how many times the supervisor restarted it

    def metrics_socket(self, index: int) -> Path:
        return self.runtime_dir / f"metrics-{index}.sock"

    def restart_count(self, index: int) -> int:
        return int.from_bytes(self.restarts[8 * index : 8 * index + 8], "little")


class Router:
    """Hands each datagram to its owner, and delivers those the other workers hand over.

    Where the kernel steers (steering.py), each datagram is read on its owner's socket but the few the
    program cannot read, and the B2BUA's check of the parsed message (`parsed`, routing.message_owner) hands
    those over: nothing is scanned twice. Without steering, `route` reads the owner from the raw bytes first,
    so that a worker does not parse the half of the traffic that is another's."""

    def __init__(self, context: WorkerContext, endpoints: list[UdpEndpoint]) -> None:
        self.context = context
        self.index = context.index
        self.count = context.count
        self.endpoints = endpoints
        self._position = {id(ep): n for n, ep in enumerate(endpoints)}
        # Registered here, not at import: a single process exports no worker series.
        handed_over = Counter("sipfilter_worker_handovers", "Datagrams this worker read and handed over to"
                              " their owner, found from the raw bytes (read=bytes: no kernel steering) or"
                              " from the parsed message (read=parsed)", ["read"],
                              registry=metrics.REGISTRY)  # fmt: skip
        self._by_bytes = handed_over.labels(read="bytes")
        self._by_parsed = handed_over.labels(read="parsed")
        self.dropped = Counter("sipfilter_worker_handover_drops", "Datagrams lost handing them over: the "
                               "owner's inbox was full (as if lost on the wire: retransmitted)",
                               registry=metrics.REGISTRY)  # fmt: skip
        self.parsed = routing.ParsedRouter(self.index, self.count, self._hand_over_parsed)
        self._buf = bytearray(RECV_BYTES + 512)
        self._loop = asyncio.get_running_loop()
        context.inbox.setblocking(False)
        self._loop.add_reader(context.inbox.fileno(), self._read_inbox)
        for ep in endpoints:
            ep.route = None if steer(ep, self.count) else self.route

    def route(self, ep: UdpEndpoint, data: bytes, addr: Addr) -> bool:
        """True when `data` belongs to another worker and was handed over (or dropped trying)."""
        owner = routing.owner(data, self.count)
        if owner is None or owner == self.index:
            return False
        self._hand_over(ep, data, addr, owner, self._by_bytes)
        return True

    def _hand_over_parsed(self, ep: object, data: bytes, addr: Addr, owner: int) -> bool:
        if not isinstance(ep, UdpEndpoint):  # workers listen on UDP only (config check): never the case
            return False
        self._hand_over(ep, data, addr, owner, self._by_parsed)
        return True

    def _hand_over(self, ep: UdpEndpoint, data: bytes, addr: Addr, owner: int, counted: Counter) -> None:
        host = addr[0].encode()
        message = _HEADER.pack(self._position[id(ep)], addr[1], len(host)) + host + data
        try:
            self.context.inboxes[owner].send(message)
            counted.inc()
        except OSError as exc:  # full (the owner is stalled or restarting): as if lost on the wire
            self.dropped.inc()
            log.debug("hand-over to worker %d: %s", owner, exc)

    def _read_inbox(self) -> None:
        items: list[tuple[UdpEndpoint, bytes, Addr]] = []
        recv_into = self.context.inbox.recv_into
        buf = self._buf
        view = memoryview(buf)
        for _ in range(MAX_BATCH):
            try:
                size = recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("worker inbox: %s", exc)
                break
            if size < _HEADER.size:
                continue
            position, port, host_len = _HEADER.unpack_from(buf)
            start = _HEADER.size + host_len
            if position >= len(self.endpoints) or size < start:
                continue
            host = bytes(view[_HEADER.size : start]).decode("ascii", "replace")
            items.append((self.endpoints[position], view[start:size].tobytes(), (host, port)))
        if items:
            self.endpoints[0].group.deliver(items)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.context.inbox.fileno())


def steer(ep: UdpEndpoint, workers: int) -> bool:
    """Have the kernel put each datagram on its owner's socket of `ep`'s address where it can tell
    (steering.py); True when it does. Every worker attaches the same program to the group, a restarted one
    included: the last one stands."""
    try:
        steering.attach(ep.socket, steering.program(workers, via_prefix("udp", ep.hostport).encode()))
    except OSError as exc:
        log.warning("udp %s: no kernel steering (%s): the workers hand over what they read for another",
                    ep.side, exc)  # fmt: skip
        return False
    return True


async def serve_metrics(context: WorkerContext) -> asyncio.AbstractServer:
    """Worker `index` > 0: its registry's exposition to whoever connects (worker 0's /metrics)."""
    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(generate_latest(metrics.REGISTRY))
            await writer.drain()
        finally:
            writer.close()

    path = context.metrics_socket(context.index)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by the worker this one replaces
    return await asyncio.start_unix_server(answer, path=str(path))
