"""Drive real SIPp and a real `sipfilter run` as subprocesses on loopback, for tests/e2e and bench/e2e.py.

Picks free ports at run time, writes every trace into a work dir, parses SIPp's files; never asserts
(callers decide) and never leaves a process behind (every start is paired with a kill in `stop()`).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "sipp"
SIPP = shutil.which("sipp")
LOOPBACK = "127.0.0.1"


class HarnessError(RuntimeError):
    """A process of the harness could not be started or did not get ready; the message says which."""


# --------------------------------------------------------------------------------------------- ports


def free_port() -> int:
    """A port number free for both UDP and TCP on 127.0.0.1 right now (SIP listens on both)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise HarnessError("no free UDP+TCP port pair on 127.0.0.1")


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (kept distinct even if the kernel hands the same one back twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


# --------------------------------------------------------------------------------------------- CSV


@dataclass(frozen=True, slots=True)
class CallCase:
    """One line of a dialer CSV: who calls whom, and what sipfilter must do with it."""

    caller: str
    callee: str
    expected: str  # "relay" | "<code>" | "<code> <rule>", e.g. "403 caller-id"


def write_calls_csv(path: Path, cases: Iterable[CallCase]) -> Path:
    """Write a SIPp -inf file (SEQUENTIAL: line N is call N)."""
    lines = ["SEQUENTIAL"] + [f"{c.caller};{c.callee};{c.expected};" for c in cases]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def read_calls_csv(path: Path) -> list[CallCase]:
    cases: list[CallCase] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith(("#", "SEQUENTIAL", "RANDOM", "USER")):
            continue
        caller, callee, expected = [*line.split(";"), "", "", ""][:3]
        cases.append(CallCase(caller, callee, expected))
    return cases


# --------------------------------------------------------------------------------------------- results

_REASON_TEXT = re.compile(r'text\s*=\s*"([^"]*)"', re.IGNORECASE)
_WARNING_TEXT = re.compile(r'^\s*\d{3}\s+\S+\s+"([^"]*)"')
_RULE = re.compile(r"[a-z][a-z0-9_-]*(?:\.[a-z0-9_-]+)+")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one call of dialer_uac.xml, from its OUTCOME log line."""

    call_number: int
    caller: str
    callee: str
    expected: str
    code: int
    reason: str  # the Reason header value, "" when absent
    warning: str  # the Warning header value, "" when absent
    verdict: str  # "match" / "MISMATCH" as judged by SIPp on the code alone

    @property
    def rule(self) -> str | None:
        """The rule sipfilter named: a dotted id (e.g. "callee.consent") in Reason's text or Warning."""
        for header, pattern in ((self.reason, _REASON_TEXT), (self.warning, _WARNING_TEXT)):
            text = pattern.search(header)
            found = _RULE.search(text.group(1) if text else header)
            if found:
                return found.group(0)
        return None

    def problem(self) -> str | None:
        """None when the outcome is what the CSV expects; else a sentence saying how it differs."""
        want = self.expected.split()
        if not want:
            return f"call {self.call_number}: empty expected column"
        if want[0] == "relay":
            return None if self.code == 200 else f"call {self.call_number} {self.caller}->{self.callee}: " \
                f"expected relay, got {self.code} ({self.reason or self.warning})"
        if str(self.code) != want[0]:
            return (f"call {self.call_number} {self.caller}->{self.callee}: expected {self.expected}, "
                    f"got {self.code} ({self.reason or self.warning})")
        if len(want) > 1:
            rule = self.rule
            # "callee.dnc", "callee.dnc.*", "callee.dnc.bloctel" match callee.dnc.bloctel (whole words)
            family = want[1].removesuffix("*").removesuffix(".")
            if rule is None or not (rule == family or rule.startswith(family + ".")):
                return (f"call {self.call_number} {self.caller}->{self.callee}: expected rule {want[1]}, "
                        f"got {rule!r} (Reason: {self.reason!r}, Warning: {self.warning!r})")
        return None


def parse_outcomes(log_text: str) -> list[Outcome]:
    """OUTCOME|number|caller|callee|expected|code|Reason|Warning|verdict lines of dialer_uac.xml."""
    outcomes: list[Outcome] = []
    for line in log_text.splitlines():
        if not line.startswith("OUTCOME|"):
            continue
        parts = line.split("|")
        if len(parts) < 9:
            continue
        number, caller, callee, expected, code = parts[1:6]
        # a '|' inside a header value would shift fields: keep the verdict last and rejoin the middle
        warning, verdict = parts[-2], parts[-1].strip()
        reason = "|".join(parts[6:-2])
        outcomes.append(Outcome(int(number), caller, callee, expected, int(code or 0), reason.strip(),
                                warning.strip(), verdict))
    return sorted(outcomes, key=lambda o: o.call_number)


@dataclass(frozen=True, slots=True)
class SippRun:
    """Everything one SIPp process reported, read from its trace files after it exited."""

    name: str
    returncode: int
    created: int
    successful: int
    failed: int
    retransmissions: int
    out_of_call: int
    outcomes: tuple[Outcome, ...]
    log_lines: tuple[str, ...]  # every <log> line (OUTCOME|…, EARLY|…, REINVITE|…)
    rtts_ms: Mapping[str, tuple[float, ...]]  # rtd name → times, one per call (SIPp's clock: 4 ms steps)
    # From -trace_shortmsg (µs timestamps), per call: initial INVITE sent → first 100, → final response.
    invite_trying_ms: tuple[float, ...]
    invite_final_ms: tuple[float, ...]
    errors: str
    workdir: Path
    elapsed_s: float

    @property
    def invites(self) -> int:
        """Calls a carrier scenario received (INVITE|n lines), health probes not included."""
        return sum(1 for line in self.log_lines if line.startswith("INVITE|"))

    @property
    def probes(self) -> int:
        """OPTIONS health probes a carrier scenario answered (PROBE|n lines)."""
        return sum(1 for line in self.log_lines if line.startswith("PROBE|"))

    def summary(self) -> str:
        """A few lines for assertion messages: counts, then the first lines of SIPp's error log."""
        errors = "\n".join(self.errors.strip().splitlines()[:25])
        return (f"{self.name}: rc={self.returncode} created={self.created} successful={self.successful} "
                f"failed={self.failed} retrans={self.retransmissions} out_of_call={self.out_of_call} "
                f"invites={self.invites} probes={self.probes} "
                f"(traces in {self.workdir})\n{errors}")


def _last_stat_row(stat_file: Path | None) -> dict[str, str]:
    if stat_file is None or not stat_file.exists():
        return {}
    rows = list(csv.reader(stat_file.read_text(errors="replace").splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def _int(row: Mapping[str, str], key: str) -> int:
    try:
        return int(row.get(key, "0") or 0)
    except ValueError:
        return 0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


# --------------------------------------------------------------------------------------------- SIPp


@dataclass
class Sipp:
    """One SIPp process. `start()` it, then `wait()` for its SippRun; `stop()` always kills it."""

    scenario: str  # file name in sipp/, or a path
    workdir: Path
    local_port: int
    remote: str | None = None  # "host:port" for a UAC
    transport: str = "u1"  # u1 | t1 | tn
    calls: int = 1  # -m
    csv_file: Path | None = None
    rate: float | None = None  # calls per second (-r, -rp 1000)
    limit: int | None = None  # max simultaneous calls (-l)
    pause_ms: int | None = None  # -d: duration of <pause/> without its own milliseconds
    timeout_s: float = 30.0  # -timeout: SIPp gives up by itself after this
    trace_msg: bool = True  # every message, for debugging a failure (skip it for the benchmark)
    trace_short: bool = False  # one line per message with µs timestamps: precise INVITE response times
    extra: Sequence[str] = ()
    name: str = ""
    local_ip: str = LOOPBACK  # any 127.x address: a second "host" on loopback
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _started: float = field(default=0.0, init=False)

    def command(self) -> list[str]:
        if SIPP is None:
            raise HarnessError("sipp is not installed (Debian package sip-tester)")
        scenario = Path(self.scenario)
        if not scenario.is_absolute():
            scenario = SCENARIOS / scenario
        cmd = [SIPP]
        if self.remote:
            cmd.append(self.remote)
        cmd += ["-sf", str(scenario), "-i", self.local_ip, "-p", str(self.local_port), "-t", self.transport,
                "-m", str(self.calls), "-timeout", f"{self.timeout_s:g}s", "-timeout_error", "-nostdin",
                "-trace_err", "-trace_stat", "-fd", "1", "-trace_rtt", "-rtt_freq", "1", "-trace_logs",
                "-max_socket", "4096"]
        if self.trace_msg:
            cmd.append("-trace_msg")
        if self.trace_short:
            cmd.append("-trace_shortmsg")
        if self.csv_file is not None:
            cmd += ["-inf", str(self.csv_file)]
        if self.rate is not None:
            cmd += ["-r", f"{self.rate:g}", "-rp", "1000"]
        if self.limit is not None:
            cmd += ["-l", str(self.limit)]
        if self.pause_ms is not None:
            cmd += ["-d", str(self.pause_ms)]
        cmd += list(self.extra)
        return cmd

    def start(self) -> Sipp:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = self.name or Path(self.scenario).stem
        with (self.workdir / "stdout.txt").open("wb") as out, (self.workdir / "stderr.txt").open("wb") as err:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, start_new_session=True)
        self._started = time.monotonic()
        return self

    def wait_listening(self, timeout_s: float = 5.0) -> None:
        """For a UAS: wait until SIPp has bound its port (or died), so the first INVITE is not lost."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError(f"{self.name} exited early: {self._read('stderr.txt')}")
            if _port_bound(self.local_port, tcp=self.transport.startswith("t")):
                return
            time.sleep(0.02)
        raise HarnessError(f"{self.name} did not bind {self.local_port} within {timeout_s}s")

    def wait(self, timeout_s: float | None = None) -> SippRun:
        """Wait for SIPp to exit by itself (-m or -timeout), killing it after `timeout_s` extra seconds."""
        assert self.proc is not None, "start() first"
        try:
            returncode = self.proc.wait(timeout=timeout_s if timeout_s is not None else self.timeout_s + 10)
        except subprocess.TimeoutExpired:
            self.stop()
            returncode = -9
        return self.result(returncode)

    def finish(self, grace_s: float = 5.0) -> SippRun:
        """For a UAS without a call count to reach: SIGUSR1 makes SIPp stop taking calls and exit once its
        calls are done, writing its final statistics."""
        assert self.proc is not None, "start() first"
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGUSR1)
        return self.wait(timeout_s=grace_s)

    def stop(self) -> None:
        """Kill SIPp (its own process group: SIPp forks nothing, but be sure) and reap it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=3)

    def result(self, returncode: int | None = None) -> SippRun:
        if returncode is None:
            assert self.proc is not None
            returncode = self.proc.returncode if self.proc.returncode is not None else -1
        row = _last_stat_row(self._glob("*_.csv") or self._glob("*[0-9].csv"))
        logs_file = self._glob("*_logs.log")
        log_text = logs_file.read_text(errors="replace") if logs_file else ""
        rtts: dict[str, list[float]] = {}
        rtt_file = self._glob("*_rtt.csv")
        if rtt_file is not None:
            for line in rtt_file.read_text(errors="replace").splitlines()[1:]:
                parts = line.split(";")
                if len(parts) >= 3:
                    with contextlib.suppress(ValueError):
                        rtts.setdefault(parts[2].strip(), []).append(float(parts[1]))
        errors_file = self._glob("*_errors.log")
        errors = errors_file.read_text(errors="replace") if errors_file else ""
        errors += self._read("stderr.txt")
        return SippRun(
            name=self.name, returncode=returncode,
            created=_int(row, "TotalCallCreated"), successful=_int(row, "SuccessfulCall(C)"),
            failed=_int(row, "FailedCall(C)"), retransmissions=_int(row, "Retransmissions(C)"),
            out_of_call=_int(row, "OutOfCallMsgs(C)"),
            outcomes=tuple(parse_outcomes(log_text)),
            log_lines=tuple(line for line in log_text.splitlines() if "|" in line),
            rtts_ms={k: tuple(v) for k, v in rtts.items()},
            **_invite_timings(self._glob("*_shortmessages.log")), errors=errors, workdir=self.workdir,
            elapsed_s=time.monotonic() - self._started,
        )

    def _glob(self, pattern: str) -> Path | None:
        found = sorted(self.workdir.glob(pattern))
        return found[-1] if found else None

    def _read(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace") if path.exists() else ""


# What the `sipp` fixture of tests/e2e/conftest.py hands a test: scenario name + Sipp fields → Sipp.
SippFactory = Callable[..., Sipp]


def _invite_timings(path: Path | None) -> dict[str, tuple[float, ...]]:
    """INVITE→100 and INVITE→final times (ms) per call from a UAC's -trace_shortmsg file, whose lines are
    date, time, epoch.µs, S|R, Call-ID, "CSeq:N METHOD", first line."""
    trying: list[float] = []
    final: list[float] = []
    if path is None:
        return {"invite_trying_ms": (), "invite_final_ms": ()}
    sent: dict[str, float] = {}
    got_trying: set[str] = set()
    with path.open(errors="replace") as lines:
        for line in lines:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 7 or fields[5].replace(" ", "").upper() != "CSEQ:1INVITE":
                continue
            when, direction, call_id, first = float(fields[2]), fields[3], fields[4], fields[6]
            if direction == "S" and first.startswith("INVITE "):
                sent.setdefault(call_id, when)
            elif direction == "R" and first.startswith("SIP/2.0 ") and call_id in sent:
                code = int(first[8:11]) if first[8:11].isdigit() else 0
                if code == 100 and call_id not in got_trying:
                    got_trying.add(call_id)
                    trying.append(1000 * (when - sent[call_id]))
                elif code >= 200:
                    final.append(1000 * (when - sent.pop(call_id)))
    return {"invite_trying_ms": tuple(trying), "invite_final_ms": tuple(final)}


def _port_bound(port: int, *, tcp: bool) -> bool:
    """True when a socket listens on 127.0.0.1:`port` (or any address), read from /proc/net: probing by
    binding would race with the process we wait for."""
    table = Path("/proc/net/tcp" if tcp else "/proc/net/udp")
    want_state = "0A" if tcp else "07"  # TCP_LISTEN; UDP sockets sit in TCP_CLOSE (07)
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        address, _, hex_port = fields[1].partition(":")
        if int(hex_port, 16) == port and fields[3] == want_state and address in ("0100007F", "00000000"):
            return True
    return False


# --------------------------------------------------------------------------------------------- sipfilter


# Rule-pack overrides that make a test independent of the clock: the D223-9 window open every day all
# day, no public holidays, a frequency cap no test reaches, and Bloctel's 30-day age rule whatever the date
# (the pack ends it with the service, on 2026-08-10). Every other rule stays as in config/rules/.
ALWAYS_OPEN: dict[str, Any] = {
    "hours": {"weekly": {day: ["00:00-24:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}},
    "holidays": {"source": "none"},
    "frequency": {"cap": 1_000_000},
    "lists": {"bloctel": {"max_age_until": None}},
}


@dataclass(frozen=True, slots=True)
class SipfilterPorts:
    inside: int  # dialer side, UDP and TCP
    outside: int  # carrier side, UDP
    admin: int  # HTTP: /metrics, /healthz, /readyz


def sipfilter_config(
    workdir: Path, ports: SipfilterPorts, carrier_ports: Sequence[int], *,
    trunk: Mapping[str, Any] | None = None, sip: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete config (the schema of config/sipfilter.yaml) for one test: private ports, data and audit
    under `workdir`, the repository's rule packs, one `dialer` trunk (automated, prospecting, French rules
    with the ALWAYS_OPEN overrides) whose targets are `carrier_ports` in priority order. `trunk` and `sip`
    entries replace the defaults key by key."""
    rules_dir = REPO / "config" / "rules"
    rule_packs = {p.stem: str(p) for p in sorted(rules_dir.glob("*.yaml"))}
    rule_packs = rule_packs or {"fr": str(rules_dir / "fr.yaml")}
    sip_section: dict[str, Any] = {
        "inside": [{"transport": "udp", "host": LOOPBACK, "port": ports.inside},
                   {"transport": "tcp", "host": LOOPBACK, "port": ports.inside}],
        "outside": [{"transport": "udp", "host": LOOPBACK, "port": ports.outside}],
        "hostname": "sipfilter.test",
        "limits": {"max_message_bytes": 65536, "max_headers": 256, "max_line_bytes": 8192},
        # Short T1 so that a dead carrier times out (64*T1) in seconds, not in 32 s.
        "timers": {"t1_ms": 50, "t2_ms": 400, "t4_ms": 500},
        "ring_timeout_s": 30,
        "max_call_duration_s": 600,
        "drain_timeout_s": 2,
    }
    sip_section.update(sip or {})
    trunk_section: dict[str, Any] = {
        "match": {"sources": ["127.0.0.0/8"]},
        "account": "e2e-account",
        "rule_pack": "fr",
        "mode": "enforce",
        "automated": True,
        "prospecting": True,
        "sector": None,
        "region": "FR",
        "lists": {"dnc": ["bloctel", "optouts"], "authorised_caller_ids": None},
        "on_store_error": "reject",
        "on_stale_list": "reject",
        "overrides": ALWAYS_OPEN,
        "targets": [{"uri": f"sip:{LOOPBACK}:{port}", "transport": "udp", "priority": i + 1, "weight": 1}
                    for i, port in enumerate(carrier_ports)],
        "headers": {"pass": ["P-Asserted-Identity", "Privacy", "Identity", "User-Agent", "X-*"]},
    }
    trunk_section.update(trunk or {})
    return {
        "sip": sip_section,
        "admin": {"host": LOOPBACK, "port": ports.admin, "token": None},
        "store": {"backend": "embedded", "data_dir": str(workdir / "data"), "redis_url": "redis://127.0.0.1:6379/0"},
        "audit": {"path": str(workdir / "audit" / "decisions.jsonl"), "max_bytes": 10485760, "backups": 1,
                  "on_write_error": "keep-relaying"},
        "logging": {"format": "plain", "level": "info"},
        "rule_packs": rule_packs,
        "trunks": {"dialer": trunk_section},
    }


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    return path


def sipfilter_cli(args: Sequence[str], *, timeout_s: float = 120.0,
                  ok_codes: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run one `sipfilter …` command (lists import, consent add, …) and return it; raise if its exit
    status is not in `ok_codes`."""
    proc = subprocess.run([sys.executable, "-m", "sipfilter", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s, check=False)
    if proc.returncode not in ok_codes:
        raise HarnessError(
            f"sipfilter {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def metric_sum(metrics_text: str, name: str, **labels: str) -> float | None:
    """Sum of every sample of `name` whose labels include `labels`; None when no such sample exists."""
    total: float | None = None
    for line in metrics_text.splitlines():
        m = _METRIC_LINE.match(line)
        if not m or m.group(1) != name:
            continue
        sample_labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if any(sample_labels.get(k) != v for k, v in labels.items()):
            continue
        total = (total or 0.0) + float(m.group(3))
    return total


@dataclass
class Sipfilter:
    """`sipfilter run --config FILE` as a subprocess; `stop()` sends SIGTERM, then SIGKILL."""

    config_path: Path
    ports: SipfilterPorts
    workdir: Path
    env: Mapping[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, ready_timeout_s: float = 20.0) -> Sipfilter:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(self.env or {})
        env["PYTHONUNBUFFERED"] = "1"
        with (self.workdir / "sipfilter.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sipfilter", "run", "--config", str(self.config_path)],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        try:
            self.wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Ready: the SIP ports are bound and /readyz (or /healthz, when there is no /readyz) answers 200."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError(f"sipfilter exited with {self.proc.returncode}:\n{self.log_tail()}")
            if _port_bound(self.ports.inside, tcp=False) and _port_bound(self.ports.outside, tcp=False):
                for path in ("/readyz", "/healthz"):
                    try:
                        status, _ = self.http_get(path, timeout_s=1.0)
                    except OSError as exc:
                        last = str(exc)
                        continue
                    if status == 200:
                        return
                    last = f"{path} -> {status}"
            time.sleep(0.05)
        raise HarnessError(f"sipfilter not ready after {timeout_s}s ({last}):\n{self.log_tail()}")

    def http_get(self, path: str, timeout_s: float = 2.0) -> tuple[int, str]:
        url = f"http://{LOOPBACK}:{self.ports.admin}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return int(resp.status), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")

    def metrics(self) -> str:
        status, body = self.http_get("/metrics")
        if status != 200:
            raise HarnessError(f"/metrics answered {status}")
        return body

    def active_dialogs(self) -> float | None:
        return metric_sum(self.metrics(), "sipfilter_active_dialogs")

    def wait_no_dialogs(self, timeout_s: float = 10.0) -> float | None:
        """Poll /metrics until sipfilter_active_dialogs is 0; return the last value seen."""
        deadline = time.monotonic() + timeout_s
        value = self.active_dialogs()
        while value and time.monotonic() < deadline:
            time.sleep(0.1)
            value = self.active_dialogs()
        return value

    def cpu_seconds(self) -> float:
        """utime + stime of the sipfilter process, from /proc/<pid>/stat."""
        assert self.proc is not None
        return proc_cpu_seconds(self.proc.pid)

    def log_tail(self, lines: int = 60) -> str:
        path = self.workdir / "sipfilter.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        return self.proc.returncode


def proc_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, from /proc/<pid>/stat fields 14 and 15."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # fields after "pid (comm) "; state is fields[0]
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def sipfilter_available() -> str | None:
    """None when `sipfilter run` exists in this tree; else why not (for pytest.skip)."""
    try:
        import importlib

        importlib.import_module("sipfilter.commands.run")
    except ModuleNotFoundError as exc:
        return f"`sipfilter run` is not built yet ({exc})"
    return None
