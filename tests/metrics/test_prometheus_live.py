"""A real Prometheus scrapes a real admin HTTP server; every dashboard and alert expression is evaluated.

In-process by default (metrics populated by a synthetic call load). Point it at a running sipfilter with
SIPFILTER_METRICS_TARGET=host:port (and SIPFILTER_METRICS_TOKEN when the admin HTTP needs one): panels
whose series that process never created are then reported, not failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import noc_config
import pytest
import yaml
from promql_names import dashboard_exprs, referenced_metrics

from sipfilter import metrics
from sipfilter.http import AdminServer, ReadinessState
from sipfilter.lab import free_port
from sipfilter.policy.engine import PolicyEngine
from sipfilter.stores.base import ListInfo
from sipfilter.stores.writable import Health

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed"),
]

DOCKER = Path(__file__).resolve().parents[2] / "docker"
TOKEN = "live-scrape-token"
TRUNKS = ("dialer", "callback")
TARGETS = tuple(noc_config.TARGETS[trunk][0] for trunk in TRUNKS)  # the first target of each trunk

# What the test does once Prometheus has scraped a few times: a config reload and a list import (the
# dashboard's annotations). Bound by the in-process `target` fixture; nothing with an external target.
EVENTS: list[Callable[[], None]] = []

# An in-process server cannot restart: the restart annotation is evaluated (valid PromQL), never non-empty.
NO_EVENT_IN_PROCESS = {"annotation: Restarts"}
EXTERNAL = os.environ.get("SIPFILTER_METRICS_TARGET")


class _Store:
    health = Health("test store")

    def __init__(self) -> None:
        now = time.time()
        self.infos = {
            "bloctel": ListInfo("bloctel", 12, 1_200_000, now - 3 * 86400, "bloctel.csv", 1, "x"),
            "internal": ListInfo("internal", 3, 5_000, now - 3600, "internal.csv", 1, "y"),
        }

    def import_list(self, name: str) -> None:
        """A new version of `name`, as `sipfilter lists import` makes one."""
        old = self.infos[name]
        self.infos[name] = ListInfo(name, old.version + 1, old.count + 10, time.time(), old.source_name, 1,
                                    "z")  # fmt: skip

    def list_names(self) -> list[str]:
        return sorted(self.infos)

    def list_info(self, name: str) -> ListInfo | None:
        return self.infos.get(name)


async def _synthetic_calls(stop: asyncio.Event) -> None:
    """What a few calls per second through two trunks look like to the observer."""
    obs = metrics.PrometheusObserver(metrics.CALLS)
    rnd = random.Random(6)
    for trunk, target in zip(TRUNKS, TARGETS, strict=True):
        obs.target_up(trunk, target, True)
        obs.connect_failed(trunk, target, "tls", "timeout")  # once: a blip, below the alert
        obs.carrier_identity(trunk, target, "438", True)  # once: a STIR refusal, below the alert
        obs.carrier_identity(trunk, target, "438", False)  # a call that went on with Reason: STIR
        obs.identity_dropped(trunk)
    while not stop.is_set():
        for trunk, target in zip(TRUNKS, TARGETS, strict=True):
            obs.invite(trunk, "udp")
            obs.dialogs(trunk, 1)
            if rnd.random() < 0.2:
                obs.decision(trunk, "reject", rnd.choice(["callee.dnc.bloctel", "time.window"]), 4e-5)
                obs.response(trunk, "sent", 603)
                obs.invite_final(trunk, 0.001)
            else:
                obs.decision(trunk, "allow" if rnd.random() < 0.9 else "monitor_reject", "", 3e-5)
                obs.relayed(trunk)
                obs.response(trunk, "received", 180)
                obs.response(trunk, "received", 200)
                obs.answered(trunk)
                seconds = rnd.uniform(1, 8)
                obs.carrier_final(trunk, target, 200, seconds - 0.01)
                obs.invite_final(trunk, seconds)
                obs.response(trunk, "sent", 200)
            obs.dialogs(trunk, -1)
            obs.identity_verified(trunk, "passed")
            obs.identity_signed(trunk, "A")
            obs.identity_not_signed(trunk, "caller-not-e164")
            obs.auth(trunk, "challenged")
            obs.auth(trunk, "passed")
            obs.foreign_domain(trunk)
        obs.failover(TRUNKS[0], "carrier-a")
        obs.malformed("udp")
        obs.unknown_source("tcp")
        obs.retransmission("received")
        obs.overload("rate_limit")
        await asyncio.sleep(0.1)


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[tuple[str, str | None]]:
    if EXTERNAL:
        yield EXTERNAL, os.environ.get("SIPFILTER_METRICS_TOKEN")
        return
    store = _Store()
    config = noc_config.noc_config(tmp_path, healthy=True)
    metrics.clear_series()  # series other tests of this process left (a target down…) would fire alerts
    metrics.expect_series(metrics.known_labels(config, PolicyEngine(config).rule_ids))
    metrics.STATE.bind(store=lambda: store, config=lambda: config,
                       audit=lambda: SimpleNamespace(write_errors=0), ready=lambda: True)  # fmt: skip
    metrics.record_reload(True)
    state = ReadinessState(lambda: True, lambda: True, lambda: True)
    server = AdminServer(state, token=TOKEN)
    stop = asyncio.Event()
    load = asyncio.get_running_loop().create_task(_synthetic_calls(stop))
    EVENTS[:] = [lambda: metrics.record_reload(True), lambda: store.import_list("internal")]
    await server.start("127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.port}", TOKEN
    finally:
        stop.set()
        EVENTS.clear()
        await load
        await server.stop()
        metrics.STATE.unbind()


@pytest.fixture
async def prometheus(tmp_path: Path, target: tuple[str, str | None]) -> AsyncIterator[str]:
    hostport, token = target
    shutil.copy(DOCKER / "alerts.yml", tmp_path / "alerts.yml")
    job: dict[str, Any] = {"job_name": "sipfilter", "static_configs": [{"targets": [hostport]}]}
    if token:
        job["authorization"] = {"type": "Bearer", "credentials": token}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [job],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(150):
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                try:
                    async with session.get(f"{url}/-/ready") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("prometheus never became ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _query(session: aiohttp.ClientSession, url: str, expr: str) -> list[Any]:
    async with session.get(f"{url}/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert body["status"] == "success", (expr, body)
    result: list[Any] = body["data"]["result"]
    return result


async def _wait_for(session: aiohttp.ClientSession, url: str, expr: str, tries: int = 200) -> None:
    for _ in range(tries):
        if await _query(session, url, expr):
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"never true: {expr}")


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DOCKER / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


async def test_every_dashboard_and_alert_expression_against_real_prometheus(prometheus: str) -> None:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "sipfilter.json").read_text())
    async with aiohttp.ClientSession() as session:
        # Enough scrapes for rate() over short windows, and the rules evaluated at least once.
        await _wait_for(session, prometheus, 'count_over_time(up{job="sipfilter"}[1m]) >= 4')
        assert (await _query(session, prometheus, 'up{job="sipfilter"}'))[0]["value"][1] == "1"
        for _ in range(100):
            async with session.get(f"{prometheus}/api/v1/rules") as resp:
                groups = (await resp.json())["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(r["health"] == "ok" for r in rules):
                break
            await asyncio.sleep(0.1)
        assert len(rules) == len(_alerts())
        assert [r["name"] for r in rules if r["health"] != "ok" or r.get("lastError")] == []

        missing: list[tuple[str, str]] = []
        skipped: list[str] = []
        for event in EVENTS:
            event()
        if EVENTS:  # their annotations need a scrape after them
            await _wait_for(session, prometheus, "changes(sipfilter_list_version[1m]) > 0")
        for title, expr in dashboard_exprs(dashboard):
            if await _query(session, prometheus, expr):
                continue
            if title in NO_EVENT_IN_PROCESS:
                continue
            names = referenced_metrics(expr)
            absent = [n for n in names if not await _query(session, prometheus, f"count({n})")]
            if EXTERNAL and absent:
                skipped.append(f"{title}: {expr} (no series: {absent})")
                continue
            missing.append((title, expr))
        assert missing == [], "dashboard expressions without data"
        if skipped:
            print("\n".join(["panels without series in this process:", *skipped]))

        for rule in _alerts():
            result = await _query(session, prometheus, rule["expr"])
            if "alert" in rule:
                assert result == [], (rule["alert"], result)  # a healthy process fires nothing
            else:
                assert result or EXTERNAL, rule["record"]  # recording rules have data under load
        async with session.get(f"{prometheus}/api/v1/alerts") as resp:
            alerts = (await resp.json())["data"]["alerts"]
        assert [a["labels"]["alertname"] for a in alerts] == []
