"""SIGHUP applies everything the config says, to a running `sipfilter run`: the admin token (the old one stops
working at once), the admin port, the audit log's path and on_write_error; what only a restart applies is
named in the log and in /metrics. Real process, real sockets, real files."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from sipp_harness import metric_sum, sipfilter_available
from test_run import CALLEE, Udp, _invite, _reply

from sipfilter.lab import free_port

_MISSING = sipfilter_available()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]


def _http(port: int, path: str, token: str | None = None, timeout_s: float = 3.0) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


class Running:
    def __init__(self, proc: Any, path: Path, workdir: Path, carrier: Udp, dialer: Udp) -> None:
        self.proc, self.path, self.workdir, self.carrier, self.dialer = proc, path, workdir, carrier, dialer

    @property
    def config(self) -> dict[str, Any]:
        return dict(yaml.safe_load(self.path.read_text()))

    def reload(self, config: dict[str, Any], expect: str = "config reloaded") -> None:
        mark = self.proc.log_tail(10_000).count(expect)
        self.path.write_text(yaml.safe_dump(config, sort_keys=False))
        os.kill(self.proc.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.proc.log_tail(10_000).count(expect) == mark:
            assert time.monotonic() < deadline, self.proc.log_tail()
            time.sleep(0.05)

    def call(self) -> bytes:
        """One allowed INVITE: the carrier answers 486; returns the dialer's final answer."""
        inside = ("127.0.0.1", self.proc.ports.inside)
        call_id = f"c-{uuid.uuid4().hex[:8]}"
        self.dialer.sock.sendto(_invite(self.dialer, inside[1], call_id), inside)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                data, _ = self.dialer.sock.recvfrom(65535)
                final = data.startswith(b"SIP/2.0 ") and not data.startswith(b"SIP/2.0 1")
                if final and f"Call-ID: {call_id}\r\n".encode() in data:  # not a retransmission of another
                    return data
            except TimeoutError:
                pass
            try:
                b_inv, b_addr = self.carrier.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if b_inv.startswith(b"INVITE "):
                self.carrier.sock.sendto(_reply(b_inv, "486 Busy Here"), b_addr)
        raise AssertionError("no final answer to the dialer")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    from sipfilter_provision import provision
    from sipp_harness import Sipfilter, SipfilterPorts, free_ports, sipfilter_config, write_config

    carrier, dialer = Udp(), Udp()
    proc = None
    try:
        ports = SipfilterPorts(*free_ports(3))
        config = sipfilter_config(tmp_path, ports, [carrier.port])
        config["admin"] = {"host": "127.0.0.1", "port": ports.admin,
                           "token_file": str(tmp_path / "secrets" / "admin.token")}  # fmt: skip
        path = write_config(tmp_path / "sipfilter.yaml", config)
        provision(path, tmp_path)
        proc = Sipfilter(path, ports, tmp_path / "run").start()
        yield Running(proc, path, tmp_path, carrier, dialer)
    finally:
        if proc is not None:
            proc.stop()
        carrier.sock.close()
        dialer.sock.close()


def test_sighup_applies_a_new_admin_token_and_port(running: Running) -> None:
    token_file = running.workdir / "secrets" / "admin.token"
    first = token_file.read_text().strip()  # created at start, for the operator to read
    assert len(first) >= 32 and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    port = running.proc.ports.admin
    assert _http(port, "/api/lists", first)[0] == 200
    assert _http(port, "/api/lists")[0] == 401
    # Rotate the token and move the port.
    second = "r0tated-" + uuid.uuid4().hex + uuid.uuid4().hex
    token_file.write_text(second + "\n")
    config = running.config
    new_port = free_port()
    config["admin"]["port"] = new_port
    running.reload(config)
    with pytest.raises(OSError):
        _http(port, "/healthz", timeout_s=1.0)
    assert _http(new_port, "/api/lists", first)[0] == 401  # the old token opens nothing any more
    assert _http(new_port, "/api/lists", second)[0] == 200
    # A port that cannot be bound: the reload is refused as a whole, the running admin port stays.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config["admin"]["port"] = taken.getsockname()[1]
        token_file.write_text("t" * 40 + "\n")
        running.reload(config, expect="config reload refused")
    assert _http(new_port, "/api/lists", second)[0] == 200
    assert _http(new_port, "/api/lists", "t" * 40)[0] == 401


def test_sighup_applies_the_audit_log_path_and_its_error_policy(running: Running) -> None:
    config = running.config
    first = Path(config["audit"]["path"])
    assert running.call().startswith(b"SIP/2.0 486")
    before = first.read_text().count("\n")
    assert before >= 1
    second = running.workdir / "audit2" / "decisions.jsonl"
    config["audit"]["path"] = str(second)
    running.reload(config)
    assert running.call().startswith(b"SIP/2.0 486")
    assert first.read_text().count("\n") == before  # nothing more in the old file
    assert [json.loads(x)["to"] for x in second.read_text().splitlines()] == [CALLEE]
    # stop-relaying on a path that cannot be written: the next allowed call is refused 503.
    blocker = running.workdir / "not-a-directory"
    blocker.write_text("")
    config["audit"].update(path=str(blocker / "decisions.jsonl"), on_write_error="stop-relaying")
    running.reload(config)
    answer = running.call()
    assert answer.startswith(b"SIP/2.0 503") and b"audit log not writable" in answer


def test_sighup_names_what_needs_a_restart(running: Running) -> None:
    config = running.config
    old_inside = running.proc.ports.inside
    config["sip"]["inside"] = [{"transport": "udp", "host": "127.0.0.1", "port": free_port()}]
    running.reload(config)
    assert "sip.inside changed: it takes effect at the next restart" in running.proc.log_tail()
    metrics = _http(running.proc.ports.admin, "/metrics")[1]
    assert metric_sum(metrics, "sipfilter_config_restart_required", key="sip.inside") == 1
    assert metric_sum(metrics, "sipfilter_config_restart_required", key="store.backend") == 0
    assert running.call().startswith(b"SIP/2.0 486")  # the running listener still serves
    assert running.proc.ports.inside == old_inside
