"""sipfilter instances sharing one store, for the scale-out tests of tests/e2e and bench/e2e.py --store redis.

Every instance is a real `sipfilter run` on its own free ports, with its own audit log, and the same trunks:
one per kind of campaign, told apart by the dialer's source address on loopback (127.0.0.11, .12, …), all
relaying to the same carrier. Lists and consents go into the store through the CLI once, before the instances
start (sipfilter_provision). A real Prometheus can scrape them all (`Prometheus`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sipfilter_provision import provision
from sipp_harness import (
    ALWAYS_OPEN,
    LOOPBACK,
    CallCase,
    HarnessError,
    Sipfilter,
    SipfilterPorts,
    Sipp,
    SippRun,
    free_ports,
    sipfilter_config,
    write_calls_csv,
    write_config,
)

from sipfilter.audit import is_decision

# The legal hours open all day (ALWAYS_OPEN) but the rule pack's own frequency rules: 4 attempts in 30 days.
LAW_CAP = {key: value for key, value in ALWAYS_OPEN.items() if key != "frequency"}
CAP = 4
PRODUCTION_TIMERS = {"t1_ms": 500, "t2_ms": 4000, "t4_ms": 5000}
ADMIN_TOKEN = "scaleout-test-admin-token-0123456789abcdef"  # the admin API always needs one (>= 32 bytes)

# Trunk kinds: name → (dialer source address, trunk settings). Every kind of campaign the law tells apart.
TRUNK_KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "prospect": ("127.0.0.11", {"mode": "enforce", "prospecting": True}),
    "prospect-monitor": ("127.0.0.12", {"mode": "monitor", "prospecting": True}),
    "customer": ("127.0.0.13", {"mode": "enforce", "prospecting": False}),
    "customer-monitor": ("127.0.0.14", {"mode": "monitor", "prospecting": False}),
    # fails open: relays (uncounted) while the store cannot answer
    "prospect-open": ("127.0.0.15", {"mode": "enforce", "prospecting": True, "on_store_error": "allow"}),
}


def trunks_config(base: Mapping[str, Any], kinds: Iterable[str], **common: Any) -> dict[str, Any]:
    """One trunk per kind, built from the harness's `dialer` trunk `base`: its own source address, the
    law's frequency cap, and `common` settings (e.g. on_store_error) for all of them."""
    out: dict[str, Any] = {}
    for kind in kinds:
        source, settings = TRUNK_KINDS[kind]
        trunk = dict(base)
        trunk.update({"match": {"sources": [f"{source}/32"]}, "overrides": LAW_CAP, **settings, **common})
        out[kind] = trunk
    return out


@dataclass
class Instance:
    """One `sipfilter run` of a deployment."""

    name: str
    config_path: Path
    sipfilter: Sipfilter

    @property
    def inside(self) -> str:
        return f"{LOOPBACK}:{self.sipfilter.ports.inside}"

    @property
    def admin(self) -> str:
        return f"{LOOPBACK}:{self.sipfilter.ports.admin}"

    def audit(self) -> list[dict[str, Any]]:
        """Every decision line of this instance's audit log (rotated files included)."""
        path = Path(yaml.safe_load(self.config_path.read_text())["audit"]["path"])
        lines: list[dict[str, Any]] = []
        for file in sorted(path.parent.glob(path.name + "*"), reverse=True):
            lines += [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        return [line for line in lines if is_decision(line)]

    def api(self, method: str, path: str, body: Mapping[str, Any] | bytes | None = None,
            query: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """One admin API request; (status, parsed JSON body)."""
        url = f"http://{self.admin}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        kind = "text/csv" if isinstance(body, bytes) else "application/json"  # list files: bytes
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": kind,
                                                  "Authorization": f"Bearer {ADMIN_TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return int(resp.status), json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read() or b"null")


@dataclass
class Deployment:
    """`count` instances on one store; `carrier_port` is the target of every trunk."""

    workdir: Path
    store: Mapping[str, Any]  # the config's store section
    kinds: Sequence[str] = tuple(TRUNK_KINDS)
    count: int = 2
    trunk: Mapping[str, Any] = field(default_factory=dict)  # settings for every trunk (on_store_error, …)
    # Production timers, not the harness's short T1: on a busy machine a carrier answering late must not turn
    # into a 408 (Timer B) that reads like a refusal.
    sip: Mapping[str, Any] = field(default_factory=lambda: {"timers": PRODUCTION_TIMERS})
    consents: Sequence[str] = ()  # consented callees besides sipfilter_provision's
    lists: Mapping[str, list[str]] = field(default_factory=dict)  # numbers besides sipfilter_provision's
    carrier_port: int = 0
    instances: list[Instance] = field(default_factory=list)

    def configure(self, name: str) -> Path:
        ports = SipfilterPorts(*free_ports(3))
        workdir = self.workdir / name
        config = sipfilter_config(workdir, ports, [self.carrier_port], sip=self.sip)
        config["admin"]["token"] = ADMIN_TOKEN
        config["store"] = {**config["store"], **self.store}
        config["trunks"] = trunks_config(config["trunks"]["dialer"], self.kinds, **self.trunk)
        return write_config(workdir / "sipfilter.yaml", config)

    def start(self, provision_store: bool = True) -> Deployment:
        self.carrier_port = self.carrier_port or free_ports(1)[0]
        paths = [self.configure(f"sipfilter-{chr(ord('a') + i)}") for i in range(self.count)]
        if provision_store:  # through the CLI of the first instance: the store is shared
            provision(paths[0], paths[0].parent, extra_consents=list(self.consents),
                      extra_lists=dict(self.lists))
        try:
            for path in paths:
                cfg = yaml.safe_load(path.read_text())
                ports = SipfilterPorts(cfg["sip"]["inside"][0]["port"], cfg["sip"]["outside"][0]["port"],
                                       cfg["admin"]["port"])
                sf = Sipfilter(path, ports, path.parent / "run").start()
                self.instances.append(Instance(path.parent.name, path, sf))
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, instance: Instance) -> None:
        """SIGKILL: a crash or a lost machine, no drain."""
        proc = instance.sipfilter.proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def restart(self, instance: Instance) -> None:
        """Start a stopped (or killed) instance again with the same config, ports and audit log (its log
        of the previous run is kept as sipfilter.log.1)."""
        instance.sipfilter.stop()
        log = instance.sipfilter.workdir / "sipfilter.log"
        if log.exists():
            log.replace(log.with_name("sipfilter.log.1"))
        instance.sipfilter.start()

    def stop(self) -> None:
        for instance in self.instances:
            instance.sipfilter.stop()


def carrier(workdir: Path, port: int, timeout_s: float = 120) -> Sipp:
    """A SIPp carrier answering every INVITE at once (and sipfilter's OPTIONS probes), started and bound."""
    proc = Sipp("carrier_uas.xml", workdir, local_port=port, calls=10**9, pause_ms=0, timeout_s=timeout_s,
                trace_msg=False, name=workdir.name).start()
    proc.wait_listening()
    return proc


def dialer(workdir: Path, instance: Instance, kind: str, cases: Sequence[CallCase], *, rate: float = 20,
           limit: int | None = None, timeout_s: float = 60, trace_short: bool = False,
           no_answer_ms: int | None = None) -> Sipp:
    """A SIPp dialer of trunk `kind` (its source address) playing `cases` to `instance`; started.
    `no_answer_ms`: a call without any answer for that long is given up (failed), as a dialer does to
    leave a dead proxy for another; a live sipfilter answers 100 Trying at once."""
    workdir.mkdir(parents=True, exist_ok=True)
    csv_file = write_calls_csv(workdir / "calls.csv", cases)
    return Sipp("dialer_uac.xml", workdir / "sipp", local_port=free_ports(1)[0], remote=instance.inside,
                calls=len(cases), csv_file=csv_file, rate=rate, limit=limit, pause_ms=0, timeout_s=timeout_s,
                trace_msg=False, trace_short=trace_short, local_ip=TRUNK_KINDS[kind][0],
                extra=["-recv_timeout", str(no_answer_ms)] if no_answer_ms else [], name=workdir.name).start()


def outcomes_by_callee(runs: Iterable[SippRun]) -> dict[str, list[int]]:
    """Callee → final codes of its calls, over every run."""
    out: dict[str, list[int]] = {}
    for run in runs:
        for o in run.outcomes:
            out.setdefault(o.callee, []).append(o.code)
    return out


@dataclass
class Prometheus:
    """A real Prometheus on loopback scraping `targets` (host:port of admin HTTP) every second as job
    `sipfilter`, each with an `instance` label of its own."""

    workdir: Path
    targets: Mapping[str, str]  # instance name → host:port
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 30) -> Prometheus:
        exe = shutil.which("prometheus")
        if exe is None:
            raise HarnessError("prometheus is not installed (Debian package prometheus)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_ports(1)[0]
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "sipfilter", "static_configs": [
                      {"targets": [hostport], "labels": {"sipfilter": name}}
                      for name, hostport in self.targets.items()]}]}
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        with (self.workdir / "prometheus.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [exe, f"--config.file={self.workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                 f"--web.listen-address={LOOPBACK}:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"prometheus exited:\n{(self.workdir / 'prometheus.log').read_text()}")
            ready = f"http://{LOOPBACK}:{self.port}/-/ready"
            with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=1) as resp:
                if resp.status == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise HarnessError("prometheus not ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://{LOOPBACK}:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise HarnessError(f"{expr}: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a query that yields one sample (None when it yields none)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
