"""Fixtures for the store tests: a real redis-server on a free port (killed after) and both backends."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipfilter.stores.embedded import EmbeddedStore
from sipfilter.stores.redis_store import RedisStore
from sipfilter.stores.writable import WritableStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server child process with AOF on, so a kill/restart keeps the data like production should."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port(), tmp_path / "redis")
    server.dir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(params=["embedded", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[WritableStore]:
    s: WritableStore
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        s = await RedisStore.open(server.url, watch=False)
    else:
        s = await EmbeddedStore.open(tmp_path / "data", watch=False)
    try:
        yield s
    finally:
        await s.close()


OpenOther = Callable[[], Awaitable[WritableStore]]


@pytest.fixture
async def open_other(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[OpenOther]:
    """Opens more handles on the same storage (other processes / instances), all closed after the test."""
    opened: list[WritableStore] = []

    async def make() -> WritableStore:
        s: WritableStore
        if backend == "redis":
            s = await RedisStore.open(request.getfixturevalue("redis_server").url, watch=False)
        else:
            s = await EmbeddedStore.open(tmp_path / "data", watch=False)
        opened.append(s)
        return s

    try:
        yield make
    finally:
        for s in opened:
            await s.close()
