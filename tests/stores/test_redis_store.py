"""Redis-specific behaviour: URL options, fast failure when Redis is absent, key prefixes, lost data."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from redis_server import RedisServer, free_port

from sipfilter.stores.base import ConsentRecord, StoreUnavailable
from sipfilter.stores.importer import SourceInfo
from sipfilter.stores.numberset import NumberSet
from sipfilter.stores.redis_store import RedisStore, _split_url

SRC = SourceInfo("x.txt", 1, "00" * 32)


def test_url_options_are_split_from_redis_py_ones() -> None:
    url, ours = _split_url("redis://h:1/0?prefix=a:&cluster=1&socket_timeout=0.5")
    tls = "rediss://u:p@h:1/2?ssl_cert_reqs=none"
    assert _split_url(tls) == (tls, {})
    assert url == "redis://h:1/0"
    assert ours == {"prefix": "a:", "cluster": "1", "socket_timeout": "0.5"}
    assert _split_url("unix:///run/redis.sock?db=2") == ("unix:///run/redis.sock?db=2", {})


async def test_open_fails_fast_without_redis() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await RedisStore.open(f"redis://127.0.0.1:{free_port()}/0", watch=False)
    assert time.monotonic() - started < 5  # generous: the point is no retry loop, not a timing claim


async def test_prefixes_isolate_deployments(redis_server: RedisServer) -> None:
    a = await RedisStore.open(redis_server.url + "?prefix=a:", watch=False)
    b = await RedisStore.open(redis_server.url + "?prefix=b:", watch=False)
    try:
        await a.put_list("dnc", NumberSet.from_numbers(["+33612345678"]), SRC)
        await a.record_refusal("acme", "+33612345678", 1.0)
        await b.refresh()
        assert b.list_names() == []
        assert await b.last_refusal("acme", "+33612345678") is None
    finally:
        await a.close()
        await b.close()


async def test_lists_survive_redis_losing_its_data(redis_server: RedisServer) -> None:
    s = await RedisStore.open(redis_server.url, watch=False)
    try:
        await s.put_list("dnc", NumberSet.from_numbers(["+33612345678"]), SRC)
        await s._redis.flushall()  # e.g. restarted without persistence
        await s.refresh()
        assert s.list_contains("dnc", "+33612345678")  # keeps the copy it has rather than dropping the list
    finally:
        await s.close()


async def test_errors_raise_store_unavailable_and_are_counted(redis_server: RedisServer) -> None:
    s = await RedisStore.open(redis_server.url, watch=False)
    try:
        redis_server.kill()
        for _ in range(3):
            with pytest.raises(StoreUnavailable):
                await s.check_and_record_attempt("a", "+33612345678", 1.0, 4, 10.0, 10.0)
        assert s.health.errors == 3 and s.health.incidents == 1 and not s.health.up
        redis_server.start()
        for _ in range(3):  # a pooled connection may still be the dead one: recovery within a few calls
            try:
                d = await s.check_and_record_attempt("a", "+33612345678", 1.0, 4, 10.0, 10.0)
                break
            except StoreUnavailable:
                continue
        assert d.allowed and s.health.up
    finally:
        await s.close()


async def test_unix_socket_url(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.02)
        s = await RedisStore.open(f"unix://{sock}?db=1", watch=False)
        try:
            await s.put_list("dnc", NumberSet.from_numbers(["+33612345678"]), SRC)
            assert s.list_contains("dnc", "+33612345678")
        finally:
            await s.close()
    finally:
        proc.kill()
        proc.wait(5)


def _cluster_ports(n: int) -> list[int]:
    """Free ports p whose cluster bus port p + 10000 is free too."""
    import random
    import socket

    ports: list[int] = []
    while len(ports) < n:
        p = random.randrange(20000, 50000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        ports.append(p)
    return ports


@pytest.mark.e2e
async def test_redis_cluster_through_the_url(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server/redis-cli not installed")
    ports = _cluster_ports(3)
    procs = []
    try:
        for p in ports:
            d = tmp_path / str(p)
            d.mkdir()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no", "--dir", str(d)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in ports:
            for _ in range(200):
                if subprocess.run(["redis-cli", "-p", str(p), "ping"], capture_output=True).returncode == 0:
                    break
                await asyncio.sleep(0.02)
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True,
                       timeout=30)
        stores = []
        for _ in range(50):  # the cluster needs a moment to agree on the slots
            try:
                stores = [await RedisStore.open(f"redis://127.0.0.1:{p}/0?cluster=1", watch=False)
                          for p in ports[:2]]
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        a, b = stores
        try:
            await a.put_list("dnc", NumberSet.from_numbers(["+33612345678"]), SRC)
            await a.add_consent(ConsentRecord("acme", "+33612345678", 1.0, "form"))
            await b.refresh()
            assert b.list_contains("dnc", "+33612345678")
            assert b.consent_for("acme", "+33612345678", 2.0) is not None
            results = [await s.check_and_record_attempt("acme", "+33612345678", 10.0, 4, 100.0, 100.0)
                       for s in (a, b) * 4]
            assert sum(r.allowed for r in results) == 4
        finally:
            for s in stores:
                await s.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)


@pytest.mark.e2e
async def test_redis_sentinel_through_the_url(tmp_path: Path, redis_server: RedisServer) -> None:
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its config file: it must be ours and writable
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n")
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        store = None
        for _ in range(100):
            try:
                store = await RedisStore.open(f"redis://127.0.0.1:{port}/0?sentinel=mymaster", watch=False)
                break
            except StoreUnavailable:
                await asyncio.sleep(0.05)
        assert store is not None
        try:
            await store.put_list("dnc", NumberSet.from_numbers(["+33612345678"]), SRC)
            assert store.list_contains("dnc", "+33612345678")
            direct = await RedisStore.open(redis_server.url, watch=False)  # same data on the master
            try:
                assert direct.list_contains("dnc", "+33612345678")
            finally:
                await direct.close()
        finally:
            await store.close()
    finally:
        proc.kill()
        proc.wait(5)
