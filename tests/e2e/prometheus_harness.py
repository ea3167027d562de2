"""A real `prometheus` process for tests/e2e and bench/dashboard_png.py: scrapes one target, evaluates
docker/alerts.yml, answers PromQL over its HTTP API. Never asserts; `stop()` always reaps the process."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sipp_harness import REPO, HarnessError, free_ports

ALERTS = REPO / "docker" / "alerts.yml"


@dataclass(frozen=True, slots=True)
class Prometheus:
    """A running prometheus process and its HTTP API."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400 on a bad expression: its body says why
            return json.loads(exc.read())

    def query(self, expr: str, at: float | None = None) -> list[Any]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        body = self.get("/api/v1/query", **params)
        if body.get("status") != "success":
            raise HarnessError(f"query {expr!r} failed: {body}")
        result: list[Any] = body["data"]["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        body = self.get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                        step=f"{step:g}")  # fmt: skip
        if body.get("status") != "success":
            raise HarnessError(f"query_range {expr!r} failed: {body}")
        result: list[Any] = body["data"]["result"]
        return result

    def by_label(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        stop_process(self.proc)


def start_prometheus(workdir: Path, target: str, token: str | None, *, interval_s: float = 1.0,
                     ready_timeout_s: float = 20.0) -> Prometheus:  # fmt: skip
    """prometheus on a free port: scrapes `target` (job "sipfilter") and evaluates docker/alerts.yml every
    `interval_s`; its TSDB and log under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ALERTS, workdir / "alerts.yml")
    job: dict[str, Any] = {"job_name": "sipfilter", "static_configs": [{"targets": [target]}]}
    if token:
        job["authorization"] = {"type": "Bearer", "credentials": token}
    every = f"{interval_s:g}s"
    config = {"global": {"scrape_interval": every, "evaluation_interval": every},
              "rule_files": ["alerts.yml"], "scrape_configs": [job]}  # fmt: skip
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_ports(1)[0]
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        if proc.poll() is not None:
            output = log.read_text(errors="replace")
            raise HarnessError(f"prometheus exited with {proc.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return prom
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_process(proc)
            raise HarnessError(f"prometheus not ready after {ready_timeout_s}s")
        time.sleep(0.2)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
