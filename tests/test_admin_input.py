"""Hostile input to the admin API (with the token): a clear 400, never a 5xx, and the store stays healthy.
The inputs a probe found first, then a property-based fuzz of every route (hypothesis)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfilter.admin_guard import AdminGuard
from sipfilter.http import ReadinessState, make_admin_app
from sipfilter.policy.numbers import Normaliser
from sipfilter.stores.embedded import EmbeddedStore
from sipfilter.stores.importer import SourceInfo
from sipfilter.stores.numberset import NumberSet

TOKEN = "fuzz-fuzz-fuzz-fuzz-fuzz-fuzz-fuzz-fuzz"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}
Client = TestClient[web.Request, web.Application]


async def _open(tmp_path: Path) -> tuple[Client, EmbeddedStore, ReadinessState]:
    store = await EmbeddedStore.open(tmp_path / "data", watch=False)
    await store.put_list("bloctel", NumberSet.from_numbers(["+33612345678", "+33611111111"]),
                         SourceInfo("b.csv", 1, "x"))  # fmt: skip
    state = ReadinessState(lambda: True, lambda: True, lambda: True,
                           store_ok=lambda: bool(store.health.up))  # fmt: skip
    app = make_admin_app(state, guard=AdminGuard(TOKEN, "127.0.0.1"), get_store=lambda: store,
                         normaliser=Normaliser())  # fmt: skip
    client: Client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client, store, state


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Client, EmbeddedStore, ReadinessState]]:
    client, store, state = await _open(tmp_path)
    try:
        yield client, store, state
    finally:
        await client.close()
        await store.close()


async def _ready(client: Client) -> bool:
    return (await client.get("/readyz")).status == 200


@pytest.mark.parametrize("at", ["NaN", "Infinity", "-Infinity", "1e400", "-5", "1780000000000", "true", '"x"',
                                "[1]", '"2026-01-01T10:00:00"', '"9999-12-31T23:59:59+00:00"'])  # fmt: skip
async def test_a_bad_time_is_a_400_and_the_store_stays_up(api: Any, at: str) -> None:
    client, store, _ = api
    body = '{"account": "acme", "number": "0612345678", "at": ' + at + "}"
    for _ in range(3):  # repeated, as the probe did: readiness must not flap
        resp = await client.post("/api/refusals", data=body, headers=JSON)
        assert resp.status == 400, (at, await resp.text())
        error = (await resp.json())["error"]
        assert "at:" in error or "not a number JSON allows" in error, error
    assert store.health.up and await _ready(client)
    assert await store.last_refusal("acme", "+33612345678") is None


@pytest.mark.parametrize("window", ["abc", "nan", "inf", "-1", "0", "1e400", "", "1" * 500])
async def test_a_bad_window_is_a_400(api: Any, window: str) -> None:
    client, _, _ = api
    resp = await client.get("/api/refusals", params={"account": "acme", "number": "0612345678",
                                                     "window_s": window}, headers=AUTH)  # fmt: skip
    assert resp.status == 400 and "window_s" in (await resp.json())["error"]


@pytest.mark.parametrize("name", ["bad%00name", "%00", "..", "..%2F..%2Fetc", "a" * 65, "-dash", "sp%20ace",
                                  "%C3%A9t%C3%A9", "%FF"])  # fmt: skip
async def test_a_bad_list_name_is_a_400_on_every_list_route(api: Any, name: str) -> None:
    client, store, _ = api
    csv = {**AUTH, "Content-Type": "text/csv"}
    for method, suffix, headers, data in (("GET", "", AUTH, None), ("GET", "/numbers", AUTH, None),
                                          ("PUT", "", csv, b"0612345678\n"), ("DELETE", "", AUTH, None)):
        resp = await client.request(method, f"/api/lists/{name}{suffix}", headers=headers, data=data)
        # 400 from the API; 404/405/415 when the client's URL normalisation leaves no list route to reach
        assert 400 <= resp.status < 500, (method, name, resp.status)
    assert store.list_names() == ["bloctel"]


async def test_a_deeply_nested_body_is_a_400(api: Any) -> None:
    client, _, _ = api
    for body in ("[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000):
        resp = await client.post("/api/refusals", data=body, headers=JSON)
        assert resp.status == 400, await resp.text()


@pytest.mark.parametrize("field", ["max_bad_share", "max_shrink"])
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-0.5", "2", "x"])
async def test_upload_thresholds_must_be_shares(api: Any, field: str, value: str) -> None:
    """A NaN threshold would pass every comparison: a truncated download would empty the list."""
    client, store, _ = api
    resp = await client.put("/api/lists/bloctel", params={field: value}, data=b"0612345678\n",
                            headers={**AUTH, "Content-Type": "text/csv"})  # fmt: skip
    assert resp.status == 400 and field in (await resp.json())["error"]
    assert len(store.list_numbers("bloctel")) == 2


@pytest.mark.parametrize("source_name", ["x\x00y", "../../etc/passwd", "", "a" * 300, "é.csv"])
async def test_an_odd_source_name_is_a_400(api: Any, source_name: str) -> None:
    client, _, _ = api
    resp = await client.put("/api/lists/other", params={"source_name": source_name}, data=b"0612345678\n",
                            headers={**AUTH, "Content-Type": "text/csv"})  # fmt: skip
    assert resp.status == 400 and "source_name" in (await resp.json())["error"]


@pytest.mark.parametrize(("field", "value"), [("account", "ac\x00me"), ("account", "a" * 500), ("account", 7),
                                              ("number", "0" * 1000), ("number", ["0612345678"]),
                                              ("proof", "line\nbreak"), ("proof", {"x": 1}),
                                              ("hours", "mon\x00"), ("hours", 5)])  # fmt: skip
async def test_record_fields_are_checked(api: Any, field: str, value: Any) -> None:
    client, store, _ = api
    body = {"account": "acme", "number": "0612345678", "proof": "form-1", field: value}
    resp = await client.post("/api/consents", data=json.dumps(body), headers=JSON)
    assert resp.status == 400 and field in (await resp.json())["error"]
    assert store.consent_for("acme", "+33612345678", 2_000_000_000) is None


# --- property-based fuzz of every route ---------------------------------------------------------------

ROUTES = [("POST", "/api/refusals"), ("GET", "/api/refusals"), ("POST", "/api/consents"),
          ("DELETE", "/api/consents"), ("GET", "/api/consents"), ("POST", "/api/contracts"),
          ("DELETE", "/api/contracts"), ("GET", "/api/lists"), ("GET", "/api/lists/{name}"),
          ("GET", "/api/lists/{name}/numbers"), ("PUT", "/api/lists/{name}"), ("DELETE", "/api/lists/{name}")]
FIELDS = ["account", "number", "at", "window_s", "proof", "hours", "granted_at", "start", "started_at", "end",
          "ended_at", "reference", "format", "mode", "column", "max_bad_share", "max_shrink", "source_name"]
texts = st.one_of(
    st.sampled_from(["acme", "0612345678", "+33612345678", "06 12 34 56 78", "nan", "inf", "-1", "1e400",
                     "2026-01-01T10:00:00+02:00", "2026-13-45", "", "csv", "bloctel", "lines", "add",
                     "remove", "replace", "0", "1", "0.5", "1780000000", "../x", "\x00"]),
    st.text(max_size=40),
)  # fmt: skip
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=True, allow_infinity=True), texts),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


def _nan_json(value: Any) -> str:
    return json.dumps(value, allow_nan=True)  # NaN and Infinity as Python writes them: not JSON, sent anyway


bodies = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(_nan_json),
    json_values.map(_nan_json),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["[" * 3000, '{"a":' * 3000, "0612345678\n0611111111\n", "nope\n", "\ufeff0612345678\n"]),
)
names = st.one_of(st.sampled_from(["bloctel", "optouts", "x", "a.b-c_d"]),
                  st.text(min_size=1, max_size=20).filter(lambda t: not set(t) & set("/?#")))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], str | None, str]:
    method, path = draw(st.sampled_from(ROUTES))
    path = path.replace("{name}", draw(names))
    query = draw(st.dictionaries(st.sampled_from(FIELDS), texts, max_size=5))
    body = draw(bodies)
    ctype = draw(st.sampled_from(["application/json", "text/csv", "application/octet-stream", "text/plain"]))
    return method, path, query, body, ctype


@pytest.fixture
def sync_api(tmp_path: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, Client, EmbeddedStore]]:
    loop = asyncio.new_event_loop()
    client, store, _ = loop.run_until_complete(_open(tmp_path))
    try:
        yield loop, client, store
    finally:
        loop.run_until_complete(client.close())
        loop.run_until_complete(store.close())
        loop.close()


def test_fuzz_every_route_never_answers_5xx(sync_api: Any) -> None:
    loop, client, store = sync_api
    seen: dict[int, int] = {}

    async def send(method: str, path: str, query: dict[str, str], body: str | None, ctype: str) -> int:
        headers = {**AUTH, "Content-Type": ctype} if body is not None else dict(AUTH)
        data = body.encode("utf-8", "surrogatepass") if body is not None else None
        resp = await client.request(method, path, params=query, data=data, headers=headers)
        await resp.read()
        return resp.status

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(requests())
    def check(req: tuple[str, str, dict[str, str], str | None, str]) -> None:
        status = loop.run_until_complete(send(*req))
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, req
        assert store.health.up, req  # nothing a request says may look like a store outage

    check()
    assert any(200 <= s < 300 for s in seen) and 400 in seen, seen  # the fuzz reached both sides
