"""A list a trunk checks but the store never imported is named: by `sipfilter config check`, in the log at
start-up and on reload, and in the `/readyz` body of a real `sipfilter run`."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))
from sipp_harness import Sipfilter, SipfilterPorts, free_ports, sipfilter_cli, sipfilter_config, write_config

from sipfilter.cli import main


def _config(tmp_path: Path, ports: SipfilterPorts | None = None) -> Path:
    ports = ports or SipfilterPorts(5060, 5080, 9090)  # not bound by `config check`
    return write_config(tmp_path / "sipfilter.yaml", sipfilter_config(tmp_path, ports, [5070]))


def _import(config: Path, name: str, tmp_path: Path) -> None:
    source = tmp_path / f"{name}.txt"
    source.write_text("+33612000100\n", encoding="ascii")
    sipfilter_cli(["lists", "import", "--config", str(config), "--list", name, "--quiet", str(source)])


def test_config_check_names_the_lists_never_imported(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert main(["config", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "warning: list 'bloctel' was never imported: trunk dialer refuses every call (list.stale)" in out
    assert "warning: list 'optouts' was never imported" in out
    _import(config, "bloctel", tmp_path)
    assert main(["config", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "'bloctel'" not in out and "warning: list 'optouts' was never imported" in out
    assert main(["config", "check", "--no-store", "--config", str(config)]) == 0
    assert "warning" not in capsys.readouterr().out


def test_allow_and_alert_says_calls_go_unchecked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["trunks"]["dialer"]["on_stale_list"] = "allow-and-alert"
    data["trunks"]["dialer"]["lists"]["authorised_caller_ids"] = "npv-numbers"
    config.write_text(yaml.safe_dump(data))
    assert main(["config", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "list 'bloctel' was never imported: trunk dialer relays calls without checking it" in out
    assert "list 'npv-numbers' was never imported: trunk dialer refuses every automated call" in out


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[Sipfilter, Path]]:
    ports = SipfilterPorts(*free_ports(3))
    config = _config(tmp_path, ports)
    _import(config, "bloctel", tmp_path)  # optouts: never
    proc = Sipfilter(config, ports, tmp_path / "run")
    proc.wait_ready = lambda timeout_s: None  # type: ignore[method-assign]  # it will not be ready
    try:
        yield proc.start(), config
    finally:
        proc.stop()


def _readyz(proc: Sipfilter, want_status: int, timeout_s: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        try:
            last = proc.http_get("/readyz")
        except OSError:
            pass
        else:
            if last[0] == want_status:
                return dict(json.loads(last[1]))
        time.sleep(0.1)
    raise AssertionError(f"/readyz never answered {want_status}: {last}\n{proc.log_tail()}")


def _wait_log(proc: Sipfilter, text: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in proc.log_tail(200):
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{proc.log_tail()}"
        time.sleep(0.1)


@pytest.mark.e2e
def test_readyz_and_the_log_name_the_missing_list_until_it_is_imported(
        started: tuple[Sipfilter, Path], tmp_path: Path) -> None:
    proc, config = started
    body = _readyz(proc, 503)
    assert body["missing_lists"] == ["optouts"]
    assert body["checks"] == {**body["checks"], "lists_loaded": False}  # type: ignore[dict-item]
    _wait_log(proc, "WARNING sipfilter.app: list 'optouts' was never imported: trunk dialer refuses every "
                    "call")
    # A reload that adds a list nobody imported names it too.
    _import(config, "optouts", tmp_path)
    data = yaml.safe_load(config.read_text())
    data["trunks"]["dialer"]["lists"]["dnc"].append("vip-optouts")
    config.write_text(yaml.safe_dump(data))
    assert proc.proc is not None
    os.kill(proc.proc.pid, signal.SIGHUP)
    _wait_log(proc, "list 'vip-optouts' was never imported")
    assert _readyz(proc, 503)["missing_lists"] == ["vip-optouts"]
    _import(config, "vip-optouts", tmp_path)
    assert _readyz(proc, 200)["missing_lists"] == []
