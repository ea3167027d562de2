"""`sipfilter demo`: a first call in two minutes. A lab sipfilter between a SIPp dialer and a SIPp carrier.

In a temporary directory: a config with one lab trunk (the French rule pack with the hours window opened,
no holidays and the frequency cap lifted: lab overrides, never the shipped pack's values), the sample lists
of config/examples/ plus the test callees of sipp/csv/, and their consents. Then `sipfilter run`, a SIPp
carrier and a SIPp dialer playing sipp/csv/policy_mix.csv; each call's outcome is printed as it happens,
then a summary. Everything it starts is stopped before it returns, whatever happens.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from sipfilter import compiled
from sipfilter.audit import is_decision
from sipfilter.cli import main as cli
from sipfilter.lab import (
    LAB_OVERRIDES,
    LOOPBACK,
    LabError,
    Outcome,
    free_ports,
    parse_outcome,
    port_bound,
    read_calls_csv,
)

CHECKOUT = Path(__file__).resolve().parents[1]  # the source tree this package runs from
ACCOUNT = "demo-account"
TRUNK = "lab"
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class DemoFiles:
    """What the demo reads from a source checkout."""

    rule_pack: Path
    scenarios: Path  # sipp/
    calls: Path  # the dialer CSV
    provisioning: tuple[tuple[str, ...], ...]  # `sipfilter` argument lists, before `--config FILE`

    @classmethod
    def from_checkout(cls, root: Path, calls: Path | None = None) -> DemoFiles:
        examples, tests = root / "config" / "examples", root / "sipp" / "csv"
        files = cls(
            rule_pack=root / "config" / "rules" / "fr.yaml",
            scenarios=root / "sipp",
            calls=calls or tests / "policy_mix.csv",
            provisioning=(
                ("lists", "import", "--list", "bloctel", "--format", "bloctel",
                 str(examples / "bloctel-sample.csv")),
                ("lists", "import", "--list", "bloctel", "--add", str(tests / "bloctel-test.txt")),
                ("lists", "import", "--list", "optouts", str(examples / "optouts-sample.txt")),
                ("lists", "import", "--list", "optouts", "--add", str(tests / "optouts-test.txt")),
                ("consent", "import", "--account", ACCOUNT, str(tests / "consents-test.csv")),
            ),
        )  # fmt: skip
        needed = [files.rule_pack, files.scenarios / "dialer_uac.xml", files.scenarios / "carrier_uas.xml",
                  files.calls, *(Path(args[-1]) for args in files.provisioning)]
        missing = [str(p) for p in needed if not p.is_file()]
        if missing:
            raise LabError(f"sipfilter demo runs from a source checkout; missing: {', '.join(missing)}")
        return files


def demo_config(workdir: Path, rule_pack: Path, inside: int, outside: int, admin: int,
                carrier: int) -> dict[str, Any]:  # fmt: skip
    """The lab config (the schema of config/sipfilter.yaml): loopback ports, data and audit in `workdir`."""
    return {
        "sip": {
            "inside": [{"transport": "udp", "host": LOOPBACK, "port": inside}],
            "outside": [{"transport": "udp", "host": LOOPBACK, "port": outside}],
            "hostname": "sipfilter.demo",
            "drain_timeout_s": 5,
        },
        "admin": {"host": LOOPBACK, "port": admin},
        "store": {"backend": "embedded", "data_dir": str(workdir / "data")},
        "audit": {"path": str(workdir / "audit" / "decisions.jsonl")},
        "logging": {"format": "plain", "level": "info"},
        "rule_packs": {"fr": str(rule_pack)},
        "trunks": {
            TRUNK: {
                "match": {"sources": [f"{LOOPBACK}/32"]},
                "account": ACCOUNT,
                "rule_pack": "fr",
                "automated": True,
                "prospecting": True,
                "lists": {"dnc": ["bloctel", "optouts"]},
                # A lab setting: the D223-9 window open around the clock, no holidays, no frequency cap.
                "overrides": LAB_OVERRIDES,
                "targets": [{"uri": f"sip:{LOOPBACK}:{carrier}", "transport": "udp"}],
                "headers": {"pass": ["P-Asserted-Identity", "Privacy", "User-Agent"]},
            }
        },
    }


# --------------------------------------------------------------------------------------------- processes


@dataclass
class Process:
    """One child process in its own session, its output in a file; `stop()` ends it (TERM, then KILL)."""

    name: str
    argv: Sequence[str]
    cwd: Path
    log: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Process:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(list(self.argv), cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def wait(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = 5.0) -> None:
        self.signal(signal.SIGTERM)
        if self.proc is not None and self.wait(grace_s) is None:
            self.signal(signal.SIGKILL)
            self.wait(5.0)

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _wait_until(check: Callable[[], bool], what: str, timeout_s: float, *watch: Process) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        for p in watch:
            if not p.running():
                raise LabError(f"{p.name} exited while waiting for {what}:\n{p.tail()}")
        if time.monotonic() > deadline:
            raise LabError(f"no {what} after {timeout_s:.0f} s")
        time.sleep(0.05)


def _http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=2) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")
    except OSError:
        return 0, ""


# --------------------------------------------------------------------------------------------- the run


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    carrier_invites: int = 0
    decisions: int = 0

    @property
    def relayed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code == 200]

    @property
    def refused(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code != 200]

    @property
    def problems(self) -> list[str]:
        return [p for o in self.outcomes if (p := o.problem()) is not None]


def describe(o: Outcome) -> str:
    who = f"call {o.call_number:>2}  {o.caller:>14} → {o.callee:<14}"
    if o.code == 200:
        text = "relayed: the carrier answered (200), talk, BYE"
    elif o.rule:
        text = f"refused {o.code} {o.rule}: {o.warning_text or o.reason}"
    else:
        text = f"answered {o.code} (no rule named: from the carrier?)"
    problem = o.problem()
    return f"{who}  {text}" + (f"\n          ✗ the CSV expects {o.expected!r}" if problem else "")


def _follow(path: Path, seen: int) -> tuple[list[str], int]:
    """Complete lines appended to `path` since byte `seen`."""
    try:
        with path.open("rb") as f:
            f.seek(seen)
            data = f.read()
    except FileNotFoundError:
        return [], seen
    end = data.rfind(b"\n") + 1
    return data[:end].decode("utf-8", "replace").splitlines(), seen + end


def _provision(config: Path, files: DemoFiles, out: TextIO) -> None:
    for args in files.provisioning:
        argv = [*args[:2], "--config", str(config), *args[2:]]
        shown = [Path(a).relative_to(CHECKOUT).as_posix() if a.startswith(str(CHECKOUT)) else a for a in argv]
        print(f"  $ sipfilter {' '.join(shown)}", file=out, flush=True)
        said = io.StringIO()
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            status = cli(argv)
        if status != 0:
            raise LabError(f"sipfilter {' '.join(argv)} failed ({status}):\n{said.getvalue()}")


@contextlib.contextmanager
def _stopping(processes: list[Process]) -> Iterator[None]:
    """Stop every process started, on any exit (an error, Ctrl-C, SIGTERM to the demo)."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        for p in reversed(processes):
            p.stop()
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Lab:
    """The demo's ports and files; each `start_…` adds a process that `_stopping` will stop."""

    work: Path
    files: DemoFiles
    sipp: str
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inside, self.outside, self.admin, self.carrier_port, self.dialer_port = free_ports(5)
        self.config = self.work / "sipfilter.yaml"
        self.carrier_dir, self.dialer_dir = self.work / "carrier", self.work / "dialer"

    def write_config(self) -> None:
        data = demo_config(self.work, self.files.rule_pack, self.inside, self.outside, self.admin,
                           self.carrier_port)
        self.config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    def _start(self, process: Process) -> Process:
        self.processes.append(process.start())
        return process

    def start_sipfilter(self) -> Process:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "sipfilter", "run", "--config", str(self.config)]
        return self._start(Process("sipfilter", argv, self.work, self.work / "sipfilter.log", env))

    def start_carrier(self) -> Process:
        self.carrier_dir.mkdir(exist_ok=True)
        argv = [self.sipp, "-sf", str(self.files.scenarios / "carrier_uas.xml"), "-i", LOOPBACK,
                "-p", str(self.carrier_port), "-m", "1000000", "-nostdin", "-trace_logs", "-trace_err"]
        return self._start(Process("SIPp carrier", argv, self.carrier_dir, self.carrier_dir / "sipp.out"))

    def start_dialer(self, calls: int, rate: float) -> Process:
        self.dialer_dir.mkdir(exist_ok=True)
        argv = [self.sipp, f"{LOOPBACK}:{self.inside}", "-sf", str(self.files.scenarios / "dialer_uac.xml"),
                "-inf", str(self.files.calls), "-i", LOOPBACK, "-p", str(self.dialer_port), "-m", str(calls),
                "-r", f"{rate:g}", "-d", "500", "-timeout", "60s", "-timeout_error", "-nostdin",
                "-trace_logs", "-trace_err"]  # fmt: skip
        return self._start(Process("SIPp dialer", argv, self.dialer_dir, self.dialer_dir / "sipp.out"))

    def carrier_invites(self) -> int:
        return sum(line.startswith("INVITE|") for f in self.carrier_dir.glob("*_logs.log")
                   for line in f.read_text(errors="replace").splitlines())  # fmt: skip

    def decisions(self) -> int:
        audit = self.work / "audit" / "decisions.jsonl"
        lines = audit.read_text().splitlines() if audit.exists() else []
        return sum(1 for line in lines if line.strip() and is_decision(json.loads(line)))


def run_demo(*, out: TextIO = sys.stdout, rate: float = 2.0, workdir: Path | None = None, keep: bool = False,
             calls: Path | None = None) -> int:  # fmt: skip
    """The whole demo; 0 when every call ended as its CSV line expects (≥ 1 relayed and ≥ 1 refused)."""
    sipp = shutil.which("sipp")
    if sipp is None:
        raise LabError("SIPp is not installed: `make demo` installs it (Debian package sip-tester)")
    files = DemoFiles.from_checkout(CHECKOUT, calls)
    cases = read_calls_csv(files.calls)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sipfilter-demo-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    lab = Lab(work, files, sipp)
    summary = Summary()
    try:
        with _stopping(lab.processes):
            lab.write_config()
            print(f"sipfilter demo: lab config {lab.config}", file=out)
            print(f"  trunk {TRUNK!r}: French rule pack; lab overrides: hours open around the clock, "
                  "no holidays, no frequency cap", file=out)
            print("provisioning (the sample lists of config/examples/, the test callees and consents of "
                  "sipp/csv/):", file=out, flush=True)
            _provision(lab.config, files, out)
            sipfilter, carrier = lab.start_sipfilter(), lab.start_carrier()
            _wait_until(lambda: port_bound(lab.carrier_port, tcp=False), "SIPp carrier listening", 10,
                        carrier)
            _wait_until(lambda: _http_get(lab.admin, "/readyz")[0] == 200, "sipfilter ready (/readyz 200)",
                        READY_TIMEOUT_S, sipfilter)
            print(f"sipfilter ready on {LOOPBACK}:{lab.inside}, call path {compiled.status} (its log: "
                  f"{sipfilter.log}); SIPp carrier on {LOOPBACK}:{lab.carrier_port}", file=out)
            shown = files.calls.relative_to(CHECKOUT) if files.calls.is_relative_to(CHECKOUT) else files.calls
            print(f"SIPp dialer: {len(cases)} calls from {shown} at {rate:g}/s", file=out, flush=True)
            dialer = lab.start_dialer(len(cases), rate)
            summary.outcomes = _watch(dialer, lab.dialer_dir, out, timeout_s=90)
            carrier.signal(signal.SIGUSR1)  # stop taking calls, exit when the current ones are done
            carrier.wait(5)
            summary.carrier_invites = lab.carrier_invites()
            sipfilter.stop(grace_s=10)
            summary.decisions = lab.decisions()
        kept = keep or workdir is not None
        return _report(summary, len(cases), out, time.monotonic() - started, work, kept)
    finally:
        if workdir is None and not keep:
            shutil.rmtree(work, ignore_errors=True)


def _watch(dialer: Process, dialer_dir: Path, out: TextIO, timeout_s: float) -> list[Outcome]:
    """Print each OUTCOME line of the dialer's log as SIPp writes it, until the dialer exits."""
    outcomes: list[Outcome] = []
    seen = 0
    deadline = time.monotonic() + timeout_s
    while True:
        done = not dialer.running()
        logs = sorted(dialer_dir.glob("*_logs.log"))
        if logs:
            lines, seen = _follow(logs[-1], seen)
            for line in lines:
                outcome = parse_outcome(line)
                if outcome is not None:
                    outcomes.append(outcome)
                    print(describe(outcome), file=out, flush=True)
        if done:
            return outcomes
        if time.monotonic() > deadline:
            raise LabError(f"the SIPp dialer did not finish within {timeout_s:.0f} s:\n{dialer.tail()}")
        time.sleep(0.05)


def _report(summary: Summary, expected_calls: int, out: TextIO, elapsed_s: float, work: Path,
            kept: bool) -> int:  # fmt: skip
    rules = Counter(o.rule or str(o.code) for o in summary.refused)
    print("", file=out)
    by_rule = f" ({', '.join(f'{rule} {n}' for rule, n in sorted(rules.items()))})" if rules else ""
    print(f"{len(summary.outcomes)} of {expected_calls} calls: {len(summary.relayed)} relayed, "
          f"{len(summary.refused)} refused{by_rule}", file=out)
    print(f"the carrier received {summary.carrier_invites} INVITE(s): refused calls never reach it", file=out)
    print(f"audit log: {summary.decisions} decision(s) recorded, one JSON line each", file=out)
    failures = list(summary.problems)
    if len(summary.outcomes) != expected_calls:
        failures.append(f"{expected_calls - len(summary.outcomes)} call(s) without an outcome (see the logs)")
    if summary.carrier_invites != len(summary.relayed):
        failures.append(f"the carrier saw {summary.carrier_invites} INVITE(s) for {len(summary.relayed)} "
                        "relayed call(s)")
    if not summary.relayed or not summary.refused:
        failures.append("the demo must show at least one relayed and one refused call")
    for failure in failures:
        print(f"✗ {failure}", file=out)
    if kept:
        print(f"files kept in {work} (config, sipfilter.log, audit/, SIPp traces)", file=out)
    verdict = "every call ended as sipp/csv/policy_mix.csv expects" if not failures else "FAILED"
    print(f"{verdict}; all processes stopped ({elapsed_s:.1f} s)", file=out, flush=True)
    return 0 if not failures else 1

