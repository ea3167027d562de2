"""Admin HTTP: /metrics, /healthz, /readyz and the bearer-token guard, via the test client and for real."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from sipfilter import metrics
from sipfilter.admin_guard import AdminGuard
from sipfilter.http import AdminConfigError, AdminServer, ReadinessState, is_loopback, make_admin_app
from sipfilter.stores.embedded import EmbeddedStore

Client = TestClient[web.Request, web.Application]
TOKEN = "n0c-t0ken-n0c-t0ken-n0c-t0ken-n0c-t0ken"


async def _client(app: web.Application) -> Client:
    client: Client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def open_client() -> AsyncIterator[Client]:
    state = ReadinessState(listening=lambda: True, config_loaded=lambda: True, lists_loaded=lambda: True)
    client = await _client(make_admin_app(state))
    try:
        yield client
    finally:
        await client.close()


async def test_metrics_serves_our_registry_in_text_format(open_client: Client) -> None:
    metrics.PrometheusObserver(metrics.CALLS).invite("http-a", "tls")
    resp = await open_client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    sample = [s for s in fams["sipfilter_invites_received"].samples if s.labels.get("trunk") == "http-a"]
    assert sample and sample[0].value >= 1
    assert "python_gc_objects_collected_total" not in text  # our registry, not the client's default one


async def test_metrics_uses_the_given_registry() -> None:
    reg = CollectorRegistry()
    Counter("isolated_things_total", "t", registry=reg).inc(3)
    client = await _client(make_admin_app(ReadinessState(), registry=reg))
    try:
        text = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    assert "isolated_things_total 3.0" in text and "sipfilter_" not in text


async def test_healthz_is_always_ok(open_client: Client) -> None:
    resp = await open_client.get("/healthz")
    assert resp.status == 200 and await resp.text() == "ok\n"


async def test_readyz_names_the_failing_check() -> None:
    store_up = [True]
    draining = [False]
    state = ReadinessState(
        listening=lambda: True, config_loaded=lambda: True, lists_loaded=lambda: True,
        store_ok=lambda: store_up[0], draining=lambda: draining[0],
    )  # fmt: skip
    client = await _client(make_admin_app(state))
    try:
        resp = await client.get("/readyz")
        assert resp.status == 200
        assert (await resp.json())["ready"] is True
        store_up[0] = False
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503 and body["checks"]["store_ok"] is False and body["checks"]["listening"]
        store_up[0] = True
        draining[0] = True
        resp = await client.get("/readyz")
        assert resp.status == 503 and (await resp.json())["checks"]["not_draining"] is False
    finally:
        await client.close()


async def test_readyz_default_state_is_not_ready_and_a_raising_check_is_not_ready() -> None:
    def boom() -> bool:
        raise RuntimeError("store exploded")

    for state in (ReadinessState(), ReadinessState(lambda: True, lambda: True, lambda: True, boom)):
        client = await _client(make_admin_app(state))
        try:
            resp = await client.get("/readyz")
            assert resp.status == 503
        finally:
            await client.close()


async def test_token_guards_metrics_and_api_but_not_probes(tmp_path: Path) -> None:
    """Bound to every interface: /metrics needs the token as the API does; the probes never do."""
    store = await EmbeddedStore.open(tmp_path / "data", watch=False)
    state = ReadinessState(lambda: True, lambda: True, lambda: True)
    guard = AdminGuard(TOKEN, "0.0.0.0")
    client = await _client(make_admin_app(state, guard=guard, get_store=lambda: store))
    try:
        for path in ("/metrics", "/api/lists"):
            assert (await client.get(path)).status == 401
            wrong = await client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status == 401 and "Bearer" in wrong.headers["WWW-Authenticate"]
            assert (await client.get(path, headers={"Authorization": TOKEN})).status == 401  # scheme needed
            ok = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status == 200, path
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
    finally:
        await client.close()
        await store.close()


async def test_on_loopback_metrics_are_open_and_the_api_is_not(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "data", watch=False)
    state = ReadinessState(lambda: True, lambda: True, lambda: True)
    client = await _client(make_admin_app(state, token=TOKEN, get_store=lambda: store))
    try:
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/api/lists")).status == 401
        assert (await client.get("/api/lists", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
    finally:
        await client.close()
        await store.close()


async def test_api_routes_are_absent_without_a_store() -> None:
    client = await _client(make_admin_app(ReadinessState(), token=TOKEN))
    try:
        assert (await client.get("/api/lists", headers={"Authorization": f"Bearer {TOKEN}"})).status == 404
    finally:
        await client.close()


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("admin.example")


async def test_server_refuses_a_public_bind_without_token() -> None:
    server = AdminServer(ReadinessState(), lag_monitor=False)
    with pytest.raises(AdminConfigError, match="requires a token"):
        await server.start("0.0.0.0", 0)
    await server.stop()


async def test_server_on_a_free_port_serves_and_stops() -> None:
    server = AdminServer(ReadinessState(), token=TOKEN)
    await server.start("127.0.0.1", 0)
    try:
        assert server.port > 0
        url = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/healthz") as resp:
                assert resp.status == 200
            async with session.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200 and "sipfilter_build_info" in await resp.text()
    finally:
        await server.stop()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{server.port}/healthz")
