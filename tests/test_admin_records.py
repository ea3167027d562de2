"""The admin API's record routes as the running process serves them (http.make_admin_app, bearer token,
JSON bodies): refusals, oppositions, undos, unknown accounts, audit lines, and proof on demand."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sipfilter.admin_api import RecordsContext
from sipfilter.audit import AuditLog
from sipfilter.config import AuditConfig
from sipfilter.http import ReadinessState, make_admin_app
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.numbers import Normaliser, Number
from sipfilter.policy.verdict import Decision, Outcome, Verdict
from sipfilter.stores.base import ConsentRecord
from sipfilter.stores.embedded import EmbeddedStore

TOKEN = "t0k3n-for-the-admin-api-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ACCOUNT, OTHER = "acme", "acme-sav"
NUMBER = "+33612345678"
DAY = 86400.0
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    s = await EmbeddedStore.open(tmp_path / "data", watch=False)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    log = AuditLog(AuditConfig(tmp_path / "audit" / "decisions.jsonl", 1 << 20, None, "keep-relaying"))
    yield log
    log.close()


@pytest.fixture
async def client(store: EmbeddedStore, audit: AuditLog) -> AsyncIterator[Client]:
    context = RecordsContext(accounts=lambda: [ACCOUNT, OTHER], audit_log=lambda: audit)
    app = make_admin_app(ReadinessState(), token=TOKEN, get_store=lambda: store, normaliser=Normaliser(),
                         records=context)
    c: Client = TestClient(TestServer(app, host="127.0.0.1"), headers=AUTH)
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()


def events(audit: AuditLog) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, audit.path.read_text().splitlines()) if "event" in r]


async def test_refusal_then_undo_with_its_audit_lines(client: Client, store: EmbeddedStore,
                                                      audit: AuditLog) -> None:
    at = time.time() - DAY
    r = await client.post("/api/refusals", json={"account": ACCOUNT, "number": "06 12 34 56 78", "at": at})
    assert r.status == 201
    body = await r.json()
    assert body["audit_logged"] is True and body["at_iso"].endswith("Z")
    r = await client.get("/api/refusals", params={"account": ACCOUNT, "number": NUMBER})
    shown = await r.json()
    assert shown["last_refusal"] == at and [x["source"] for x in shown["refusals"]] == ["api"]
    r = await client.post("/api/refusals/undo", json={"account": ACCOUNT, "number": NUMBER})
    assert r.status == 400 and "reason" in (await r.json())["error"]
    r = await client.post("/api/refusals/undo", json={"account": ACCOUNT, "number": NUMBER,
                                                       "reason": "the agent picked the wrong line"})
    assert r.status == 200
    assert [u["at"] for u in (await r.json())["undone"]] == [at]
    assert await store.last_refusal(ACCOUNT, NUMBER) is None
    again = {"account": ACCOUNT, "number": NUMBER, "reason": "again"}
    r = await client.post("/api/refusals/undo", json=again)
    assert r.status == 404
    logged = events(audit)
    assert [e["event"] for e in logged] == ["refusal", "refusal.undo"]
    assert logged[1]["reason"] == "the agent picked the wrong line" and logged[1]["source"] == "api"
    assert logged[1]["refusals"] == [logged[0]["at"]]


async def test_opposition_and_its_undo(client: Client, store: EmbeddedStore, audit: AuditLog) -> None:
    r = await client.post("/api/oppositions", json={"account": ACCOUNT, "number": NUMBER})
    assert r.status == 201
    now = time.time()
    assert store.opposition_for(ACCOUNT, NUMBER, now + 1) is not None
    r = await client.get("/api/oppositions", params={"account": ACCOUNT, "number": NUMBER})
    body = await r.json()
    assert body["opposed_since"] is not None and len(body["oppositions"]) == 1
    r = await client.post("/api/oppositions/undo", json={"account": ACCOUNT, "number": NUMBER,
                                                          "reason": "typed the wrong number"})
    assert r.status == 200 and store.opposition_for(ACCOUNT, NUMBER, now + 1) is None
    assert [e["event"] for e in events(audit)] == ["opposition", "opposition.undo"]


async def test_consent_undo_differs_from_revoke(
    client: Client, store: EmbeddedStore, audit: AuditLog
) -> None:
    t = time.time() - 10 * DAY
    for proof, at in (("form-1", t), ("wrong-import", t + DAY)):
        r = await client.post("/api/consents", json={"account": ACCOUNT, "number": NUMBER, "proof": proof,
                                                     "granted_at": at})
        assert r.status == 201
    undo = {"account": ACCOUNT, "number": NUMBER, "proof": "wrong-import", "reason": "file of another client"}
    r = await client.post("/api/consents/undo", json=undo)
    assert r.status == 200 and [c["proof"] for c in (await r.json())["undone"]] == ["wrong-import"]
    assert store.consent_for(ACCOUNT, NUMBER, time.time()).proof == "form-1"  # type: ignore[union-attr]
    r = await client.get("/api/consents", params={"account": ACCOUNT, "number": NUMBER})
    body = await r.json()
    assert [c["proof"] for c in body["consents"]] == ["form-1"]
    assert body["undone_consents"][0]["undo_reason"] == "file of another client"
    r = await client.post("/api/consents/undo", json={"account": ACCOUNT, "number": NUMBER, "proof": "nope",
                                                       "reason": "x"})
    assert r.status == 404
    assert [e["event"] for e in events(audit)] == ["consent", "consent", "consent.undo"]


@pytest.mark.parametrize(("path", "body"), [
    ("/api/refusals", {}),
    ("/api/oppositions", {}),
    ("/api/consents", {"proof": "p"}),
    ("/api/contracts", {"reference": "K"}),
    ("/api/refusals/undo", {"reason": "r"}),
])
async def test_an_account_no_trunk_uses_is_refused(client: Client, store: EmbeddedStore, path: str,
                                                   body: dict[str, Any]) -> None:
    r = await client.post(path, json={"account": "acme-energei", "number": NUMBER, **body})
    assert r.status == 400
    error = (await r.json())["error"]
    assert "unknown account 'acme-energei'" in error and "acme, acme-sav" in error
    assert await store.last_refusal("acme-energei", NUMBER) is None


async def test_reads_of_an_unknown_account_answer_with_a_warning(client: Client) -> None:
    r = await client.get("/api/refusals", params={"account": "gone", "number": NUMBER})
    assert r.status == 200 and "no trunk uses account 'gone'" in (await r.json())["warning"]


@pytest.mark.parametrize("at", ["NaN", 1e300, "2999-01-01T00:00:00+00:00"])
async def test_a_refusal_in_the_future_or_not_a_time_is_refused(client: Client, at: Any) -> None:
    body = json.dumps({"account": ACCOUNT, "number": NUMBER, "at": at}).replace('"NaN"', "NaN")
    r = await client.post("/api/refusals", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 400, await r.text()


def _decision(at: float, allowed: bool, proof: str | None) -> tuple[CallFacts, Decision]:
    facts = CallFacts("dialer", at, Number("0162000001", "+33162000001", "e164"), (), frozenset(),
                      Number(NUMBER, NUMBER, "e164"), f"call-{at}")
    verdict = Verdict("allow", 0, "", "") if allowed else Verdict("reject", 603, "callee.opposition", "no")
    outcomes = {} if allowed else {"callee.opposition": Outcome("fail", "opposed")}
    consent = ConsentRecord(ACCOUNT, NUMBER, at - 100 * DAY, proof) if proof else None
    return facts, Decision(verdict, outcomes, False, allowed, "fr-1", (), {"bloctel": 3}, consent)


async def test_proof_on_demand_as_json_and_csv(client: Client, store: EmbeddedStore, audit: AuditLog) -> None:
    from sipfilter.stores.importer import SourceInfo
    from sipfilter.stores.numberset import NumberSet

    for _ in range(3):
        info = await store.put_list("bloctel", NumberSet.from_numbers(["+33699999999"]),
                                    SourceInfo("b.csv", 9, "ab"))
    assert info.version == 3
    t = time.time() - 5 * DAY
    await store.add_consent(ConsentRecord(ACCOUNT, NUMBER, t - 100 * DAY, "crm-1"))
    audit.log_decision(*_decision(t, True, "crm-1"), ACCOUNT, "enforce")
    audit.log_decision(*_decision(t + DAY, False, None), ACCOUNT, "enforce")
    other = _decision(t + 2 * DAY, True, "x")
    audit.log_decision(other[0], other[1], OTHER, "enforce")  # another account: not in the report
    r = await client.post("/api/oppositions", json={"account": ACCOUNT, "number": NUMBER, "at": t + DAY / 2})
    assert r.status == 201
    r = await client.get("/api/audit", params={"account": ACCOUNT, "number": "0612345678", "from": t - 1})
    assert r.status == 200
    report = await r.json()
    assert [(d["action"], d["rule"]) for d in report["decisions"]] == [
        ("allow", ""), ("reject", "callee.opposition")]
    assert report["decisions"][0]["consent"]["proof"] == "crm-1"
    assert [(v["version"], v["source_name"]) for v in report["lists"]["bloctel"]] == [(3, "b.csv")]
    assert [o["source"] for o in report["oppositions"]] == ["api"]
    assert report["consents"][0]["ended_by"] == "opposition"
    assert [e["event"] for e in report["events"]] == ["opposition"]
    r = await client.get("/api/audit", params={"account": ACCOUNT, "number": NUMBER, "format": "csv"})
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert [row["kind"] for row in rows if row["kind"] == "decision"] == ["decision", "decision"]
    assert rows == sorted(rows, key=lambda row: row["time"])
    r = await client.get("/api/audit", params={"account": ACCOUNT, "number": NUMBER, "format": "xml"})
    assert r.status == 400
    r = await client.get("/api/audit", params={"account": ACCOUNT, "number": NUMBER, "from": t + 3 * DAY})
    assert (await r.json())["decisions"] == []
    r = await client.get("/api/audit", params={"account": ACCOUNT, "number": NUMBER, "from": t + 10 * DAY})
    assert r.status == 400  # the period ends (now) before it starts
