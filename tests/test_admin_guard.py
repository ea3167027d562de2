"""The admin API's guard, as an attacker on the host would meet it: no token, a browser's cross-site POST
(text/plain, form), a rebound DNS name in Host. Real admin app, real embedded store, aiohttp test client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sipfilter.admin_guard import AdminGuard
from sipfilter.http import ReadinessState, make_admin_app
from sipfilter.stores.embedded import EmbeddedStore
from sipfilter.stores.importer import SourceInfo
from sipfilter.stores.numberset import NumberSet

TOKEN = "0123456789abcdef0123456789abcdef-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Client = TestClient[web.Request, web.Application]
REFUSAL = {"account": "acme", "number": "0612345678", "at": 1_780_000_000}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    s = await EmbeddedStore.open(tmp_path / "data", watch=False)
    await s.put_list("bloctel", NumberSet.from_numbers(["+33612345678"]), SourceInfo("b.csv", 1, "x"))
    try:
        yield s
    finally:
        await s.close()


async def _client(store: EmbeddedStore, guard: AdminGuard) -> Client:
    state = ReadinessState(lambda: True, lambda: True, lambda: True)
    client: Client = TestClient(TestServer(make_admin_app(state, guard=guard, get_store=lambda: store),
                                           host="127.0.0.1"))  # fmt: skip
    await client.start_server()
    return client


@pytest.fixture
async def tokenless(store: EmbeddedStore) -> AsyncIterator[Client]:
    client = await _client(store, AdminGuard(None, "127.0.0.1"))
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def guarded(store: EmbeddedStore) -> AsyncIterator[Client]:
    client = await _client(store, AdminGuard(TOKEN, "127.0.0.1", ["sipfilter-admin.internal"]))
    try:
        yield client
    finally:
        await client.close()


async def test_without_a_token_on_loopback_the_api_is_closed(tokenless: Client, store: EmbeddedStore) -> None:
    """No token configured: no write, no list read, even from loopback; metrics and probes stay open."""
    attempts = [
        tokenless.put("/api/lists/bloctel", params={"mode": "remove"}, data=b"0612345678\n",
                      headers={"Content-Type": "text/csv"}),
        tokenless.get("/api/lists/bloctel/numbers"),
        tokenless.get("/api/lists"),
        tokenless.post("/api/consents", json={**REFUSAL, "proof": "p"}),
        tokenless.post("/api/refusals", json=REFUSAL),
        tokenless.delete("/api/lists/bloctel"),
    ]  # fmt: skip
    for attempt in attempts:
        resp = await attempt
        assert resp.status == 403, await resp.text()
        assert "admin.token_file" in (await resp.json())["error"]
    assert store.list_contains("bloctel", "+33612345678")
    assert await store.last_refusal("acme", "+33612345678") is None
    for path in ("/metrics", "/healthz", "/readyz"):
        assert (await tokenless.get(path)).status == 200, path


async def test_writes_and_list_reads_need_the_token(guarded: Client, store: EmbeddedStore) -> None:
    assert (await guarded.post("/api/refusals", json=REFUSAL)).status == 401
    assert (await guarded.get("/api/lists/bloctel/numbers")).status == 401
    wrong = {"Authorization": "Bearer " + "x" * 40}
    assert (await guarded.delete("/api/lists/bloctel", headers=wrong)).status == 401
    assert store.list_contains("bloctel", "+33612345678")
    resp = await guarded.post("/api/refusals", json=REFUSAL, headers=AUTH)
    assert resp.status == 201
    resp = await guarded.get("/api/lists/bloctel/numbers", headers=AUTH)
    assert resp.status == 200 and await resp.text() == "+33612345678\n"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"account": "acme", "number": "0612345678"}'),  # what a cross-site form can send
        ("application/x-www-form-urlencoded", b"account=acme&number=0612345678"),
        ("multipart/form-data; boundary=x", b"--x\r\n\r\n--x--\r\n"),
        (None, b""),  # fetch() POST without a body: no preflight either
    ],
)
async def test_a_browser_cross_site_post_is_refused_even_with_the_token(
    guarded: Client, store: EmbeddedStore, content_type: str | None, body: bytes
) -> None:
    headers = dict(AUTH)
    if content_type is not None:
        headers["Content-Type"] = content_type
    resp = await guarded.post("/api/refusals", params={"account": "acme", "number": "0612345678"}, data=body,
                              headers=headers)  # fmt: skip
    assert resp.status == 415
    assert "application/json" in (await resp.json())["error"]
    assert await store.last_refusal("acme", "+33612345678") is None


async def test_list_uploads_take_the_list_formats_only(guarded: Client, store: EmbeddedStore) -> None:
    plain = await guarded.put("/api/lists/bloctel", params={"mode": "remove"}, data=b"0612345678\n",
                              headers={**AUTH, "Content-Type": "text/plain"})  # fmt: skip
    assert plain.status == 415 and "text/csv" in (await plain.json())["error"]
    assert store.list_contains("bloctel", "+33612345678")
    for ctype in ("text/csv; charset=utf-8", "application/octet-stream"):
        headers = {**AUTH, "Content-Type": ctype}
        resp = await guarded.put("/api/lists/extra", data=b"0611111111\n", headers=headers)
        assert resp.status == 201, ctype
    # A body-less DELETE needs no Content-Type (a browser cannot send DELETE cross-site without a preflight).
    assert (await guarded.delete("/api/lists/extra", headers=AUTH)).status == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:9090", "127.0.0.1.nip.io", "localhost.evil"])
async def test_a_rebound_dns_name_is_refused(guarded: Client, host: str) -> None:
    for path in ("/api/lists", "/metrics"):
        resp = await guarded.get(path, headers={**AUTH, "Host": host})
        assert resp.status == 421, (host, path)
    # The probes answer any name: orchestrators reach containers by names of their own.
    assert (await guarded.get("/healthz", headers={"Host": host})).status == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:9090", "localhost:9090", "LOCALHOST.",
                                  "sipfilter-admin.internal:443"])  # fmt: skip
async def test_the_bind_address_and_the_allowed_names_are_accepted(guarded: Client, host: str) -> None:
    assert (await guarded.get("/api/lists", headers={**AUTH, "Host": host})).status == 200


async def test_a_wildcard_bind_accepts_any_address_but_no_other_name(store: EmbeddedStore) -> None:
    client = await _client(store, AdminGuard(TOKEN, "0.0.0.0"))
    try:
        for host, status in (("10.1.2.3:9090", 200), ("[::1]:9090", 200), ("sipfilter.evil", 421)):
            assert (await client.get("/api/lists", headers={**AUTH, "Host": host})).status == status, host
    finally:
        await client.close()


async def test_a_route_added_later_is_guarded_without_a_line_of_its_own(store: EmbeddedStore) -> None:
    """What another module registers on the admin app gets the same guard (token, Host, body type)."""
    state = ReadinessState(lambda: True, lambda: True, lambda: True)
    app = make_admin_app(state, guard=AdminGuard(TOKEN, "127.0.0.1"), get_store=lambda: store)
    hits: list[str] = []

    async def later(request: web.Request) -> web.Response:
        hits.append(request.method)
        return web.json_response({"ok": True})

    app.router.add_post("/api/later-route", later)
    client: Client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        assert (await client.post("/api/later-route", json={})).status == 401
        plain = {**AUTH, "Content-Type": "text/plain"}
        assert (await client.post("/api/later-route", data=b"{}", headers=plain)).status == 415
        rebound = {**AUTH, "Host": "x.evil"}
        assert (await client.post("/api/later-route", json={}, headers=rebound)).status == 421
        assert (await client.post("/api/later-route", json={}, headers=AUTH)).status == 200
        assert hits == ["POST"]
    finally:
        await client.close()


async def test_the_guard_takes_a_new_token_at_once() -> None:
    guard = AdminGuard(TOKEN, "127.0.0.1")
    assert guard.token_ok(f"Bearer {TOKEN}")
    guard.configure("n" * 40, "127.0.0.1")
    assert not guard.token_ok(f"Bearer {TOKEN}") and guard.token_ok("Bearer " + "n" * 40)
    guard.configure(None, "127.0.0.1")
    assert not guard.token_ok("Bearer " + "n" * 40) and not guard.token_ok("Bearer None")
