"""Fixtures for the store tests: a real redis-server on a free port (killed after) and both backends."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, free_port

from sipfilter.stores.embedded import EmbeddedStore
from sipfilter.stores.redis_store import RedisStore
from sipfilter.stores.writable import WritableStore


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
