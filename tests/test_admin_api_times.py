"""Admin API times: accepted as epoch seconds or ISO-8601 with an offset (as the CLI's --at), returned as
epoch seconds and, beside each, ISO-8601 in UTC (`<field>_iso`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sipfilter.admin_api import add_admin_routes
from sipfilter.policy.numbers import Normaliser
from sipfilter.stores.embedded import EmbeddedStore

Client = TestClient[web.Request, web.Application]
WHO = {"account": "acme", "number": "06 12 34 56 78"}
AT_ISO, AT = "2026-12-01T11:00:00+01:00", 1_796_119_200.0  # the same instant
AT_UTC = "2026-12-01T10:00:00Z"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    store = await EmbeddedStore.open(tmp_path / "data", watch=False)
    app = web.Application()
    add_admin_routes(app, lambda: store, normaliser=Normaliser())
    c: Client = TestClient(TestServer(app, host="127.0.0.1"))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()
        await store.close()


async def test_refusal_at_in_iso_or_epoch_and_returned_in_both(client: Client) -> None:
    for given in (AT_ISO, AT, str(AT)):
        r = await client.post("/api/refusals", json={**WHO, "at": given})
        body = await r.json()
        assert r.status == 201 and (body["at"], body["at_iso"]) == (AT, AT_UTC), body
    r = await client.get("/api/refusals", params={"account": "acme", "number": "0612345678"})
    body = await r.json()
    assert (body["last_refusal"], body["last_refusal_iso"]) == (AT, AT_UTC)


async def test_consent_and_contract_times_in_iso(client: Client) -> None:
    r = await client.post("/api/consents", json={**WHO, "proof": "form-1", "granted_at": AT_ISO})
    body = await r.json()
    assert r.status == 201 and body["granted_at_iso"] == AT_UTC and body["revoked_at_iso"] is None
    r = await client.post("/api/contracts", json={**WHO, "started_at": AT_ISO, "ended_at": AT + 86400})
    body = await r.json()
    assert r.status == 201
    assert (body["started_at_iso"], body["ended_at_iso"]) == (AT_UTC, "2026-12-02T10:00:00Z")
    r = await client.get("/api/consents", params={"account": "acme", "number": "0612345678"})
    body = await r.json()
    assert body["consents"][0]["granted_at_iso"] == AT_UTC
    assert body["contracts"][0]["started_at_iso"] == AT_UTC


async def test_list_import_time_in_iso(client: Client) -> None:
    r = await client.put("/api/lists/optouts", data=b"0611111111\n")
    body = await r.json()
    assert r.status == 201 and body["list"]["imported_at_iso"].endswith("Z")
    r = await client.get("/api/lists")
    assert (await r.json())[0]["imported_at_iso"] == body["list"]["imported_at_iso"]


@pytest.mark.parametrize(("given", "words"), [
    ("2026-12-01T11:00:00", "e.g. 2026-12-01T11:00:00+01:00"),  # no offset: the hint's is right for the date
    ("tomorrow", "not an ISO-8601 date-time or epoch seconds"),
    (True, "expected ISO-8601 with a UTC offset or epoch seconds"),
])
async def test_bad_times_are_400_and_say_why(client: Client, given: object, words: str) -> None:
    r = await client.post("/api/refusals", json={**WHO, "at": given})
    body = await r.json()
    assert r.status == 400 and body["error"].startswith("at: ") and words in body["error"], body
