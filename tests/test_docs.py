"""The command blocks of README.md, docs/sipp.md and docs/admin-api.md, run in order on a fresh copy of the
checkout, as a reader would type them: every ```sh block must exit 0 (or the status its marker says).

A block may be preceded by a marker, `<!-- docs-test: DIRECTIVE; DIRECTIVE -->`, invisible once rendered:
  skip (why)            not run (the test suite itself): keep these few
  exit N                the block must exit N instead of 0
  expect TEXT           its output must contain TEXT
  background            started and left running (a server, a SIPp carrier), stopped at the end of the page
  until udp $PORT       (with background) wait until that UDP port is bound
  until http URL        (with background) wait until URL answers 200
  stop-background       first stop what the page's earlier background blocks started
  trunk                 (a yaml block) the test trunk docs/sipp.md asks for: the sipfilter under test uses it
Blocks run with bash -e -o pipefail from the copy's root; variables a block sets are seen by the next ones.
Addresses and ports are the reader's to choose: the test gives each page free loopback ones through the
variables the pages define (ADMIN, SIPFILTER, TESTER, CARRIER_PORT, …), and the example config's ports.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from checkout_copy import ROOT, copy_checkout

from sipfilter.lab import free_ports, port_bound

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

MARKER = re.compile(r"^\s*<!-- docs-test: (.*?) -->\s*$")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
BLOCK_TIMEOUT_S = 300.0
READY_TIMEOUT_S = 180.0  # a first `make run` makes .venv (from uv's cache) before it starts


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    text: str
    directives: tuple[str, ...]

    def has(self, name: str) -> bool:
        return any(d == name or d.startswith(name + " ") for d in self.directives)

    def arg(self, name: str) -> str | None:
        return next((d[len(name):].strip() for d in self.directives if d.startswith(name + " ")), None)

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str) -> list[Block]:
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, indent, lang = i, fence.group(1), fence.group(2)
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        above = start - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        marker = MARKER.match(lines[above]) if above >= 0 else None
        directives = tuple(d.strip() for d in marker.group(1).split(";")) if marker else ()
        out.append(Block(doc, start + 1, lang, textwrap.dedent("\n".join(body)) + "\n", directives))
    return out


def _ready(check: str, env: dict[str, str]) -> bool:
    kind, _, target = check.partition(" ")
    target = _expand(target, env)
    if kind == "udp":
        return port_bound(int(target), tcp=False)
    try:
        with urllib.request.urlopen(target, timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), text)


@dataclass
class Session:
    """One page's blocks, run in order in `cwd` with `env` carried from block to block."""

    cwd: Path
    env: dict[str, str]
    work: Path
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)
    count: int = 0

    def _script(self, block: Block) -> Path:
        self.count += 1
        path = self.work / f"block-{self.count:02d}.sh"
        path.write_text(block.text, encoding="utf-8")
        return path

    def run(self, block: Block) -> None:
        if block.has("stop-background"):
            self.stop_background()
        if block.has("background"):
            self.start_background(block)
            return
        script, env_out = self._script(block), self.work / f"env-{self.count:02d}"
        want = int(block.arg("exit") or 0)
        read_end, write_end = os.pipe()  # a terminal that types nothing (SIPp reads its keyboard)
        try:
            proc = subprocess.run(
                ["bash", "-c", 'set -eo pipefail; set -a; source "$1"; env -0 > "$2"', "block", script,
                 env_out], cwd=self.cwd, env=self.env, stdin=read_end, capture_output=True, text=True,
                timeout=BLOCK_TIMEOUT_S, check=False)
        finally:
            os.close(read_end)
            os.close(write_end)
        said = f"{block} ({self.work / script.name}):\n{block.text}\n--- stdout\n{proc.stdout[-6000:]}" \
               f"\n--- stderr\n{proc.stderr[-4000:]}"
        assert proc.returncode == want, f"exit {proc.returncode}, not {want}: {said}"
        expected = block.arg("expect")
        if expected is not None:
            assert expected in proc.stdout, f"{expected!r} not in the output of {said}"
        if want == 0 and env_out.exists():
            pairs = (item.split("=", 1) for item in env_out.read_text().split("\0") if "=" in item)
            self.env = {k: v for k, v in pairs if not k.startswith("BASH_FUNC_")}

    def start_background(self, block: Block) -> None:
        script = self._script(block)
        log = (self.work / f"background-{self.count:02d}.log").open("wb")
        read_end, write_end = os.pipe()
        proc = subprocess.Popen(["bash", "-c", 'set -a; source "$1"', "block", str(script)], cwd=self.cwd,
                                env=self.env, stdin=read_end, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        os.close(read_end)
        proc._docs_test_stdin = write_end  # type: ignore[attr-defined]  # closed when stopped
        self.background.append(proc)
        until = block.arg("until")
        if until is None:
            return
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(until, self.env):
            if proc.poll() is not None and not block.text.rstrip().endswith("&"):
                raise AssertionError(f"{block} exited ({proc.returncode}) before {until}:\n"
                                     f"{(self.work / log.name).read_text(errors='replace')[-4000:]}")
            assert time.monotonic() < deadline, f"{block}: no {until} after {READY_TIMEOUT_S:.0f} s"
            time.sleep(0.2)

    def stop_background(self) -> None:
        for proc in reversed(self.background):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            with contextlib.suppress(OSError):  # a group outlives its leader: kill what is left of it
                os.killpg(proc.pid, signal.SIGKILL)
            os.close(proc._docs_test_stdin)  # type: ignore[attr-defined]
        self.background.clear()

    def play(self, doc: str) -> list[Block]:
        ran = []
        try:
            for block in blocks(doc):
                if block.lang != "sh" or block.has("skip"):
                    continue
                self.run(block)
                ran.append(block)
        finally:
            self.stop_background()
        return ran


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh copy of the checkout, the example config on free ports (as a reader would pick ports no
    other process uses); its .venv is made by the first command that needs one, as on a fresh clone."""
    path = copy_checkout(tmp_path_factory.mktemp("docs") / "sipfilter")
    yield path


def _base_env(clone: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "VIRTUAL_ENV"))}
    # The mypyc build is the suite's to test (tests/test_compiled.py): here, commands on the pure call path.
    env["SIPFILTER_PURE"] = "1"
    env["PATH"] = f"{clone / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _example_on_free_ports(clone: Path) -> dict[str, int]:
    inside, outside, admin, carrier = free_ports(4)
    config = clone / "config" / "sipfilter.yaml"
    text = config.read_text()
    for old, new in ((": 5060 }", f": {inside} }}"), (": 5080 }", f": {outside} }}"),
                     ("port: 9090", f"port: {admin}"), ("sip:127.0.0.1:5070", f"sip:127.0.0.1:{carrier}")):
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    return {"inside": inside, "admin": admin}


def _start_sipfilter(clone: Path, config: Path, env: dict[str, str], log: Path,
                     ready_path: str, admin: int) -> subprocess.Popen[bytes]:  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen([str(clone / ".venv" / "bin" / "sipfilter"), "run", "--config", str(config)],
                                cwd=clone, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _ready(f"http http://127.0.0.1:{admin}{ready_path}", env):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _ensure_venv(clone: Path, env: dict[str, str]) -> None:
    """What README's first command does on a fresh clone (the other pages assume it was done)."""
    if not (clone / ".venv" / "bin" / "sipfilter").exists():
        subprocess.run([str(clone / "scripts" / "setup")], cwd=clone, env=env, check=True, timeout=600,
                       capture_output=True)


# --------------------------------------------------------------------------------------------- the pages


def test_readme(clone: Path, tmp_path: Path) -> None:
    ports = _example_on_free_ports(clone)
    env = _base_env(clone) | {"ADMIN": f"http://127.0.0.1:{ports['admin']}",
                              "CONFIG": str(clone / "config" / "sipfilter.yaml")}  # "your production config"
    ran = Session(clone, env, tmp_path).play("README.md")
    assert any("make demo" in b.text for b in ran) and any("make run" in b.text for b in ran)
    skipped = [b for b in blocks("README.md") if b.has("skip")]
    assert [b.text.strip() for b in skipped] == ["make test"]  # the tiny list of what cannot run here


def test_sipp_page(clone: Path, tmp_path: Path) -> None:
    env = _base_env(clone)
    _ensure_venv(clone, env)
    inside, outside, admin, carrier, carrier2, dialer = free_ports(6)
    (trunk_block,) = [b for b in blocks("docs/sipp.md") if b.has("trunk")]
    trunk_yaml = (trunk_block.text.replace("10.0.0.9/32", "127.0.0.1/32")
                  .replace("sip:10.0.0.9:5070", f"sip:127.0.0.1:{carrier}")
                  .replace("sip:10.0.0.9:5072", f"sip:127.0.0.1:{carrier2}"))
    config: dict[str, Any] = {
        "sip": {"inside": [{"transport": "udp", "host": "127.0.0.1", "port": inside},
                           {"transport": "tcp", "host": "127.0.0.1", "port": inside}],
                "outside": [{"transport": "udp", "host": "127.0.0.1", "port": outside}],
                "hostname": "sipfilter.test"},
        "admin": {"host": "127.0.0.1", "port": admin},
        "store": {"data_dir": str(tmp_path / "data")},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "rule_packs": {"fr": str(clone / "config" / "rules" / "fr.yaml")},
        **yaml.safe_load(trunk_yaml),
    }
    config_path = tmp_path / "sipfilter.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    page_env = env | {"SIPFILTER": f"127.0.0.1:{inside}", "ADMIN": f"http://127.0.0.1:{admin}", "TOKEN": "",
                      "TESTER": "127.0.0.1", "CARRIER_PORT": str(carrier), "CARRIER2_PORT": str(carrier2),
                      "DIALER_PORT": str(dialer), "CONFIG": str(config_path)}
    work = tmp_path / "page"
    work.mkdir()
    sipfilter = _start_sipfilter(clone, config_path, env, tmp_path / "sipfilter.log", "/healthz", admin)
    try:
        ran = Session(clone, page_env, work).play("docs/sipp.md")
    finally:
        _stop(sipfilter)
    assert sum("dialer_uac" in b.text for b in ran) >= 6, [str(b) for b in ran]
    assert not [b for b in blocks("docs/sipp.md") if b.has("skip")]


def test_admin_api_page(clone: Path, tmp_path: Path) -> None:
    env = _base_env(clone)
    _ensure_venv(clone, env)
    (admin,) = free_ports(1)
    token = secrets.token_hex(16)
    config = yaml.safe_load((clone / "config" / "sipfilter.yaml").read_text())
    inside, outside = free_ports(2)
    config["sip"]["inside"] = [{"transport": "udp", "host": "127.0.0.1", "port": inside}]
    config["sip"]["outside"] = [{"transport": "udp", "host": "127.0.0.1", "port": outside}]
    config["admin"] = {"host": "127.0.0.1", "port": admin, "token": token}
    config["store"]["data_dir"] = str(tmp_path / "data")
    config["audit"]["path"] = str(tmp_path / "audit.jsonl")
    config["rule_packs"] = {"fr": str(clone / "config" / "rules" / "fr.yaml")}
    config_path = tmp_path / "sipfilter.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    work = tmp_path / "page"
    work.mkdir()
    sipfilter = _start_sipfilter(clone, config_path, env, tmp_path / "sipfilter.log", "/healthz", admin)
    try:
        ran = Session(clone, env | {"ADMIN": f"http://127.0.0.1:{admin}", "TOKEN": token}, work).play(
            "docs/admin-api.md")
    finally:
        _stop(sipfilter)
    routes = " ".join(b.text for b in ran)
    for route in ("/api/refusals", "/api/consents", "/api/contracts", "/api/lists", "/readyz", "/metrics"):
        assert route in routes, route


def test_markers_parse() -> None:
    """Every marker names known directives (a typo would silently run or skip a block)."""
    known = ("skip", "exit", "expect", "background", "until", "stop-background", "trunk")
    for doc in ("README.md", "docs/sipp.md", "docs/admin-api.md"):
        for block in blocks(doc):
            for directive in block.directives:
                assert directive.split(" ", 1)[0] in known, f"{block}: {directive!r}"
            if block.has("until"):
                assert block.has("background") and block.arg("until").split(" ")[0] in ("udp", "http")
