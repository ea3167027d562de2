"""Several policy instances on one real redis-server: the shared cap holds, and Redis outages are survived."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis_server import RedisServer

from sipfilter.b2bua.facts import identities_from_text
from sipfilter.configure import load_config
from sipfilter.policy.engine import PolicyEngine
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.rulepack import STORE_RULE
from sipfilter.stores.base import ConsentRecord
from sipfilter.stores.importer import SourceInfo
from sipfilter.stores.numberset import NumberSet
from sipfilter.stores.redis_store import RedisStore

ROOT = Path(__file__).resolve().parents[2]
OPEN = datetime.fromisoformat("2026-09-16T11:00:00+02:00").timestamp()  # a Wednesday, 11:00 Paris
NPV = "0162123456"
CALLEE = "+33611223344"
ACCOUNT = "acme-energie"
SRC = SourceInfo("test.txt", 1, "00" * 32)


def call_facts(engine: PolicyEngine, trunk: str, from_: str, to: str, at: float) -> CallFacts:
    return identities_from_text(engine.reader(trunk), trunk, from_, to, at=at).facts


def engine_for(tmp_path: Path, url: str, on_store_error: str = "reject") -> PolicyEngine:
    data: dict[str, Any] = yaml.safe_load((ROOT / "config" / "sipfilter.yaml").read_text())
    data["rule_packs"] = {"fr": str(ROOT / "config" / "rules" / "fr.yaml")}
    data["store"] = {"backend": "redis", "redis_url": url, "data_dir": str(tmp_path / "data")}
    data["audit"]["path"] = str(tmp_path / "audit.jsonl")
    data["trunks"]["dialer"]["on_store_error"] = on_store_error
    path = tmp_path / f"sipfilter-{on_store_error}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return PolicyEngine(load_config(path))


async def provision(store: RedisStore, callees: list[str]) -> None:
    for name in ("bloctel", "optouts"):
        await store.put_list(name, NumberSet.from_numbers(["+33699999999"]), SRC, imported_at=OPEN - 86400)
    await store.add_consents([ConsentRecord(ACCOUNT, c, OPEN - 86400, "form") for c in callees])


async def test_two_instances_let_exactly_four_attempts_through(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    stores = [await RedisStore.open(redis_server.url, watch=False) for _ in range(2)]
    try:
        await provision(stores[0], [CALLEE])
        await stores[1].refresh()
        engines = [engine_for(tmp_path, redis_server.url) for _ in range(2)]
        facts = [call_facts(e, "dialer", from_=NPV, to=CALLEE, at=OPEN) for e in engines]
        calls = [engines[i % 2].decide(facts[i % 2], stores[i % 2]) for i in range(24)]
        decisions = await asyncio.gather(*calls)
        allowed = [d for d in decisions if d.verdict.action == "allow"]
        assert len(allowed) == 4, [d.verdict for d in decisions]
        assert {d.verdict.rule for d in decisions if d.verdict.action != "allow"} == {"frequency.cap"}
        # Both instances took part, and both now see the same count.
        assert {i % 2 for i, d in enumerate(decisions) if d.verdict.action == "allow"} <= {0, 1}
        for s in stores:
            assert await s.attempts(ACCOUNT, CALLEE, OPEN, 30 * 86400) == 4
    finally:
        for s in stores:
            await s.close()


@pytest.mark.e2e
async def test_redis_killed_and_restarted_under_load(tmp_path: Path, redis_server: RedisServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    callees = [f"+336112{i:05d}" for i in range(6000)]  # each decision a fresh callee: no cap
    store = await RedisStore.open(redis_server.url, watch=True, poll_interval=0.05)
    try:
        await provision(store, callees)
        reject = engine_for(tmp_path, redis_server.url, "reject")
        allow = engine_for(tmp_path, redis_server.url, "allow")
        phase = {"name": "before"}
        phases = ("before", "down", "recovering", "after", "transition")
        seen: dict[str, list[tuple[str, str, str]]] = {name: [] for name in phases}
        stop = asyncio.Event()

        async def caller(k: int) -> None:
            i = 0
            while not stop.is_set():
                engine = reject if k % 2 == 0 else allow
                callee = callees[(k + 4 * i) % len(callees)]
                i += 1
                started_in = phase["name"]
                d = await engine.decide(call_facts(engine, "dialer", from_=NPV, to=callee, at=OPEN), store)
                # A decision in flight across a kill or a restart belongs to no phase.
                label = started_in if phase["name"] == started_in else "transition"
                seen[label].append((engine.trunk("dialer").on_store_error, d.verdict.action, d.verdict.rule))
                await asyncio.sleep(0.002)

        caplog.set_level(logging.INFO, logger="sipfilter.stores")
        tasks = [asyncio.create_task(caller(k)) for k in range(4)]
        await asyncio.sleep(0.3)
        redis_server.kill()  # returns once the process is gone: every later call meets a dead server
        phase["name"] = "down"
        await asyncio.sleep(0.6)
        assert store.list_contains("bloctel", "+33699999999")  # lists keep answering from memory
        redis_server.start()
        phase["name"] = "recovering"
        await asyncio.sleep(0.5)
        phase["name"] = "after"
        await asyncio.sleep(0.3)
        stop.set()
        try:  # no task crashed, none hangs (if one does, show where)
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
        except TimeoutError:
            for t in asyncio.all_tasks():
                t.print_stack()
            raise
    finally:
        await store.close()

    assert seen["before"] and all(a == "allow" for _, a, _ in seen["before"])
    down = [s for s in seen["down"] if s[2] == STORE_RULE or s[1] == "allow"]
    assert len(down) == len(seen["down"]) > 10
    assert {a for mode, a, _ in seen["down"] if mode == "reject"} == {"reject"}
    assert {a for mode, a, _ in seen["down"] if mode == "allow"} == {"allow"}
    assert seen["after"] and all(a == "allow" for _, a, _ in seen["after"]), seen["after"][:5]
    outages = [r for r in caplog.records if "unavailable" in r.getMessage() and r.levelno == logging.ERROR]
    assert len(outages) == 1  # logged once per incident, not once per call
    assert any("available again" in r.getMessage() for r in caplog.records)
    assert store.health.incidents == 1 and store.health.errors >= len(seen["down"]) // 2


_FIRE = """
import asyncio, sys, time
from sipfilter.stores.redis_store import RedisStore

async def main(url, start_at):
    store = await RedisStore.open(url, watch=False)
    await asyncio.sleep(max(0.0, start_at - time.time()))  # both processes fire together
    res = await asyncio.gather(*[store.check_and_record_attempt("acme", "+33611223344", 1.78e9, 4, 2592000.0,
                                                                5184000.0) for _ in range(15)])
    await store.close()
    print(sum(r.allowed for r in res))

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def test_two_processes_let_exactly_four_attempts_through(redis_server: RedisServer) -> None:
    import subprocess
    import sys
    import time

    start_at = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _FIRE, redis_server.url, str(start_at)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        allowed = [int(p.communicate(timeout=60)[0].strip()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sum(allowed) == 4, allowed
