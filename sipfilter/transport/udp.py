"""UDP endpoint: one datagram socket, each datagram handed to the handler as bytes.

Never parses and never blocks: sendto errors (ICMP unreachable, full buffers) are logged at debug and dropped.

Wake-ups are coalesced under load. An event-loop wake-up costs the process a context switch, the loop's own
iteration and, when the answers go out one by one, a wake-up of the peer for each datagram sent; under load
that is a large share of a call's CPU. So the socket is read the first time it becomes readable
(no added latency when traffic is light), then, while traffic keeps coming, on a tick of `poll_interval`
seconds (every datagram that arrived meanwhile in one pass), and watched again as soon as a tick finds it
empty. A datagram waits at most one tick (1 ms): nothing next to SIP's T1 (500 ms). The endpoints of a
`UdpGroup` (all of a process's) share that tick, and what they send while one is read leaves at the end
of the pass, in order: a peer is woken once for the burst rather than once per datagram, and the kernel
does not switch to it in the middle of the pass.

The tick is off by default (`poll_interval` 0: each readable event is read at once, up to MAX_BATCH
datagrams a pass, the pass's answers still leaving together): measured with bench/e2e.py, a 1 ms tick cost
slightly more CPU a call and a higher INVITE p99 (docs/performance.md). `SIPFILTER_UDP_TICK_MS` turns it on
to compare again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections import deque
from collections.abc import Callable

from sipfilter.transport.base import Addr, Endpoint, Handler

log = logging.getLogger(__name__)

# Socket buffers asked for (the kernel caps them at net.core.rmem_max / wmem_max): the default ~200 KB holds
# ~300 datagrams, i.e. a few hundred ms at 1,000 calls/s; a GC or disk pause longer than that dropped
# datagrams, and every drop is a retransmission, or a failed call once Timer B runs out.
SOCKET_BUFFER_BYTES = 4 << 20
# Reading on a tick while traffic lasts (see the module docstring); 0 (default) = read each readable event.
POLL_INTERVAL_S = 0.0
MAX_BATCH = 64  # datagrams per pass: then the loop gets a turn (timers, the other side) and the answers leave
RECV_BYTES = 65536  # above the largest UDP payload (65,507): a datagram is never truncated


class UdpGroup:
    """The UDP endpoints of one process, read on one tick and sending in bursts.

    An endpoint is watched (woken by its first datagram) until it sees traffic; then it joins `polling`
    and the group reads every polling endpoint on one timer (a single wake-up per tick for both sides),
    dropping back to watching an endpoint as soon as a tick finds it empty. Datagrams sent while the
    group reads a pass wait in `queue` and leave, in order, at the end of the pass."""

    def __init__(self, poll_interval: float = POLL_INTERVAL_S) -> None:
        self.poll_interval = poll_interval  # 0: no tick, every readable event is read on its own wake-up
        self.depth = 0  # read passes under way (a handler never reads a socket itself: 0 or 1)
        self.queue: list[tuple[UdpEndpoint, bytes, Addr]] = []
        self.polling: list[UdpEndpoint] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def readable(self, ep: UdpEndpoint) -> None:
        """`ep`'s socket woke the loop: read it now, then on the tick while its traffic lasts."""
        n = self._pass([ep])[0]
        if ep.closed or (self.poll_interval <= 0 and n < MAX_BATCH):
            return
        ep._unwatch()
        self.polling.append(ep)
        self._arm(0 if n >= MAX_BATCH else self.poll_interval)

    def _tick(self) -> None:
        self._timer = None
        eps = list(self.polling)
        try:
            counts = self._pass(eps)
        except Exception:  # never leave an endpoint neither watched nor polled
            log.exception("udp read pass failed")
            counts = [1] * len(eps)
        ticking = self.poll_interval > 0
        still: list[UdpEndpoint] = []
        for ep, n in zip(eps, counts, strict=True):
            if ep.closed:
                continue
            if n >= MAX_BATCH or (n and ticking):
                still.append(ep)
            else:  # quiet: back to waking up on its first datagram (level-triggered: none is missed)
                ep._watch()
        self.polling = still
        if still:
            full = any(n >= MAX_BATCH for n in counts)
            self._arm(0 if full or not ticking else self.poll_interval)

    def _pass(self, eps: list[UdpEndpoint]) -> list[int]:
        self.depth += 1
        try:
            return [0 if ep.closed else ep._read_pass() for ep in eps]
        finally:
            self.depth -= 1
            if not self.depth and self.queue:
                self.flush()

    def deliver(self, items: list[tuple[UdpEndpoint, bytes, Addr]]) -> None:
        """Datagrams another worker read on these endpoints' sockets: handled as if read here, in one pass
        (their answers leave together at its end)."""
        self.depth += 1
        try:
            for ep, data, addr in items:
                if ep.closed:
                    continue
                try:
                    ep._handler.on_datagram(ep, data, addr)
                except Exception:
                    log.exception("unhandled error on a %s datagram from %s", ep.side, addr)
        finally:
            self.depth -= 1
            if not self.depth and self.queue:
                self.flush()

    def _arm(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self._timer is not None:
            if self._timer_at <= when:
                return  # the tick already armed comes first
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._tick)

    def flush(self) -> None:
        queue, self.queue = self.queue, []
        for ep, data, addr in queue:
            try:
                if ep._pending or ep.closed:
                    ep._send_now(data, addr)
                else:
                    ep._sendto(data, addr)  # the common case, without a call per datagram
            except (BlockingIOError, InterruptedError):
                ep._send_now(data, addr)  # socket buffer full: queued in order on the endpoint
            except OSError as exc:
                log.debug("udp %s: %s", ep.side, exc)
            except Exception:  # never lose the rest of the burst (nor the polling) to one
                log.exception("udp %s: sending to %s failed", ep.side, addr)

    def forget(self, ep: UdpEndpoint) -> None:
        if ep in self.polling:
            self.polling.remove(ep)
        if not self.polling and self._timer is not None:
            self._timer.cancel()
            self._timer = None


class UdpEndpoint(Endpoint):
    def __init__(self, side: str, host: str, port: int, handler: Handler, sock: socket.socket,
                 group: UdpGroup) -> None:  # fmt: skip
        Endpoint.__init__(self, side, host, port)
        self._handler = handler
        self.socket = sock
        self._fd = sock.fileno()
        self._recvfrom_into = sock.recvfrom_into
        # One receive buffer, each datagram copied out at its size: recvfrom(65536) would malloc 64 KiB per
        # datagram and shrink it, and glibc trimming and regrowing its heap for that cost page faults.
        self._buf = memoryview(bytearray(RECV_BYTES))
        self._sendto = sock.sendto
        self._loop = asyncio.get_running_loop()
        self.group = group
        self._pending: deque[tuple[bytes, Addr]] = deque()  # sends that met a full socket buffer, in order
        self._numeric: set[Addr] = set()  # destinations checked to need no DNS lookup
        self.closed = False
        self.port = int(sock.getsockname()[1])
        # Several workers reading one socket (sipfilter/workers): True when `route` handed the datagram over
        # to the worker that owns it, which answers from its own copy of this socket.
        self.route: Callable[[UdpEndpoint, bytes, Addr], bool] | None = None
        self._watch()

    # -- receiving -----------------------------------------------------------------------------------

    def _watch(self) -> None:
        self._loop.add_reader(self._fd, self.group.readable, self)

    def _unwatch(self) -> None:
        self._loop.remove_reader(self._fd)

    @property
    def polling(self) -> bool:
        """Read on the group's tick (traffic) rather than woken by each datagram."""
        return self in self.group.polling

    def _read_pass(self) -> int:
        """Hand every waiting datagram (up to MAX_BATCH) to the handler; how many were read."""
        recvfrom_into = self._recvfrom_into
        buf = self._buf
        handler = self._handler
        for n in range(MAX_BATCH):
            try:
                size, addr = recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return n
            except OSError as exc:  # an ICMP error reported on the socket: consumed by this read
                log.debug("udp %s: %s", self.side, exc)
                continue
            data = buf[:size].tobytes()
            if len(addr) != 2:
                addr = (addr[0], addr[1])  # IPv6: (host, port, flowinfo, scope_id)
            route = self.route
            if route is not None and route(self, data, addr):
                continue
            try:
                handler.on_datagram(self, data, addr)
            except Exception:  # the handler must not raise; if it does, keep the socket serving
                log.exception("unhandled error on a %s datagram from %s", self.side, addr)
            if self.closed:
                return n + 1
        return MAX_BATCH

    # -- sending -------------------------------------------------------------------------------------

    def send(self, data: bytes, addr: Addr) -> None:
        if self.closed or not data:
            return
        if addr not in self._numeric:
            self._check_numeric(addr)
        group = self.group
        if group.depth:  # during a read pass: leaves with the rest of the burst at its end
            group.queue.append((self, data, addr))
            return
        self._send_now(data, addr)

    def _send_now(self, data: bytes, addr: Addr) -> None:
        if self.closed:
            return
        if self._pending:
            self._pending.append((data, addr))
            return
        try:
            self._sendto(data, addr)
        except (BlockingIOError, InterruptedError):  # socket buffer full: send when writable, in order
            self._pending.append((data, addr))
            self._loop.add_writer(self._fd, self._flush)
        except OSError as exc:
            log.debug("udp %s: %s", self.side, exc)

    def _check_numeric(self, addr: Addr) -> None:
        """A host name would make sendto() block on a DNS lookup: refused, as uvloop refuses it."""
        try:
            ipaddress.ip_address(addr[0])
        except ValueError:
            raise ValueError(f"{addr!r}: a DNS lookup is required") from None
        if len(self._numeric) > 4096:  # bounded: destinations come from configuration and Via headers
            self._numeric.clear()
        self._numeric.add((addr[0], addr[1]))

    def _flush(self) -> None:
        while self._pending:
            data, addr = self._pending[0]
            try:
                self._sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return  # still full: the writer callback stays armed
            except OSError as exc:
                log.debug("udp %s: %s", self.side, exc)
            self._pending.popleft()
        self._loop.remove_writer(self._fd)

    @property
    def buffered(self) -> int:
        """Datagrams waiting for room in the socket's send buffer."""
        return len(self._pending)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.group.forget(self)
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._pending.clear()
        self.socket.close()


def bind_udp_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound on host:port (0 = any free port), with enlarged buffers. With
    `reuse_port`, one of a SO_REUSEPORT group, whose sockets worker processes read one each: the group's
    steering program (sipfilter/workers/steering.py), or else a hash of the peer's address, picks the
    socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def open_udp_endpoint(side: str, host: str, port: int, handler: Handler, group: UdpGroup | None = None,
                            sock: socket.socket | None = None) -> UdpEndpoint:  # fmt: skip
    """Bind a UDP socket on host:port (0 = any free port), or use `sock` (bound by the worker supervisor),
    and start delivering datagrams. Endpoints of one `group` are read on one tick and send in one burst;
    without one, the endpoint has its own."""
    if sock is None:
        sock = bind_udp_socket(host, port)
    return UdpEndpoint(side, host, port, handler, sock, group or UdpGroup())
