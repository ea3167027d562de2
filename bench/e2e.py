#!/usr/bin/env python3
"""End-to-end benchmark: SIPp dialer → sipfilter → SIPp carrier at stepped call rates, three traffic mixes.

Prints figures (calls, failures, retransmissions, INVITE→final p50/p99 and INVITE→100 p99 in ms from
SIPp's µs message timestamps, sipfilter CPU per call, SIPp's own CPU, and a calibration figure);
it asserts nothing and is not part of the test suite. Everything runs on 127.0.0.1 on free ports.

sipfilter's CPU per call is measured over one window per step: from the dialer's start until `--settle`
seconds after it exits (default 64*T1 + T4 + 1 s: every timer the calls started has fired by then, so
their deferred work is counted), minus sipfilter's idle CPU rate (watcher, probes) measured for `--idle`
seconds before any traffic. Nothing polls sipfilter inside the window (a /metrics scrape costs milliseconds);
the leftover dialogs are read after it. Each deployment first runs an unreported warm-up (`--warmup`).

`calib µs` is the machine's speed just before each step: the CPU time of `sum(range(1000))` in this process,
best of 300. This machine's speed drifts by ±30 % over a day, so compare CPU figures of different runs
through it (or better, alternate the runs being compared). It measures the interpreter too: the header names
the one that runs sipfilter (Debian's python3 gives about half pyenv's default build's figure), and whether
its call path is compiled (scripts/compile) or pure Python (SIPFILTER_PURE=1 compares the two).

`wake` and `preempt` are the server's context switches in the window per attempted call, summed over its
processes and threads (/proc/<pid>/task/*/status): voluntary ones (a loop or worker that slept waiting for
traffic and was woken) and involuntary ones (a runnable server descheduled, for SIPp or another of its own
processes on a shared core). They tell the cost of more workers apart from the cost of the work itself.

`--store redis` runs sipfilter on a Redis store: the bench starts its own redis-server (AOF, fsync every
second, on a free loopback port) and provisions it through the CLI as for the embedded store. Several stores
(`--store embedded,redis`) are deployed side by side and alternated step by step (each rate runs on one,
then the other), so their figures share the machine's state; the `store` column says which. `--redis-unix`:
sipfilter reaches that redis-server through a unix socket in its directory (unix://…, as a Redis on the same
host would be deployed) instead of TCP on loopback. `--pin`: sipfilter (every thread) runs on CPU 0, and the
SIPp dialer and carrier and the redis-server on CPU 1, the same for every store, so that the Redis round trip
does not wait for a core that SIPp or sipfilter itself holds (both stores are pinned alike: compare within
one run).

`--kamailio` measures the anchor instead of sipfilter: Kamailio 5.6 (`kamailio -DD -E`, config template
bench/kamailio/kamailio.cfg) doing the same filtering — NPV caller-ID prefixes on From and
P-Asserted-Identity (403 caller-id.npv), do-not-call lookup of the callee in an htable loaded at start-up
with the same 1M numbers (603 callee.dnc.bloctel), record-route and stateful relay (tm) to the carrier — with
the same SIPp traffic, calls CSVs, columns and window. Its CPU is that of the whole process tree (main, UDP
workers, timers, ctl: utime+stime from /proc), idle rate subtracted the same way; `left` is tm's current
transactions after the window (Kamailio keeps no dialog state). Kamailio checks no consent, writes no audit
and keeps no call records: the consented callees are simply relayed. `--kamailio-children` UDP workers
(default 2: see KAMAILIO_CHILDREN). Needs `apt-get install -y kamailio kamailio-sqlite-modules` (Debian 12:
5.6.3); a benchmark-only tool, never a test or CI dependency.

    .venv/bin/python bench/e2e.py                       # mixes rejected, relayed, mixed at 100…1500 calls/s
    .venv/bin/python bench/e2e.py --mix mixed --rates 500,1000 --duration 20
    .venv/bin/python bench/e2e.py --kamailio --mix mixed --rates 1000  # the anchor, same traffic
    .venv/bin/python bench/e2e.py --mix mixed --rates 400 --settle 6 --profile-dir /tmp/prof  # py-spy
    .venv/bin/python bench/e2e.py --direct --mix relayed # SIPp straight to SIPp: what SIPp alone can do here
    .venv/bin/python bench/e2e.py --mix mixed --rates 1000 --identity sign    # a trunk that signs its B-legs
    .venv/bin/python bench/e2e.py --mix mixed --rates 1000 --identity verify  # signed dialer, cached x5u
    .venv/bin/python bench/e2e.py --store embedded,redis --mix mixed --rates 1000  # both stores, alternated
    .venv/bin/python bench/e2e.py --store embedded,redis --redis-unix --pin --mix mixed --rates 1000,1000
    SIPFILTER_GC_STATS=1 .venv/bin/python bench/e2e.py --keep …  # sipfilter.log: GC collections and pauses

`--identity` (docs/identity.md) measures STIR/SHAKEN: `sign`, the trunk signs every relayed call; `verify`,
the dialer sends a PASSporT per call (signed before the run with a test STI PKI, its x5u chain served over
HTTPS from this process and fetched once by sipfilter) and the trunk verifies it. Compare with a run without.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from redis_procs import RedisProcess, redis_missing  # noqa: E402  (the harness is shared with tests/e2e)
from sipfilter_provision import Deployment, deploy  # noqa: E402
from sipp_harness import (  # noqa: E402
    LOOPBACK,
    CallCase,
    HarnessError,
    Sipp,
    SippRun,
    free_ports,
    percentile,
    proc_cpu_seconds,
    sipfilter_available,
    write_calls_csv,
)

from sipfilter import compiled  # noqa: E402  (what the sipfilter it starts loads: same venv, same env)

MIXES = ("rejected", "relayed", "mixed")
STORES = ("embedded", "redis")
NPV_CALLERS = [f"+33162{n:06d}" for n in range(1, 51)] + [f"+33949{n:06d}" for n in range(1, 51)]
T1_S, T4_S = 0.5, 5.0  # production timers
BAD_CALLERS = ["+33612345678", "+33140000000", "0892000000", "+33299000000"]  # mobile, geographic, premium
KAMAILIO_CFG = REPO / "bench" / "kamailio" / "kamailio.cfg"
# UDP workers of the Kamailio anchor: 2, one per core of this machine. They never block after start-up (no
# DB, no DNS), so two keep both cores busy when SIPp leaves them free; more only add context switches and
# contention on tm's locks (Kamailio's default of 8 is for workers that wait on databases); measured in
# docs/performance.md.
KAMAILIO_CHILDREN = 2


@dataclass(frozen=True, slots=True)
class Step:
    mix: str
    rate: float
    attempted: int
    completed: int
    failed: int
    retransmissions: int
    p50_ms: float | None  # INVITE → final response
    p99_ms: float | None
    trying_p99_ms: float | None  # INVITE → 100 Trying: sipfilter's own hop, without the carrier
    cpu_s: float | None
    sipp_cpu_s: float  # both SIPp processes: they share the 2 cores with sipfilter
    wall_s: float
    idle_cpu_rate: float = 0.0  # sipfilter CPU s/s without traffic, subtracted from cpu_s
    dialogs_left: float | None = None  # sipfilter_active_dialogs after the window (0 when all ended)
    sys_share: float | None = None  # kernel (stime) share of sipfilter's CPU in the window: sendto/recvfrom
    calib_us: float | None = None  # sum(range(1000)) just before the step: the machine's speed at that time
    store: str = "-"  # the sipfilter store backend (embedded, redis), "-" for Kamailio or --direct
    # Context switches of the server's threads in the window, per attempted call: voluntary ones are the
    # wake-ups (an event loop or a worker that slept in epoll/recvfrom), involuntary ones the preemptions (a
    # runnable server descheduled for SIPp or another worker on a shared core).
    wakeups_per_call: float | None = None
    preempted_per_call: float | None = None

    def row(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        known = self.cpu_s is not None and self.attempted > 0
        cpu = f"{1000 * (self.cpu_s or 0) / self.attempted:.3f}" if known else "-"
        per_call = f"{1e6 * (self.cpu_s or 0) / self.attempted:.0f}" if known else "-"
        return (f"{self.mix:<9}{self.rate:>7.0f}{self.attempted:>10}{self.completed:>10}{self.failed:>8}"
                f"{self.retransmissions:>9}{ms(self.p50_ms):>8}{ms(self.p99_ms):>8}{ms(self.trying_p99_ms):>9}{cpu:>12}{per_call:>10}"
                f"{self.sipp_cpu_s:>9.1f}{self.wall_s:>8.1f}{1000 * self.idle_cpu_rate:>10.1f}"
                f"{'-' if self.dialogs_left is None else f'{self.dialogs_left:.0f}':>6}"
                f"{'-' if self.sys_share is None else f'{100 * self.sys_share:.0f}':>6}"
                f"{'-' if self.calib_us is None else f'{self.calib_us:.1f}':>9}"
                f"{'-' if self.wakeups_per_call is None else f'{self.wakeups_per_call:.2f}':>7}"
                f"{'-' if self.preempted_per_call is None else f'{self.preempted_per_call:.2f}':>8}"
                f"  {self.store}")


HEADER = (f"{'mix':<9}{'rate/s':>7}{'attempted':>10}{'completed':>10}{'failed':>8}{'retrans':>9}"
          f"{'p50 ms':>8}{'p99 ms':>8}{'100 p99':>9}{'CPU s/1k':>12}{'µs/call':>10}{'SIPp s':>9}"
          f"{'wall s':>8}{'idle ms/s':>10}{'left':>6}{'sys%':>6}{'calib µs':>9}{'wake':>7}{'preempt':>8}"
          "  store")


def calibration_us(repeats: int = 300) -> float:
    """CPU µs of a fixed pure-Python workload, best of `repeats`: how fast this machine is right now (its
    speed drifts by ±30 % over a day), printed with each step so runs of different hours compare."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time_ns()
        sum(range(1000))
        best = min(best, time.thread_time_ns() - t0)
    return best / 1000


class Server(Protocol):
    """What run_step measures: sipfilter (SipfilterServer) or the Kamailio anchor (Kamailio)."""

    def pids(self) -> list[int]: ...

    def cpu_seconds(self) -> float: ...

    def sys_seconds(self) -> float: ...

    def left(self) -> float | None: ...

    def stop(self) -> None: ...


@dataclass
class SipfilterServer:
    deployment: Deployment
    redis: RedisProcess | None = None  # the Redis store the bench started for it

    def pids(self) -> list[int]:
        proc = self.deployment.sipfilter.proc
        return [] if proc is None else _process_tree(proc.pid)  # sip.workers: the supervisor and its workers

    def cpu_seconds(self) -> float:
        seconds: float = sum(proc_cpu_seconds(pid) for pid in self.pids())
        return seconds

    def sys_seconds(self) -> float:
        return sum(_sys_seconds(pid) for pid in self.pids())

    def left(self) -> float | None:
        """sipfilter_active_dialogs once they have ended (a /metrics scrape: only after the window)."""
        dialogs = self.deployment.sipfilter.wait_no_dialogs(timeout_s=30)
        return None if dialogs is None else float(dialogs)

    def stop(self) -> None:
        self.deployment.sipfilter.stop()
        if self.redis is not None:
            self.redis.kill()


@dataclass
class Kamailio:
    """`kamailio -DD -E -f <cfg>` (foreground, forking its workers) from bench/kamailio/kamailio.cfg, on a
    free UDP port of 127.0.0.1, relaying to `carrier_port`, with the DNC list read from `dnc_db`."""

    workdir: Path
    dnc_db: Path
    carrier_port: int
    children: int = KAMAILIO_CHILDREN
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, ready_timeout_s: float = 180.0) -> Kamailio:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_ports(1)[0]
        cfg = KAMAILIO_CFG.read_text()
        for name, value in {"CHILDREN": str(self.children), "PORT": str(self.port),
                            "WORKDIR": str(self.workdir), "DNC_DB": str(self.dnc_db),
                            "CARRIER": f"{LOOPBACK}:{self.carrier_port}"}.items():
            cfg = cfg.replace(f"@{name}@", value)
        path = self.workdir / "kamailio.cfg"
        path.write_text(cfg)
        exe = shutil.which("kamailio") or "kamailio"
        # -m: shared memory (MB) for the 1M-entry htable and transactions; -M: private memory per process,
        # large because db_sqlite hands htable the whole table at once while loading; -Y: ctl socket here.
        cmd = [exe, "-DD", "-E", "-m", "1024", "-M", "512", "-Y", str(self.workdir), "-f", str(path)]
        with (self.workdir / "kamailio.log").open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        """Ready when an OPTIONS to Kamailio itself gets its 200: the htable is loaded, the workers read."""
        deadline = time.monotonic() + timeout_s
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            sock.settimeout(0.5)
            local = sock.getsockname()[1]
            n = 0
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise HarnessError(f"kamailio exited:\n{self.log_tail()}")
                n += 1
                sock.sendto(_options(self.port, local, n), (LOOPBACK, self.port))
                try:
                    if sock.recv(65535).startswith(b"SIP/2.0 200"):
                        return
                except TimeoutError:
                    continue  # still loading the htable: the datagram waits in the socket's queue
                except ConnectionRefusedError:  # not bound yet
                    time.sleep(0.2)
        raise HarnessError(f"kamailio not ready after {timeout_s}s:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        return [] if self.proc is None or self.proc.poll() is not None else _process_tree(self.proc.pid)

    def cpu_seconds(self) -> float:
        """utime + stime of the main process and every worker (Kamailio forks them all at start-up)."""
        return self._tree_sum(proc_cpu_seconds)

    def sys_seconds(self) -> float:
        return self._tree_sum(_sys_seconds)

    def _tree_sum(self, seconds_of: Callable[[int], float]) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError):  # a worker gone meanwhile
                total += seconds_of(pid)
        return total

    def left(self) -> float | None:
        """tm's transactions still in memory (`kamcmd tm.stats`, "current"): 0 once every call ended."""
        exe = shutil.which("kamcmd")
        if exe is None:
            return None
        try:
            out = subprocess.run([exe, "-s", f"unix:{self.workdir / 'kamailio_ctl'}", "tm.stats"],
                                 capture_output=True, text=True, timeout=10, check=False).stdout
        except subprocess.TimeoutExpired:
            return None
        found = re.search(r"current:\s*(\d+)", out)
        return float(found.group(1)) if found else None

    def log_tail(self, lines: int = 40) -> str:
        path = self.workdir / "kamailio.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the whole process group (main and workers), SIGKILL to whatever is left of it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):  # workers outliving main: still in its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _options(port: int, local_port: int, n: int) -> bytes:
    """An OPTIONS to the server itself (no user part), the readiness probe of Kamailio."""
    return (f"OPTIONS sip:{LOOPBACK}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{local_port};branch=z9hG4bKready{n}\r\n"
            f"From: <sip:bench@{LOOPBACK}:{local_port}>;tag=ready{n}\r\n"
            f"To: <sip:{LOOPBACK}:{port}>\r\nCall-ID: ready-{n}@{LOOPBACK}\r\nCSeq: {n} OPTIONS\r\n"
            f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def _process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from the parent pids in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def write_dnc_sqlite(path: Path, numbers: list[str]) -> Path:
    """The do-not-call list as the SQLite table Kamailio's htable loads (key_name, key_value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE dnc (key_name TEXT PRIMARY KEY, key_value TEXT)")
        db.executemany("INSERT INTO dnc VALUES (?, '1')", ((n,) for n in numbers))
        db.commit()
    return path


def kamailio_missing() -> str | None:
    """None when kamailio and its db_sqlite module are installed; else how to install them."""
    how = "apt-get install -y kamailio kamailio-sqlite-modules (Debian 12 ships Kamailio 5.6.3)"
    if shutil.which("kamailio") is None:
        return f"kamailio is not installed: {how}"
    dirs = [*Path("/usr/lib").glob("*/kamailio/modules"), *Path("/usr/local/lib").glob("*/kamailio/modules"),
            Path("/usr/lib/kamailio/modules"), Path("/usr/lib64/kamailio/modules"),
            Path("/usr/local/lib64/kamailio/modules")]
    if not any((d / "db_sqlite.so").exists() for d in dirs):
        return f"Kamailio's db_sqlite module is missing: {how}"
    return None


def make_cases(mix: str, count: int, callees: list[str], dnc_sample: list[str],
               rng: random.Random) -> list[CallCase]:
    """`count` calls: relayed ones go from an NPV number to a consented callee; rejected ones are split
    between a caller-ID refusal (403) and a callee on the 1M-entry do-not-call list (603)."""
    cases = []
    for i in range(count):
        relayed = mix == "relayed" or (mix == "mixed" and rng.random() < 0.7)
        if relayed:
            cases.append(CallCase(rng.choice(NPV_CALLERS), callees[i % len(callees)], "relay"))
        elif i % 2:
            cases.append(CallCase(rng.choice(BAD_CALLERS), callees[i % len(callees)], "403 caller-id"))
        else:
            cases.append(CallCase(rng.choice(NPV_CALLERS), rng.choice(dnc_sample), "603 callee.dnc"))
    return cases


def run_step(workdir: Path, target: str, carrier_port: int, server: Server | None, mix: str,
             rate: float, duration_s: float, hold_ms: int, callees: list[str], dnc_sample: list[str],
             settle_s: float = 0.0, idle_rate: float = 0.0, profile_to: Path | None = None,
             native: bool = False, perf_to: Path | None = None, signed: BenchSti | None = None) -> Step:
    rng = random.Random(f"{mix}-{rate}")
    count = max(1, int(rate * duration_s))
    cases = make_cases(mix, count, callees, dnc_sample, rng)
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = "dialer_uac.xml"
    if signed is not None:  # every call carries a PASSporT of its own numbers
        scenario, csv_file = "dialer_uac_identity.xml", signed.calls_csv(workdir / "calls.csv", cases)
    else:
        csv_file = write_calls_csv(workdir / "calls.csv", cases)
    relayed = sum(c.expected == "relay" for c in cases)
    timeout = duration_s * 3 + 30
    carrier = Sipp("carrier_uas.xml", workdir / "carrier", local_port=carrier_port, calls=10**9, pause_ms=0,
                   timeout_s=timeout + settle_s, trace_msg=False, name="carrier")
    dialer = Sipp(scenario, workdir / "dialer", local_port=free_ports(1)[0], remote=target,
                  calls=count, csv_file=csv_file, rate=rate, pause_ms=hold_ms, timeout_s=timeout,
                  trace_msg=False, trace_short=True, limit=max(1000, int(rate * 10)), name="dialer")
    spy: subprocess.Popen[bytes] | None = None
    perfs: list[subprocess.Popen[bytes]] = []
    left: float | None = None
    sys_share: float | None = None
    switches: tuple[int, int] | None = None
    try:
        if relayed:
            carrier.start().wait_listening()
        cpu0 = server.cpu_seconds() if server else None
        sys0 = server.sys_seconds() if server else 0.0
        switches0 = _context_switches(server.pids()) if server else (0, 0)
        t0 = time.monotonic()
        if profile_to is not None and isinstance(server, SipfilterServer):  # py-spy: Python only
            spy = _py_spy(server.pids(), profile_to, native)
        if perf_to is not None and server is not None:
            perfs = _perf(server.pids(), perf_to)
        dialer.start()
        sipp_cpu = _sample_cpu([dialer, carrier], until=t0 + timeout + 15)
        d: SippRun = dialer.wait(timeout_s=15)
        wall = time.monotonic() - t0
        # The last calls' timers (Timer I/K, transaction memory of 64*T1) fire inside the window.
        time.sleep(settle_s)
        cpu = None
        if server is not None and cpu0 is not None:
            window = time.monotonic() - t0
            gross = server.cpu_seconds() - cpu0
            cpu = max(0.0, gross - idle_rate * window)
            sys_share = (server.sys_seconds() - sys0) / gross if gross > 0 else None
            voluntary, involuntary = _context_switches(server.pids())
            switches = (voluntary - switches0[0], involuntary - switches0[1])
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
            spy.wait(timeout=30)
            spy = None
        for proc in perfs:
            proc.send_signal(signal.SIGINT)  # perf stat prints, perf record writes on SIGINT
        for proc in perfs:
            proc.wait(timeout=60)
        perfs = []
        if server is not None:  # after the window: a scrape costs the server CPU
            left = server.left()
        c = carrier.finish(grace_s=10) if relayed else None
    finally:
        if spy is not None:
            spy.kill()
        for proc in perfs:
            proc.kill()
        dialer.stop()
        carrier.stop()
    mismatched = sum(1 for o in d.outcomes if o.problem())
    rtts = d.invite_final_ms or d.rtts_ms.get("invite", ())
    return Step(mix, rate, d.created, d.successful - mismatched, d.failed + mismatched,
                d.retransmissions + (c.retransmissions if c else 0),
                percentile(rtts, 50), percentile(rtts, 99), percentile(d.invite_trying_ms, 99), cpu, sipp_cpu,
                wall, idle_rate, left, sys_share,
                wakeups_per_call=None if switches is None or not d.created else switches[0] / d.created,
                preempted_per_call=None if switches is None or not d.created else switches[1] / d.created)


def _sys_seconds(pid: int) -> float:
    """Kernel CPU seconds (stime, /proc/<pid>/stat field 15) of one process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[12]) / os.sysconf("SC_CLK_TCK")


def _context_switches(pids: list[int]) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread of these processes so far (a thread that
    ended in between is not counted: the server's threads live as long as it does)."""
    voluntary = involuntary = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                        if line.startswith("voluntary_ctxt_switches:"):
                            voluntary += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            involuntary += int(line.split()[1])
    return voluntary, involuntary


def _idle_cpu_rate(server: Server, seconds: float) -> float:
    """The server's CPU seconds per second with no traffic (sipfilter: store watcher, carrier probes, GC;
    Kamailio: its timer processes)."""
    if seconds <= 0:
        return 0.0
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)


def _py_spy(pids: list[int], out: Path, native: bool = False) -> subprocess.Popen[bytes] | None:
    """py-spy sampling sipfilter into collapsed stacks (`pip install py-spy`: a dev tool, no dependency).
    `native` adds C frames (uvloop, the C parts of the stdlib) but stops the process at each sample."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists() or not pids:
        print("  (py-spy not found: no profile)", file=sys.stderr)
        return None
    if compiled.status.startswith("compiled"):
        print("  (compiled call path: py-spy sees no frame in it; SIPFILTER_PURE=1 profiles it)",
              file=sys.stderr)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = ["--native"] if native else ["--nonblocking"]  # py-spy cannot unwind C frames without a pause
    return subprocess.Popen([exe, "record", "--pid", str(pids[0]), "--rate", "200",
                             "--format", "raw", "--output", str(out), *mode],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _perf(pids: list[int], out: Path) -> list[subprocess.Popen[bytes]]:
    """`perf stat` (CPU, context switches = event-loop wake-ups) and `perf record` (on-CPU stacks, kernel
    included) of the server's processes over the step's window; `perf report -i <out>.data` reads stacks."""
    exe = shutil.which("perf")
    if exe is None or not pids:
        print("  (perf not found: no perf figures)", file=sys.stderr)
        return []
    out.parent.mkdir(parents=True, exist_ok=True)
    pid = ",".join(map(str, pids))
    stat = subprocess.Popen([exe, "stat", "-e", "task-clock,context-switches,cpu-migrations,page-faults",
                             "-p", pid, "-o", str(out.with_suffix(".stat"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    record = subprocess.Popen([exe, "record", "-e", "cpu-clock", "-F", "499", "-g", "-p", pid,
                               "-o", str(out.with_suffix(".data"))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return [stat, record]


def _sample_cpu(procs: list[Sipp], until: float) -> float:
    """Wait for the first process to exit, sampling the CPU seconds of all of them (the last sample before
    exit is their total: /proc/<pid> is gone once they are reaped)."""
    last: dict[int, float] = {}
    while time.monotonic() < until:
        for sipp in procs:
            if sipp.proc is not None and sipp.proc.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    last[sipp.proc.pid] = proc_cpu_seconds(sipp.proc.pid)
        if procs[0].proc is None or procs[0].proc.poll() is not None:
            break
        time.sleep(0.1)
    return sum(last.values())


def profile_summary(path: Path, top: int = 30) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks ("f (file:line);… n")."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + n
    if not total:
        return f"{path}: no samples"
    rows = [f"{path.name}: {total} samples; self% incl%  function"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        rows.append(f"  {100 * n / total:5.1f} {100 * incl[frame] / total:5.1f}  {frame}")
    rows.append("  inclusive, top:")
    for frame, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        rows.append(f"  {100 * own.get(frame, 0) / total:5.1f} {100 * n / total:5.1f}  {frame}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mix", action="append", choices=MIXES, help="repeatable; default: all three")
    parser.add_argument("--rates", default="100,250,500,750,1000,1250,1500", help="calls/s, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of traffic per rate step")
    parser.add_argument("--hold-ms", type=int, default=0, help="talk time of a relayed call before the BYE")
    parser.add_argument("--callees", type=int, default=5000, help="distinct consented callees")
    parser.add_argument("--dnc-size", type=int, default=1_000_000, help="numbers on the bloctel list")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds after the dialer exits, inside the CPU window (default 64*T1+T4+1)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured after start")
    parser.add_argument("--warmup", type=float, default=3.0, help="unreported traffic seconds per deployment")
    parser.add_argument("--profile-dir", type=Path, help="py-spy collapsed stacks of each step written here")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames; pauses sipfilter)")
    parser.add_argument("--perf-dir", type=Path, help="perf stat + perf record of each step written here")
    parser.add_argument("--direct", action="store_true", help="no sipfilter: dialer straight to the carrier")
    parser.add_argument("--kamailio", action="store_true",
                        help="measure Kamailio 5.6 doing the same filtering, not sipfilter (the anchor)")
    parser.add_argument("--kamailio-children", type=int, default=KAMAILIO_CHILDREN,
                        help=f"Kamailio UDP worker processes (default {KAMAILIO_CHILDREN}: one per core)")
    parser.add_argument("--identity", choices=("sign", "verify"),
                        help="STIR/SHAKEN: the trunk signs relayed calls, or verifies the dialer's PASSporTs")
    parser.add_argument("--store", default="embedded",
                        help="sipfilter's store: embedded, redis (a redis-server started by the bench) or "
                             "both, comma-separated (alternated step by step)")
    parser.add_argument("--workers", default="1",
                        help="sipfilter's sip.workers, comma-separated (alternated step by step); with "
                             "--kamailio, Kamailio runs beside them in the same run; at the end, what 1 "
                             "to 16 cores would carry, projected from each clean step's CPU per call")
    parser.add_argument("--redis-unix", action="store_true",
                        help="--store redis: sipfilter reaches its redis-server through a unix socket")
    parser.add_argument("--pin", action="store_true",
                        help="sipfilter on CPU 0; SIPp and redis-server on CPU 1 (every store alike)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (SIPp traces, logs)")
    args = parser.parse_args(argv)
    stores = [name.strip() for name in args.store.split(",") if name.strip()]
    if not stores or any(name not in STORES for name in stores) or len(set(stores)) != len(stores):
        parser.error(f"--store: one or more of {', '.join(STORES)}, comma-separated")
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    beside = args.kamailio and args.workers != "1"  # sipfilter's worker counts and Kamailio, alternated
    mixes = args.mix or list(MIXES)
    settle = args.settle if args.settle is not None else 64 * T1_S + T4_S + 1
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if args.direct and args.kamailio:
        parser.error("--direct and --kamailio exclude each other")
    if args.identity and (args.direct or (args.kamailio and not beside)):
        parser.error("--identity measures sipfilter: not with --direct or --kamailio")
    if args.kamailio and (missing := kamailio_missing()):
        print(f"cannot benchmark Kamailio: {missing}", file=sys.stderr)
        return 2
    if not args.direct and (beside or not args.kamailio) and (missing := sipfilter_available()):
        print(f"cannot benchmark: {missing}", file=sys.stderr)
        return 2
    if "redis" in stores and not args.direct and not args.kamailio and (missing := redis_missing()):
        print(f"cannot benchmark the Redis store: {missing}", file=sys.stderr)
        return 2

    if args.pin:
        if (os.cpu_count() or 1) < 2:
            parser.error("--pin needs 2 CPUs")
        if args.direct or args.kamailio:
            parser.error("--pin places sipfilter: not with --direct or --kamailio")
        os.sched_setaffinity(0, {1})  # inherited by SIPp and redis-server; sipfilter moves to CPU 0 (_deploy)
    workroot = Path(tempfile.mkdtemp(prefix="sipfilter-bench-"))
    callees = [f"+3361{n:07d}" for n in range(args.callees)]
    # DNC list: mobiles in +33 75 … (a range the numbering plan lists, up to 3.3 M numbers); a sample of them
    # is called in the rejected share.
    dnc = [f"+3375{n:07d}" for n in range(0, args.dnc_size * 3, 3)]
    dnc_sample = random.Random(1).sample(dnc, min(1000, len(dnc)))
    what = " — DIRECT (no sipfilter)" if args.direct else ""
    if args.kamailio:
        what = f" — KAMAILIO anchor ({args.kamailio_children} UDP workers), not sipfilter"
        if beside:
            what = (f" — sipfilter with {args.workers} worker(s) beside Kamailio ({args.kamailio_children}"
                    " UDP workers)")
    print(f"sipfilter e2e benchmark — {os.cpu_count()} CPU(s), work dir {workroot}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, python {platform.python_version()} "
          f"({os.path.realpath(sys.executable)}), call path {compiled.status}")
    on = "" if args.direct or (args.kamailio and not beside) else f", store {' and '.join(stores)}"
    on += " (Redis through a unix socket)" if args.redis_unix and "redis" in stores else ""
    on += " — pinned: sipfilter on CPU 0, SIPp and redis-server on CPU 1" if args.pin else ""
    on += f" — identity: {args.identity}" if args.identity else ""
    print(f"duration {args.duration:g}s per step, hold {args.hold_ms} ms, {len(callees)} consented callees, "
          f"{len(dnc)} numbers on bloctel{what}{on}")
    dnc_db: Path | None = None
    if args.kamailio:
        t0 = time.monotonic()
        dnc_db = write_dnc_sqlite(workroot / "dnc.sqlite", dnc)
        print(f"  (DNC list written for Kamailio in {time.monotonic() - t0:.1f}s)", file=sys.stderr)
    sti = BenchSti(workroot / "sti") if args.identity else None
    signed = sti if args.identity == "verify" else None
    print(HEADER, flush=True)
    measured: list[Step] = []
    for mix in mixes:
        targets: list[Target] = []
        try:
            if args.direct:
                carrier_port = free_ports(1)[0]
                targets.append(Target("-", None, f"{LOOPBACK}:{carrier_port}", carrier_port))
            if dnc_db is not None:
                t0 = time.monotonic()
                carrier_port = free_ports(1)[0]
                kamailio = Kamailio(workroot / mix / "kamailio", dnc_db, carrier_port, args.kamailio_children)
                label = "kamailio" if beside else "-"
                targets.append(Target(label, kamailio.start(), f"{LOOPBACK}:{kamailio.port}", carrier_port))
                print(f"  (kamailio for {mix} ready in {time.monotonic() - t0:.1f}s, "
                      f"{len(dnc)} DNC numbers loaded into its htable)", file=sys.stderr)
            if not args.direct and (dnc_db is None or beside):
                for store, count in ((s, w) for s in stores for w in workers):
                    t0 = time.monotonic()
                    label = store if args.workers == "1" else f"{store}-{count}w"
                    server = _deploy(workroot / mix / label, store, callees, dnc,
                                     sti.trunk(args.identity) if sti else None, workers=count,
                                     unix=args.redis_unix, pin=args.pin)
                    deployment = server.deployment
                    targets.append(Target(label, server, deployment.inside, deployment.carrier_ports[0]))
                    ready = time.monotonic() - t0
                    print(f"  (sipfilter, {label}, for {mix} ready in {ready:.1f}s)", file=sys.stderr)
            for t in targets:
                # Measured once, before any traffic: after a step, its transactions' timers count as idle.
                t.idle_rate = _idle_cpu_rate(t.server, args.idle) if t.server else 0.0
                if args.warmup > 0 and rates:  # first-call paths, label children, page faults of the lists
                    warm = run_step(workroot / mix / t.store / "warmup", t.target, t.carrier_port, t.server,
                                    mix, min(rates[0], 200.0), args.warmup, args.hold_ms, callees, dnc_sample,
                                    settle_s=T4_S + 1, signed=signed)  # fmt: skip
                    print(f"  (warm-up: {replace(warm, store=t.store).row().strip()})", file=sys.stderr)
            for rate in rates:
                for t in targets:  # several stores: alternated at each rate
                    name = f"{mix}-{rate:g}" + (f"-{t.store}" if len(targets) > 1 else "")
                    profile_to = args.profile_dir / f"{name}.txt" if args.profile_dir else None
                    perf_to = args.perf_dir / name if args.perf_dir else None
                    calib = calibration_us()
                    step = run_step(workroot / mix / t.store / f"{rate:g}", t.target, t.carrier_port,
                                    t.server, mix, rate, args.duration, args.hold_ms, callees, dnc_sample,
                                    settle_s=settle, idle_rate=t.idle_rate, profile_to=profile_to,
                                    native=args.native, perf_to=perf_to, signed=signed)
                    measured.append(replace(step, calib_us=calib, store=t.store))
                    print(measured[-1].row(), flush=True)
                    if profile_to is not None and profile_to.exists():
                        print(profile_summary(profile_to), file=sys.stderr, flush=True)
                    stat = args.perf_dir / f"{name}.stat" if args.perf_dir else None
                    if stat is not None and stat.exists():
                        print(stat.read_text(), file=sys.stderr, flush=True)
        finally:
            for t in targets:
                if t.server is not None:
                    t.server.stop()
    if sti is not None:
        sti.server.stop()
    if len(workers) > 1 or args.workers != "1":
        print(scaling_table(measured), flush=True)
    if not args.keep:
        shutil.rmtree(workroot, ignore_errors=True)
    return 0


SCALED_CORES = (1, 2, 4, 8, 16)


def scaling_table(steps: list[Step]) -> str:
    """What 1 to 16 cores would carry, from each clean step's CPU per call (no failed call, no
    retransmission): cores × 10⁶ / µs per call, as if each worker had a core of its own (the dialer and the
    carrier elsewhere) and the workers cost nothing of each other. The kernel steers each datagram to its
    owner's socket (sipfilter/workers/steering.py), so a worker reads and answers only its own calls; what
    two workers cost more than one on this machine is measured in the steps above, not projected here."""
    cores = "".join(f"{f'{n} core' + 's' * (n > 1):>10}" for n in SCALED_CORES)
    lines = ["scaling (projected: cores x 1e6 / CPU us per call of a clean step; not measured)",
             f"{'server':<16}{'mix':<9}{'rate/s':>7}{'us/call':>9}{cores}"]
    for step in steps:
        if step.cpu_s is None or not step.attempted or step.failed or step.retransmissions:
            continue
        per_call = 1e6 * step.cpu_s / step.attempted
        if per_call <= 0:
            continue
        cells = "".join(f"{n * 1e6 / per_call:>10.0f}" for n in SCALED_CORES)
        lines.append(f"{step.store:<16}{step.mix:<9}{step.rate:>7.0f}{per_call:>9.0f}{cells}")
    return "\n".join(lines)


@dataclass
class Target:
    """Where one series of steps sends its calls: a sipfilter on one store, Kamailio, or the carrier."""

    store: str
    server: Server | None
    target: str  # host:port the dialer calls
    carrier_port: int
    idle_rate: float = 0.0


def _deploy(workdir: Path, store: str, callees: list[str], dnc: list[str],
            trunk: dict[str, object] | None = None, workers: int = 1, *, unix: bool = False,
            pin: bool = False) -> SipfilterServer:  # fmt: skip
    """A sipfilter with production timers, the consents and the 1M-entry bloctel list provisioned, on the
    embedded store or on a redis-server started for it (reached through a unix socket with `unix`).
    `pin`: sipfilter's threads move to CPU 0 (the bench and what it starts run on CPU 1)."""
    redis = None
    section: dict[str, str] = {}
    if store == "redis":
        sock = workdir / "redis" / "redis.sock"
        settings = (f"unixsocket {sock}", "unixsocketperm 700") if unix else ()
        redis = RedisProcess(free_ports(1)[0], workdir / "redis", settings).start()
        section = {"backend": "redis", "redis_url": f"unix://{sock}?db=0" if unix else redis.url}
    try:
        timers = {"t1_ms": int(T1_S * 1000), "t2_ms": 4000, "t4_ms": int(T4_S * 1000)}
        deployment = deploy(workdir / "sipfilter", extra_consents=callees, extra_lists={"bloctel": dnc},
                            sip={"timers": timers}, store=section, trunk=trunk, workers=workers)
    except BaseException:
        if redis is not None:
            redis.kill()
        raise
    server = SipfilterServer(deployment, redis)
    if pin:
        for pid in server.pids():
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):  # a thread that has just ended
                    os.sched_setaffinity(int(tid), {0})
    return server


class BenchSti:
    """A test STI PKI (tests/identity/sti_pki.py) and its x5u chain served over HTTPS by this process, for
    `--identity`: the trunk settings that sign or verify with it, and dialer CSVs whose calls carry a
    PASSporT of their own numbers (signed before the run: the iat window is widened to the bench's length)."""

    def __init__(self, workdir: Path) -> None:
        sys.path.insert(0, str(REPO / "tests" / "identity"))
        from sti_pki import X5uServer, make_pki

        self.pki = make_pki(name="bench")
        self.files = self.pki.write(workdir)
        self.server = X5uServer(workdir / "web", {"sti.pem": self.pki.chain_pem}).start()
        self.x5u = self.server.url("sti.pem")

    def trunk(self, mode: str) -> dict[str, object]:
        from sipp_harness import ALWAYS_OPEN

        if mode == "sign":
            return {"identity": {"sign": {"key": str(self.files["key"]), "x5u": self.x5u}}}
        verify = {"ca": str(self.files["root"]), "x5u_tls_ca": str(self.server.ca_file)}
        return {"identity": {"verify": verify}, "overrides": {**ALWAYS_OPEN, "identity": {"max_age_s": 3600}}}

    def calls_csv(self, path: Path, cases: list[CallCase]) -> Path:
        from sipfilter.identity.passport import protected_header, sign

        header, now = protected_header(self.x5u), int(time.time())
        lines = ["SEQUENTIAL"]
        for i, c in enumerate(cases):
            orig, dest = (n.lstrip("+") if n.startswith("+") else "33" + n[1:] for n in (c.caller, c.callee))
            token = sign(self.pki.leaf_key, header, orig, dest, "A", f"bench-{i}", now)
            lines.append(f"{c.caller};{c.callee};{c.expected};Identity;{token};{self.x5u};")
        path.write_text("\n".join(lines) + "\n", encoding="ascii")
        return path


if __name__ == "__main__":
    sys.exit(main())
