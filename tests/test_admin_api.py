"""Admin API routes on a real embedded store, through aiohttp's test client (no fixed port)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sipfilter.admin_api import add_admin_routes
from sipfilter.policy.numbers import Normaliser
from sipfilter.stores.embedded import EmbeddedStore

T0 = 1_780_000_000.0
TOKEN = "s3cret"
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    s = await EmbeddedStore.open(tmp_path / "data", watch=False)
    try:
        yield s
    finally:
        await s.close()


async def _client(store: EmbeddedStore, token: str | None) -> Client:
    app = web.Application()
    add_admin_routes(app, lambda: store, normaliser=Normaliser(), token=token)
    client: Client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(store: EmbeddedStore) -> AsyncIterator[Client]:
    c = await _client(store, None)
    try:
        yield c
    finally:
        await c.close()


async def test_refusal_recorded_and_read_back(client: Client, store: EmbeddedStore) -> None:
    r = await client.post("/api/refusals", json={"account": "acme", "number": "06 12 34 56 78", "at": T0})
    assert r.status == 201
    assert (await r.json())["number"] == "+33612345678"
    assert await store.last_refusal("acme", "+33612345678") == T0
    r = await client.get("/api/refusals", params={"account": "acme", "number": "+33612345678"})
    assert (await r.json())["last_refusal"] == T0


async def test_refusal_validation(client: Client) -> None:
    r = await client.post("/api/refusals", json={"number": "0612345678"})
    assert r.status == 400 and "account" in (await r.json())["error"]
    r = await client.post("/api/refusals", json={"account": "acme", "number": "hello"})
    assert r.status == 400 and "not a telephone number" in (await r.json())["error"]
    r = await client.post("/api/refusals", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status == 400
    bad_time = {"account": "acme", "number": "0612345678", "at": "yesterday"}
    r = await client.post("/api/refusals", json=bad_time)
    assert r.status == 400


async def test_consent_grant_revoke_history(client: Client, store: EmbeddedStore) -> None:
    grant = {"account": "acme", "number": "0692123456", "proof": "form-7",
             "granted_at": "2026-06-01T10:00:00+02:00", "hours": "mon-fri"}
    r = await client.post("/api/consents", json=grant)
    assert r.status == 201
    number = (await r.json())["number"]
    assert number == "+262692123456"  # normalised like the call path (the French plan's territories)
    rec = store.consent_for("acme", number, T0 + 1e7)
    assert rec is not None and rec.proof == "form-7" and rec.hours == "mon-fri"
    r = await client.post("/api/consents", json={"account": "acme", "number": number})
    assert r.status == 400  # proof is required
    r = await client.delete("/api/consents", json={"account": "acme", "number": number, "at": T0 + 2e7})
    assert r.status == 200 and (await r.json())["revoked"] == 1
    r = await client.delete("/api/consents", json={"account": "acme", "number": number, "at": T0 + 2e7})
    assert r.status == 404
    r = await client.get("/api/consents", params={"account": "acme", "number": number})
    body = await r.json()
    assert [c["revoked_at"] for c in body["consents"]] == [T0 + 2e7]


async def test_contracts(client: Client, store: EmbeddedStore) -> None:
    r = await client.post("/api/contracts", json={"account": "acme", "number": "0612345678", "start": T0,
                                                  "reference": "K-1"})
    assert r.status == 201
    assert store.has_contract("acme", "+33612345678", T0 + 1)
    r = await client.delete("/api/contracts", json={"account": "acme", "number": "0612345678", "at": T0 + 10})
    assert (await r.json())["ended"] == 1
    assert not store.has_contract("acme", "+33612345678", T0 + 11)


async def test_contract_scope_and_consent_time_zone(client: Client, store: EmbeddedStore) -> None:
    r = await client.post("/api/contracts", json={"account": "acme", "number": "0612345678", "start": T0,
                                                  "scope": ["energy-supply", "energy-services"]})
    assert r.status == 201 and (await r.json())["scope"] == ["energy-supply", "energy-services"]
    assert store.has_contract("acme", "+33612345678", T0 + 1, "energy-services")
    assert not store.has_contract("acme", "+33612345678", T0 + 1, "insurance")
    r = await client.post("/api/contracts", json={"account": "acme", "number": "0612345679", "start": T0,
                                                  "scope": "energy-supply, insulation"})
    assert (await r.json())["scope"] == ["energy-supply", "insulation"]
    bad_scope = {"account": "acme", "number": "0612345679", "scope": ["a b"]}
    r = await client.post("/api/contracts", json=bad_scope)
    assert r.status == 400 and "scope" in (await r.json())["error"]
    grant = {"account": "acme", "number": "0612345678", "proof": "crm-1", "time_zone": "America/Cayenne"}
    r = await client.post("/api/consents", json=grant)
    assert r.status == 201 and (await r.json())["time_zone"] == "America/Cayenne"
    history = await store.consents("acme", "+33612345678")
    assert [c.time_zone for c in history] == ["America/Cayenne"]
    for bad in ("Mars/Olympus", "../etc/passwd", 4):
        r = await client.post("/api/consents", json={**grant, "time_zone": bad})
        assert r.status == 400 and "time_zone" in (await r.json())["error"], bad


async def test_lists_upload_show_export_delete(client: Client, store: EmbeddedStore) -> None:
    body = b"NUMERO;X\n0612345678;a\n0612345679;b\n"
    r = await client.put("/api/lists/bloctel", data=body, params={"source_name": "bloctel-2026.csv"})
    assert r.status == 201, await r.text()
    out = await r.json()
    assert out["list"]["count"] == 2 and out["list"]["source_name"] == "bloctel-2026.csv"
    assert out["list"]["source_size"] == len(body)
    assert store.list_contains("bloctel", "+33612345678")
    r = await client.put("/api/lists/bloctel", data=b"0611111111\n", params={"mode": "add"})
    assert (await r.json())["list"]["count"] == 3
    r = await client.put("/api/lists/bloctel", data=b"0611111111\nnope\nnope\n")
    assert r.status == 422 and (await r.json())["bad_lines"][0]["line"] == 2
    assert store.list_info("bloctel").count == 3  # type: ignore[union-attr]  # unchanged
    r = await client.put("/api/lists/bloctel", data=b"0611111111\n")
    assert r.status == 422 and "shrink" in (await r.json())["error"]
    r = await client.put("/api/lists/bloctel", data=b"0611111111\n", params={"max_shrink": "1"})
    assert r.status == 201
    r = await client.put("/api/lists/bloctel", data=body, params={"mode": "add"})
    r = await client.get("/api/lists")
    assert [i["name"] for i in await r.json()] == ["bloctel"]
    r = await client.get("/api/lists/bloctel", params={"number": "06 12 34 56 78"})
    assert (await r.json())["contains"] is True
    r = await client.get("/api/lists/bloctel/numbers")
    assert sorted((await r.text()).split()) == ["+33611111111", "+33612345678", "+33612345679"]
    assert (await client.get("/api/lists/nope")).status == 404
    assert (await client.delete("/api/lists/bloctel")).status == 200
    assert (await client.delete("/api/lists/bloctel")).status == 404
    assert store.list_names() == []


async def test_bearer_token(store: EmbeddedStore) -> None:
    c = await _client(store, TOKEN)
    try:
        r = await c.post("/api/refusals", json={"account": "acme", "number": "0612345678"})
        assert r.status == 401
        r = await c.get("/api/lists", headers={"Authorization": "Bearer wrong"})
        assert r.status == 401
        r = await c.post("/api/refusals", json={"account": "acme", "number": "0612345678"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 201
    finally:
        await c.close()


async def test_store_unavailable_is_503(client: Client, store: EmbeddedStore) -> None:
    store._db.close()  # the database is gone: the API answers 503, it does not crash
    r = await client.post("/api/refusals", json={"account": "acme", "number": "0612345678"})
    assert r.status == 503
