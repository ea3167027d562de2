#!/usr/bin/env python3
"""Flood benchmark: legitimate calls at a nominal rate, then unknown-source and malformed floods at 10x it.

Prints, per phase, legitimate calls' decision latency p50/p99 (from sipfilter's histogram on /metrics),
SIPp's INVITE->final p99, the admin port's worst response time (a blocked event loop shows there), CPU,
and the refusal/drop counters that moved. A benchmark: it prints figures and a verdict, asserts nothing.

Phases (each --phase-s long, after a warm-up): before | unknown-source flood | malformed flood | after.
Unknown sources spray INVITEs/OPTIONS from 512 addresses in 127.1.0.0/16 (not in the trunk's ACL);
malformed traffic comes from 127.0.0.2 (inside the ACL): RFC 4475 invalid messages, truncations, binary
junk, header bombs and oversized datagrams. The dialer itself is 127.0.0.1.

    .venv/bin/python bench/flood.py                    # 20 calls/s nominal, floods at 200 packets/s
    .venv/bin/python bench/flood.py --rate 50 --factor 10 --phase-s 60
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RFC4475 = REPO / "tests" / "data" / "rfc4475"
sys.path.insert(0, str(REPO / "tests" / "e2e"))

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LE = re.compile(r'le="([^"]+)"')
UNKNOWN_SOURCES = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(512)]
MALFORMED_SOURCE = "127.0.0.2"


# --------------------------------------------------------------------------------------------- flood


def scanner_message(rng: random.Random, target: str, src: str, port: int) -> bytes:
    """What SIP scanners (sipvicious & co) send: OPTIONS or INVITE to a guessed extension."""
    method = rng.choice(("INVITE", "OPTIONS", "INVITE", "REGISTER"))
    user = rng.choice(("100", "1000", "2000", "+33612345678", "00972592", "admin", str(rng.randrange(10**6))))
    call_id = uuid.UUID(int=rng.getrandbits(128)).hex
    return (
        f"{method} sip:{user}@{target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src}:{port};branch=z9hG4bK{call_id[:16]};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f'From: "sipvicious"<sip:100@{src}>;tag={call_id[:8]}\r\n'
        f"To: <sip:{user}@{target}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Contact: <sip:100@{src}:{port}>\r\n"
        f"User-Agent: friendly-scanner\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def malformed_messages(target: str) -> list[bytes]:
    """A fixed pool of hostile datagrams; the sender also mutates them at random."""
    pool = [
        p.read_bytes()
        for p in sorted(RFC4475.glob("*.dat"))
        if any(line.startswith(p.name + "\t") and "\tinvalid\t" in line for line in _index_lines())
    ]
    invite = (
        f"INVITE sip:+33612000001@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {MALFORMED_SOURCE};branch=z9hG4bKx\r\n"
        f"From: <sip:+33162000001@{MALFORMED_SOURCE}>;tag=1\r\nTo: <sip:+33612000001@{target}>\r\n"
        "Call-ID: junk\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    pool += [invite[:n] for n in (10, 40, 80, 150, len(invite) - 3)]  # truncations
    pool.append(invite.replace(b"\r\n\r\n", b"\r\n" + b"X-Bomb: a\r\n" * 2000 + b"\r\n"))  # header bomb
    pool.append(invite.replace(b"Content-Length: 0", b"Content-Length: 99999999999999999999"))
    pool.append(invite.replace(b"Content-Length: 0", b"Content-Length: -5"))
    pool.append(invite.replace(b"From: <", b'From: "' + b"\\" * 4000 + b'" <'))
    pool.append(b"INVITE " + b"a" * 60000 + b" SIP/2.0\r\n\r\n")  # oversized (near the UDP maximum)
    pool.append(b"\r\n\r\n")  # keep-alive style
    pool.append(bytes(range(256)) * 4)
    return pool


def _index_lines() -> list[str]:
    return (RFC4475 / "index.tsv").read_text(encoding="utf-8").splitlines()


def run_sender(kind: str, pps: float, seconds: float, target: str) -> int:
    """Send `pps` datagrams/s of `kind` to `target` for `seconds`, paced in 10 ms slots; print the count."""
    host, port = target.rsplit(":", 1)
    rng = random.Random(42)
    socks: list[socket.socket] = []
    sources = UNKNOWN_SOURCES if kind == "unknown" else [MALFORMED_SOURCE]
    for src in sources:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.setblocking(False)
        socks.append(s)
    pool = malformed_messages(target) if kind == "malformed" else []
    sent = 0
    start = time.monotonic()
    slot = 0.01
    owed = 0.0
    while (elapsed := time.monotonic() - start) < seconds:
        owed += pps * slot
        while owed >= 1:
            owed -= 1
            sock = socks[sent % len(socks)]
            if kind == "unknown":
                data = scanner_message(rng, target, sock.getsockname()[0], sock.getsockname()[1])
            else:
                data = rng.choice(pool)
                if rng.random() < 0.5 and len(data) > 4:  # flip a few bytes
                    buf = bytearray(data)
                    for _ in range(rng.randint(1, 8)):
                        buf[rng.randrange(len(buf))] = rng.randrange(256)
                    data = bytes(buf)
            with contextlib.suppress(BlockingIOError, OSError):
                sock.sendto(data, (host, int(port)))
            sent += 1
        time.sleep(max(0.0, start + elapsed + slot - time.monotonic()))
    print(sent, flush=True)
    return 0


# --------------------------------------------------------------------------------------------- metrics


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except OSError:
        return 0, ""


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            with contextlib.suppress(ValueError):
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def find_latency_histogram(text: str) -> str | None:
    """A histogram whose name says "decision" (labelled histograms have no sample before the first call,
    so the # TYPE lines are read too)."""
    names = set(re.findall(r"(?m)^# TYPE (\S+) histogram$", text))
    names |= {n[: -len("_bucket")] for n, _ in parse_metrics(text) if n.endswith("_bucket")}
    candidates = sorted(n for n in names if "decision" in n)
    return next((n for n in candidates if "seconds" in n), candidates[0] if candidates else None)


def buckets(samples: dict[tuple[str, str], float], name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram `name`, summed over every label set but `le`."""
    out: dict[float, float] = {}
    for (n, labels), value in samples.items():
        if n == name + "_bucket":
            m = _LE.search(labels)
            if m:
                le = math.inf if m.group(1) == "+Inf" else float(m.group(1))
                out[le] = out.get(le, 0.0) + value
    return out


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over the increase between two scrapes (linear within a bucket)."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in zip(les, counts, strict=True):
        if count >= rank:
            if math.isinf(le):
                return prev_le
            span = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / span if span else 1.0)
        prev_le, prev_count = le, count
    return prev_le


def counter_deltas(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[str, float]:
    """Counters about refusals, drops, limits and parse errors that moved, summed over labels."""
    pattern = re.compile(r"drop|refus|reject|limit|malformed|parse|invalid|unknown|auth|decision")
    out: dict[str, float] = {}
    for (name, labels), value in after.items():
        if not name.endswith("_total") or not pattern.search(name + labels):
            continue
        delta = value - before.get((name, labels), 0.0)
        if delta:
            key = f"{name}{labels}"
            out[key] = out.get(key, 0.0) + delta
    return out


@dataclass
class Prober:
    """GET /healthz every 100 ms in a thread and keep the slowest answer per phase."""

    url: str
    worst_ms: float = 0.0
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Prober:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            start = time.perf_counter()
            status, _ = http_get(self.url, timeout_s=5.0)
            ms = (time.perf_counter() - start) * 1000
            if status != 200:
                self.failures += 1
            self.worst_ms = max(self.worst_ms, ms)

    def take(self) -> tuple[float, int]:
        worst, failures = self.worst_ms, self.failures
        self.worst_ms, self.failures = 0.0, 0
        return worst, failures

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=6)


# --------------------------------------------------------------------------------------------- main


@dataclass
class Phase:
    name: str
    start_s: float = 0.0  # since the dialer started
    end_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    decisions: float = 0.0
    rtt_p99_ms: float | None = None
    calls: int = 0
    worst_probe_ms: float = 0.0
    probe_failures: int = 0
    cpu_pct: float = 0.0
    flood_sent: int = 0
    counters: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def sender(kind: str, pps: float, seconds: float, target: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--sender", kind, "--pps", str(pps), "--seconds", str(seconds), target],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait(timeout=10)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=20.0, help="nominal legitimate call rate (calls/s)")
    ap.add_argument("--factor", type=float, default=10.0, help="flood rate as a multiple of --rate")
    ap.add_argument("--phase-s", type=float, default=30.0, help="length of each phase")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--hold-ms", type=int, default=500)
    ap.add_argument("--latency-metric", help="decision-latency histogram (default: found on /metrics)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--sender", choices=("unknown", "malformed"), help=argparse.SUPPRESS)
    ap.add_argument("--pps", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("target", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sender:
        return run_sender(args.sender, args.pps, args.seconds, args.target)

    from sipfilter_provision import CONSENTED, deploy
    from sipp_harness import (
        CallCase,
        Sipp,
        free_ports,
        proc_cpu_seconds,
        sipfilter_available,
        write_calls_csv,
    )

    if why := sipfilter_available():
        print(f"flood: {why}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sipfilter-flood-"))
    phases = [Phase("before"), Phase("unknown-src"), Phase("malformed"), Phase("after")]
    total_s = args.warmup_s + args.phase_s * len(phases)
    calls = int(args.rate * total_s) + 1
    flood_pps = args.rate * args.factor
    processes: list[Sipp] = []
    deployment = None
    try:
        # The trunk's ACL holds the dialer (127.0.0.1) and the "malformed" source, not 127.1.0.0/16.
        deployment = deploy(
            workdir / "sipfilter", trunk={"match": {"sources": ["127.0.0.1/32", f"{MALFORMED_SOURCE}/32"]}}
        )
        assert deployment.sipfilter.proc is not None
        pid = deployment.sipfilter.proc.pid
        admin = f"http://127.0.0.1:{deployment.sipfilter.ports.admin}"
        inside = deployment.inside
        carrier = Sipp(
            # sipfilter's OPTIONS health probes count as calls for SIPp: leave room, stop it at the end.
            "carrier_uas.xml", workdir / "carrier", deployment.carrier_ports[0], calls=calls * 2 + 1000,
            pause_ms=20,
            timeout_s=total_s + 120, trace_msg=False, name="carrier",
        )  # fmt: skip
        processes.append(carrier.start())
        carrier.wait_listening()
        csv_file = write_calls_csv(
            workdir / "calls.csv", [CallCase("+33162000001", c, "relay") for c in CONSENTED[:9]]
        )
        dialer = Sipp(
            "dialer_uac.xml", workdir / "dialer", free_ports(1)[0], remote=inside, calls=calls,
            csv_file=csv_file, rate=args.rate, pause_ms=args.hold_ms, timeout_s=total_s + 60,
            limit=max(100, int(args.rate * 20)), trace_msg=False, name="dialer",
        )  # fmt: skip
        _, text = http_get(f"{admin}/metrics")
        metric = args.latency_metric or find_latency_histogram(text)
        print(
            f"flood: legit {args.rate:g} calls/s, floods at {flood_pps:g} packets/s, phases of "
            f"{args.phase_s:g} s; decision histogram: {metric or 'NOT FOUND (figures from SIPp only)'}; "
            f"traces in {workdir}",
            flush=True,
        )
        prober = Prober(f"{admin}/healthz").start()
        dialer.start()
        processes.append(dialer)
        t0 = time.monotonic()
        time.sleep(args.warmup_s)
        for phase in phases:
            before = parse_metrics(http_get(f"{admin}/metrics")[1])
            cpu0, w0 = proc_cpu_seconds(pid), time.monotonic()
            phase.start_s = w0 - t0
            prober.take()
            kind = {"unknown-src": "unknown", "malformed": "malformed"}.get(phase.name)
            if kind:
                with sender(kind, flood_pps, args.phase_s, inside) as proc:
                    out, _ = proc.communicate(timeout=args.phase_s + 30)
                    phase.flood_sent = int(out.strip() or 0)
            else:
                time.sleep(args.phase_s)
            w1 = time.monotonic()
            phase.end_s = w1 - t0
            phase.cpu_pct = 100 * (proc_cpu_seconds(pid) - cpu0) / (w1 - w0)
            phase.worst_probe_ms, phase.probe_failures = prober.take()
            after = parse_metrics(http_get(f"{admin}/metrics")[1])
            if metric:
                b0, b1 = buckets(before, metric), buckets(after, metric)
                scale = 1000.0 if "seconds" in metric else 1.0
                p50, p99 = histogram_quantile(0.5, b0, b1), histogram_quantile(0.99, b0, b1)
                phase.p50_ms = None if p50 is None else p50 * scale
                phase.p99_ms = None if p99 is None else p99 * scale
                phase.decisions = b1.get(math.inf, 0.0) - b0.get(math.inf, 0.0)
            phase.counters = counter_deltas(before, after)
            print(f"  {phase.name}: done", flush=True)
        prober.stop()
        run = dialer.wait(timeout_s=60)
        rtt_file = dialer._glob("*_rtt.csv")
        rows: list[tuple[float, float]] = []
        if rtt_file is not None:
            for line in rtt_file.read_text(errors="replace").splitlines()[1:]:
                parts = line.split(";")
                if len(parts) >= 3 and parts[2].strip() == "invite":
                    with contextlib.suppress(ValueError):
                        rows.append((float(parts[0]) / 1000, float(parts[1])))
        for phase in phases:
            rtts = [ms for t, ms in rows if phase.start_s <= t < phase.end_s]
            phase.calls = len(rtts)
            if len(rtts) >= 2:
                phase.rtt_p99_ms = statistics.quantiles(rtts, n=100)[98]

        print()
        print(
            f"{'phase':<12} {'flood sent':>10} {'decisions':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'INVITE p99':>10} {'worst /healthz':>14} {'cpu %':>6}"
        )
        for p in phases:
            print(
                f"{p.name:<12} {p.flood_sent:>10d} {p.decisions:>9.0f} {fmt(p.p50_ms, '8.3f')} "
                f"{fmt(p.p99_ms, '8.3f')} {fmt(p.rtt_p99_ms, '10.0f')} {p.worst_probe_ms:>12.1f}ms "
                f"{p.cpu_pct:>6.1f}" + (f"  ({p.probe_failures} probe failures)" if p.probe_failures else "")
            )
        for p in phases:
            if p.counters:
                print(f"counters that moved during {p.name}:")
                for key, delta in sorted(p.counters.items()):
                    print(f"    {key} +{delta:.0f}")
        print(f"dialer: {run.created} calls, {run.successful} ok, {run.failed} failed (rc {run.returncode})")
        verdicts = []
        for label, attr in (("decision", "p99_ms"), ("SIPp INVITE->final", "rtt_p99_ms")):
            base = getattr(phases[0], attr)
            for p in phases[1:3]:
                value = getattr(p, attr)
                if base and value is not None:
                    ratio = value / base
                    verdicts.append(
                        f"{label} p99 {p.name} x{ratio:.2f} ({'ok' if ratio <= 2 else 'OVER 2x'})"
                    )
        print("verdict: " + ("; ".join(verdicts) if verdicts else "nothing to compare"))
        if metric is None:
            print("(no decision histogram on /metrics: the SIPp figure includes the carrier's ring time)")
        return 0
    finally:
        for proc in processes:
            proc.stop()
        if deployment is not None:
            deployment.sipfilter.stop()
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
