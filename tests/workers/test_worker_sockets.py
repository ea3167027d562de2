"""Each worker's own socket on every listening address (SO_REUSEPORT); an address already in use refused."""

from __future__ import annotations

import contextlib
import select
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_config_workers import example

from sipfilter.config import Config
from sipfilter.configure import load_config
from sipfilter.transport.udp import bind_udp_socket
from sipfilter.workers.supervisor import Supervisor


def config_on(tmp_path: Path, inside: int, outside: int, workers: int = 2) -> Config:
    path = example(tmp_path, str(workers))
    text = path.read_text()
    text = text.replace("host: 127.0.0.1, port: 5060 }", f"host: 127.0.0.1, port: {inside} }}")
    text = text.replace("host: 127.0.0.1, port: 5080 }", f"host: 127.0.0.1, port: {outside} }}")
    path.write_text(text)
    return load_config(path)


@contextlib.contextmanager
def supervisor_on(config: Config) -> Iterator[Supervisor]:
    supervisor = Supervisor(config, lambda *_: 0)
    try:
        yield supervisor
    finally:
        for sockets in supervisor.udp_sockets:
            for sock in sockets or ():
                sock.close()
        for pair in supervisor.inbox_pairs:
            for end in pair:
                end.close()
        shutil.rmtree(supervisor.runtime_dir, ignore_errors=True)


def test_every_worker_has_its_own_socket_on_every_address(tmp_path: Path) -> None:
    with supervisor_on(config_on(tmp_path, 0, 0, workers=3)) as supervisor:
        ports = [port for _host, port in supervisor.addresses]
        assert len(ports) == 2 and all(ports) and ports[0] != ports[1]
        fds: set[int] = set()
        for sockets in supervisor.udp_sockets:
            assert sockets is not None
            assert [s.getsockname()[1] for s in sockets] == ports
            assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets)
            fds.update(s.fileno() for s in sockets)
        assert len(fds) == 6


def test_the_kernel_gives_each_datagram_to_one_worker(tmp_path: Path) -> None:
    # The premise of the design: each peer's datagrams reach one worker's socket, and different peers are
    # spread over the workers (before, every worker woke for every datagram on one shared socket).
    with supervisor_on(config_on(tmp_path, 0, 0)) as supervisor:
        inside = [sockets[0] for sockets in supervisor.udp_sockets if sockets is not None]
        address = ("127.0.0.1", supervisor.addresses[0][1])
        peers = [bind_udp_socket("127.0.0.1", 0) for _ in range(32)]
        try:
            for n, peer in enumerate(peers):
                for k in range(3):
                    peer.sendto(f"{n}.{k}".encode(), address)
            received: list[list[str]] = [[] for _ in inside]
            while select.select(inside, [], [], 0.5)[0]:
                for index, sock in enumerate(inside):
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            received[index].append(sock.recv(100).decode())
        finally:
            for peer in peers:
                peer.close()
        every = sorted(m for got in received for m in got)
        assert every == sorted(f"{n}.{k}" for n in range(32) for k in range(3))  # each exactly once
        assert all(received), received  # 32 peers over 2 sockets: both get some
        for got in received:  # a peer's three datagrams went to one socket
            peers_here = {m.split(".")[0] for m in got}
            assert len(got) == 3 * len(peers_here)


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "another-sipfilter's-worker"])
def test_an_address_in_use_is_refused(tmp_path: Path, reuse_port: bool) -> None:
    # Without the check, a second sipfilter on the same address would join the SO_REUSEPORT group and take a
    # share of the traffic.
    taken = bind_udp_socket("127.0.0.1", 0, reuse_port=reuse_port)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            Supervisor(config_on(tmp_path, port, 0), lambda *_: 0)
    finally:
        taken.close()
