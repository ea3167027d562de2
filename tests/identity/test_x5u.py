"""The x5u cache and its HTTPS fetcher, against a real local HTTPS server (tests/identity/sti_pki.py)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from sti_pki import StiPki, X5uServer, make_pki

from sipfilter.identity.x5u import X5uCache, https_fetcher


@pytest.fixture(scope="module")
def pki() -> StiPki:
    return make_pki()


@pytest.fixture
def server(tmp_path: Path, pki: StiPki) -> Iterator[X5uServer]:
    srv = X5uServer(tmp_path / "web", {"sti/leaf.pem": pki.chain_pem}).start()
    try:
        yield srv
    finally:
        srv.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _cache(server: X5uServer, clock: Clock | None = None, *, timeout_s: float = 2.0, **kw: float) -> X5uCache:
    context = ssl.create_default_context(cafile=str(server.ca_file))
    return X5uCache(
        https_fetcher(timeout_s, context),
        ttl_s=kw.get("ttl_s", 100),
        clock=clock or Clock(),
        failure_ttl_s=kw.get("failure_ttl_s", 10),
        max_entries=int(kw.get("max_entries", 1000)),
    )


async def test_first_use_fetches_once_for_every_waiting_call(server: X5uServer, pki: StiPki) -> None:
    clock = Clock()
    cache = _cache(server, clock)
    url = server.url("sti/leaf.pem")
    assert cache.get(url, clock.now) is None  # never seen: the caller must wait for a fetch
    results: list[str] = []
    cache.on_fetch = results.append
    first, second = cache.fetch(url), cache.fetch(url)
    assert first is second  # one fetch in flight per URL, shared
    doc = await first
    assert doc.error == "" and list(doc.certs) == [pki.leaf, pki.inter]
    assert server.hits == {"sti/leaf.pem": 1} and results == ["ok"]
    # From now on answered from memory, no network round trip.
    for _ in range(5):
        assert cache.get(url, clock.now) is doc
    assert server.hits == {"sti/leaf.pem": 1}


async def test_stale_entries_serve_while_a_background_refresh_runs(server: X5uServer) -> None:
    clock = Clock()
    cache = _cache(server, clock, ttl_s=100)
    url = server.url("sti/leaf.pem")
    doc = await cache.fetch(url)
    assert (doc.fresh_until, doc.usable_until) == (1_100.0, 1_200.0)
    clock.now = 1_150.0  # stale: still served at once, refreshed behind
    assert cache.get(url, clock.now) is doc
    refreshed = await cache.fetch(url)  # the refresh already running
    assert refreshed is not doc and refreshed.fetched_at == 1_150.0
    assert server.hits["sti/leaf.pem"] == 2
    assert cache.get(url, clock.now) is refreshed
    clock.now = 1_150.0 + 201  # unused past usable_until: gone, the next call waits for a fetch
    assert cache.get(url, clock.now) is None


async def test_a_failed_refresh_keeps_the_certificates_in_use(server: X5uServer) -> None:
    clock = Clock()
    cache = _cache(server, clock, ttl_s=100)
    url = server.url("sti/leaf.pem")
    doc = await cache.fetch(url)
    server.status["sti/leaf.pem"] = 503
    clock.now = 1_120.0
    assert cache.get(url, clock.now) is doc
    failed = await cache.fetch(url)
    assert failed.error == "cannot fetch x5u " + url + ": HTTP 503"
    assert cache.get(url, clock.now) is doc  # still the good copy, until its usable_until


@pytest.mark.parametrize(
    ("path", "status", "why"),
    [
        ("missing.pem", 0, "HTTP 404"),
        ("down.pem", 500, "HTTP 500"),
        ("moved.pem", 302, "HTTP 302"),
        ("junk.pem", 0, "not a certificate"),
        ("huge.pem", 0, "larger than"),
    ],
)
async def test_documents_that_cannot_be_had(server: X5uServer, path: str, status: int, why: str) -> None:
    server.documents["down.pem"] = server.documents["moved.pem"] = server.documents["sti/leaf.pem"]
    server.documents["junk.pem"] = b"<html>hello</html>"
    server.documents["huge.pem"] = b"x" * 70_000
    if status:
        server.status[path] = status
    clock = Clock()
    cache = _cache(server, clock, failure_ttl_s=10)
    doc = await cache.fetch(server.url(path))
    assert doc.certs == () and why in doc.error
    # Remembered for failure_ttl_s: calls in that window are answered at once, without a new fetch.
    assert cache.get(server.url(path), clock.now + 9) is doc
    assert cache.get(server.url(path), clock.now + 10) is None


async def test_timeout_is_bounded(server: X5uServer) -> None:
    server.delay_s = 1.0
    cache = _cache(server, timeout_s=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    doc = await cache.fetch(server.url("sti/leaf.pem"))
    assert loop.time() - started < 0.9
    assert "no answer in time" in doc.error


async def test_https_only_and_the_web_server_must_be_trusted(server: X5uServer) -> None:
    cache = _cache(server)
    plain = await cache.fetch(server.url("sti/leaf.pem").replace("https://", "http://"))
    assert "not an https URL" in plain.error and server.hits == {}
    untrusting = X5uCache(https_fetcher(2.0, None), ttl_s=100, failure_ttl_s=10)  # the system's CAs only
    doc = await untrusting.fetch(server.url("sti/leaf.pem"))
    assert doc.certs == () and "certificate" in doc.error.lower()


async def test_bounded_number_of_urls(server: X5uServer, pki: StiPki) -> None:
    for n in range(3):
        server.documents[f"{n}.pem"] = pki.chain_pem
    clock = Clock()
    cache = _cache(server, clock, max_entries=2)
    for n in range(3):
        await cache.fetch(server.url(f"{n}.pem"))
    assert len(cache) == 2
    assert cache.get(server.url("0.pem"), clock.now) is None  # least recently used: dropped
    assert cache.get(server.url("2.pem"), clock.now) is not None


async def test_reload_keeps_the_documents(server: X5uServer) -> None:
    clock = Clock()
    old = _cache(server, clock)
    doc = await old.fetch(server.url("sti/leaf.pem"))
    new = _cache(server, clock)
    new.adopt(old)
    assert new.get(server.url("sti/leaf.pem"), clock.now) is doc
