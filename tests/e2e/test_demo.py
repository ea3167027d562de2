"""`sipfilter demo` (what `make demo` runs after setup): real sipfilter, real SIPp dialer and carrier; at
least one call relayed and one refused with its rule, printed as they happen, exit 0, nothing left running."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sipp_harness import REPO, SIPP

from sipfilter.audit import is_decision

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(SIPP is None, reason="sipp is not installed")]


def _processes_inside(workdir: Path) -> list[str]:
    """Processes whose working directory or command line is in `workdir` (the demo's children)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(workdir)) or str(workdir) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_demo_relays_and_refuses_then_stops_everything(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    argv = [sys.executable, "-m", "sipfilter", "demo", "--rate", "5", "--workdir", str(workdir)]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    relayed = re.findall(r"^call +\d+ .* relayed: the carrier answered", out, re.MULTILINE)
    refused = re.findall(r"^call +\d+ .* refused (\d{3}) ([a-z-]+(?:\.[a-z0-9-]+)+): ", out, re.MULTILINE)
    assert len(relayed) >= 1 and len(refused) >= 1, out
    assert ("603", "callee.dnc.bloctel") in refused and ("403", "caller-id.mobile") in refused, out
    assert "every call ended as sipp/csv/policy_mix.csv expects; all processes stopped" in out
    assert f"the carrier received {len(relayed)} INVITE(s)" in out
    assert _processes_inside(workdir) == []
    lines = [json.loads(line) for line in (workdir / "audit" / "decisions.jsonl").read_text().splitlines()]
    decisions = [line for line in lines if is_decision(line)]  # record events (imports) share the log
    assert len(decisions) == len(relayed) + len(refused)
    assert f"audit log: {len(decisions)} decision(s) recorded" in out


def test_demo_without_sipp_says_what_to_install(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))  # no sipp on PATH
    proc = subprocess.run([sys.executable, "-m", "sipfilter", "demo"], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 2 and "SIPp is not installed" in proc.stderr and "sip-tester" in proc.stderr
