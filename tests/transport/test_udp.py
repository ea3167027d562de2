"""UDP endpoint: datagrams reach the handler, and the socket buffers are enlarged (as far as the kernel
lets an unprivileged process) so that a pause of the event loop does not drop datagrams."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from sipfilter.transport import udp
from sipfilter.transport.udp import SOCKET_BUFFER_BYTES, UdpEndpoint, open_udp_endpoint


class _Handler:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int]]] = []
        self.fail_on: bytes | None = None

    def on_datagram(self, endpoint: Any, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append((data, addr))
        if data == self.fail_on:
            raise RuntimeError("handler bug")

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
        sock = ep.socket
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


async def _until(cond: Any, what: str) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


async def test_bursts_are_read_on_ticks_then_the_socket_is_watched_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under traffic the socket is read on a tick (one wake-up for many datagrams), every datagram in order
    and none lost across the switches; once a tick finds nothing it is watched again."""
    monkeypatch.setattr(udp, "MAX_BATCH", 8)  # a burst longer than one pass, small enough for any rmem
    handler = _Handler()
    # A long tick, so that the test sees the polling state whatever the machine's speed.
    ep = await open_udp_endpoint("inside", "127.0.0.1", 0, handler, udp.UdpGroup(0.3))  # type: ignore[arg-type]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"first", ("127.0.0.1", ep.port))
        await _until(lambda: handler.got, "the first datagram")
        assert ep.polling  # traffic seen: the next datagrams wait for the tick
        # More than one pass can take, sent while no read can happen (this coroutine holds the loop).
        count = 3 * udp.MAX_BATCH + 5
        for i in range(count):
            sender.sendto(b"n%d" % i, ("127.0.0.1", ep.port))
        await _until(lambda: len(handler.got) == count + 1, "the burst")
        assert [d for d, _ in handler.got[1:]] == [b"n%d" % i for i in range(count)]
        assert {a for _, a in handler.got} == {("127.0.0.1", sender.getsockname()[1])}
        await _until(lambda: not ep.polling, "the quiet tick")
        sender.sendto(b"after", ("127.0.0.1", ep.port))  # watched again: read at once
        await _until(lambda: handler.got[-1][0] == b"after", "a datagram after the quiet tick")
    finally:
        sender.close()
        await ep.close()
    assert not ep.polling


async def test_without_ticks_every_datagram_wakes_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tick 0: datagrams are read when the socket wakes the loop; a full pass is continued at once, and the
    socket watched again after (no polling loop)."""
    monkeypatch.setattr(udp, "MAX_BATCH", 4)
    handler = _Handler()
    ep = await open_udp_endpoint("inside", "127.0.0.1", 0, handler, udp.UdpGroup(0))  # type: ignore[arg-type]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(3):
            sender.sendto(b"d%d" % i, ("127.0.0.1", ep.port))
        await _until(lambda: len(handler.got) == 3, "three datagrams")
        assert not ep.polling
        for i in range(10):  # more than a pass: sent while the loop cannot read
            sender.sendto(b"e%d" % i, ("127.0.0.1", ep.port))
        await _until(lambda: len(handler.got) == 13, "ten more")
        await _until(lambda: not ep.polling, "the socket watched again")
        assert ep.group._timer is None
    finally:
        sender.close()
        await ep.close()


async def test_a_handler_error_does_not_stop_the_socket(caplog: pytest.LogCaptureFixture) -> None:
    handler = _Handler()
    handler.fail_on = b"bad"
    ep = await open_udp_endpoint("inside", "127.0.0.1", 0, handler)  # type: ignore[arg-type]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for data in (b"bad", b"good"):
            sender.sendto(data, ("127.0.0.1", ep.port))
        await _until(lambda: len(handler.got) == 2, "both datagrams")
    finally:
        sender.close()
        await ep.close()
    assert "unhandled error on a inside datagram" in caplog.text


def _fill_send_buffer(ep: Any, sends: int) -> None:
    """The next `sends` sendto() calls of `ep` find the socket buffer full (EAGAIN); later ones go out."""
    real = ep._sendto
    full = {"left": sends}

    def sendto(data: bytes, addr: Any) -> int:
        if full["left"]:
            full["left"] -= 1
            raise BlockingIOError
        return real(data, addr)

    ep._sendto = sendto


async def test_send_keeps_order_when_the_buffer_is_full_and_refuses_host_names() -> None:
    handler, peer_handler = _Handler(), _Handler()
    ep = await open_udp_endpoint("outside", "127.0.0.1", 0, handler)  # type: ignore[arg-type]
    peer = await open_udp_endpoint("outside", "127.0.0.1", 0, peer_handler)  # type: ignore[arg-type]
    try:
        dest = ("127.0.0.1", peer.port)
        _fill_send_buffer(ep, 1)
        for data in (b"one", b"two", b"three"):
            ep.send(data, dest)
        assert ep.buffered == 3  # the first met a full buffer; the others queue behind it
        await _until(lambda: len(peer_handler.got) == 3, "the queued datagrams")
        assert [d for d, _ in peer_handler.got] == [b"one", b"two", b"three"]
        assert ep.buffered == 0
        with pytest.raises(ValueError, match="DNS lookup"):
            ep.send(b"x", ("carrier.example.com", 5060))
        ep.send(b"", dest)  # nothing to send: no empty datagram
    finally:
        await ep.close()
        await peer.close()
    ep.send(b"after close", dest)  # ignored, never raises


async def test_ipv6_sources_are_host_and_port() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    handler = _Handler()
    try:
        ep = await open_udp_endpoint("inside", "::1", 0, handler)  # type: ignore[arg-type]
    except OSError:
        pytest.skip("no IPv6 loopback")
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"v6", ("::1", ep.port))
        await _until(lambda: handler.got, "the datagram")
        assert handler.got[0][1] == ("::1", sender.getsockname()[1])
        ep.send(b"back", handler.got[0][1])
        sender.settimeout(5)
        assert sender.recvfrom(100)[0] == b"back"
    finally:
        sender.close()
        await ep.close()


async def test_large_and_small_datagrams_arrive_whole_through_the_shared_buffer() -> None:
    """One receive buffer serves every datagram: each is copied out at its own size, never truncated
    nor left holding bytes of a previous one."""
    handler = _Handler()
    ep = await open_udp_endpoint("inside", "127.0.0.1", 0, handler)  # type: ignore[arg-type]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    big = bytes(range(256)) * 234  # 59,904 bytes: near the UDP maximum
    try:
        for data in (big, b"small", b""):
            sender.sendto(data, ("127.0.0.1", ep.port))
        await _until(lambda: len(handler.got) == 3, "three datagrams")
    finally:
        sender.close()
        await ep.close()
    assert [d for d, _ in handler.got] == [big, b"small", b""]
    assert all(type(d) is bytes for d, _ in handler.got)


class _Relay(_Handler):
    """Answers every datagram on `via` (another endpoint), as the B2BUA relays between its two sides."""

    def __init__(self, to: tuple[str, int]) -> None:
        super().__init__()
        self.via: UdpEndpoint | None = None
        self.to = to
        self.held_during_pass: list[int] = []

    def on_datagram(self, endpoint: Any, data: bytes, addr: tuple[str, int]) -> None:
        super().on_datagram(endpoint, data, addr)
        assert self.via is not None
        self.via.send(b"relayed " + data, self.to)
        self.held_during_pass.append(len(self.via.group.queue))


async def test_a_group_reads_on_one_tick_and_sends_a_pass_at_its_end_in_order() -> None:
    """Endpoints of one group: what a pass of one makes another send waits for the end of the pass, then
    leaves in the order it was sent; both sides with traffic are read on the one tick; without a pass (a
    timer), a send leaves at once."""
    group = udp.UdpGroup(0.3)
    peer_handler = _Handler()
    peer = await open_udp_endpoint("outside", "127.0.0.1", 0, peer_handler)  # type: ignore[arg-type]
    relay = _Relay(("127.0.0.1", peer.port))
    inside = await open_udp_endpoint("inside", "127.0.0.1", 0, relay, group)  # type: ignore[arg-type]
    back = _Handler()
    outside = await open_udp_endpoint("outside", "127.0.0.1", 0, back, group)  # type: ignore[arg-type]
    relay.via = outside
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"first", ("127.0.0.1", inside.port))
        sender.sendto(b"answer", ("127.0.0.1", outside.port))
        await _until(lambda: peer_handler.got and back.got, "the first datagrams")
        assert inside.polling and outside.polling  # both on the group's one tick
        for i in range(5):  # read in one pass at the next tick
            sender.sendto(b"n%d" % i, ("127.0.0.1", inside.port))
        await _until(lambda: len(peer_handler.got) == 6, "the relayed burst")
        assert [d for d, _ in peer_handler.got] == [b"relayed first"] + [b"relayed n%d" % i for i in range(5)]
        assert relay.held_during_pass == [1, 1, 2, 3, 4, 5]  # held until the pass ended
        assert not group.queue and not group.depth
        outside.send(b"from a timer", ("127.0.0.1", peer.port))  # no pass: sent at once
        assert not group.queue
        await _until(lambda: len(peer_handler.got) == 7, "the direct send")
        await _until(lambda: not group.polling, "both sides quiet")
        await inside.close()
        sender.sendto(b"late", ("127.0.0.1", outside.port))  # the other side still serves
        await _until(lambda: len(back.got) == 2, "a datagram after the first side closed")
    finally:
        sender.close()
        for ep in (inside, outside, peer):
            await ep.close()
    assert group._timer is None


async def test_a_burst_meeting_a_full_buffer_keeps_its_order() -> None:
    """A pass's burst that fills the socket buffer: the rest waits on the endpoint and leaves in order."""
    group = udp.UdpGroup()
    peer_handler = _Handler()
    peer = await open_udp_endpoint("outside", "127.0.0.1", 0, peer_handler)  # type: ignore[arg-type]
    ep = await open_udp_endpoint("outside", "127.0.0.1", 0, _Handler(), group)  # type: ignore[arg-type]
    _fill_send_buffer(ep, 2)
    try:
        dest = ("127.0.0.1", peer.port)
        group.depth += 1  # as during a read pass
        for data in (b"one", b"two", b"three"):
            ep.send(data, dest)
        assert len(group.queue) == 3 and not peer_handler.got
        group.depth -= 1
        group.flush()
        assert ep.buffered == 3  # the first met a full buffer (twice): the others wait behind it
        await _until(lambda: len(peer_handler.got) == 3, "the burst")
        assert [d for d, _ in peer_handler.got] == [b"one", b"two", b"three"]
    finally:
        await ep.close()
        await peer.close()
