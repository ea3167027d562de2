#!/usr/bin/env python3
"""Bounded soak: SIPp calls at half the given maximum rate through `sipfilter run` for N minutes (>= 10).

Prints RSS, open fds, active dialogs (/metrics), event-loop lag and call counts every interval, then a
summary saying whether the lines stayed flat. A benchmark, not a test: it prints figures, asserts nothing.

Self-contained by default (free ports on 127.0.0.1: a carrier SIPp UAS, `sipfilter run --config <generated>`
provisioned through its CLI, a dialer SIPp UAC). To soak an instance you started yourself
(`sipfilter run --config your.yaml`), pass --attach with --pid, --inside, --admin and a --csv of calls that
instance relays; its carrier must be running.

    .venv/bin/python bench/soak.py --rate 100                 # 10 minutes at 50 calls/s
    .venv/bin/python bench/soak.py --rate 100 --minutes 60 --hold-ms 5000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from sipp_harness import (  # noqa: E402  (the e2e harness lives with the tests)
    CallCase,
    Sipp,
    _last_stat_row,
    free_ports,
    metric_sum,
    proc_cpu_seconds,
    sipfilter_available,
    write_calls_csv,
)

ACTIVE_DIALOGS = "sipfilter_active_dialogs"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # since the start of the load
    rss_mib: float
    fds: int
    dialogs: float | None
    lag_ms: float | None  # from the event-loop lag metric, when sipfilter exports one
    probe_ms: float  # median time of 5 GET /healthz: the loop's responsiveness seen from outside
    cpu_pct: float
    created: int
    successful: int
    failed: int


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def http_get(url: str, token: str | None, timeout_s: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except OSError:
        return 0, ""


def loop_lag_ms(metrics: str, previous: dict[str, float]) -> float | None:
    """The event-loop lag metric, whatever sipfilter/metrics/ calls it (a name containing "loop_lag"):
    a gauge is read as is; a histogram/summary as the mean over the last interval (from _sum/_count)."""
    values: dict[str, float] = {}
    for line in metrics.splitlines():
        m = _SAMPLE.match(line)
        if m and "loop_lag" in m.group(1) and not m.group(1).endswith(("_bucket", "_created")):
            with contextlib.suppress(ValueError):
                values[m.group(1)] = values.get(m.group(1), 0.0) + float(m.group(3))
    sums = {k[: -len("_sum")]: v for k, v in values.items() if k.endswith("_sum")}
    for base, total in sums.items():
        count = values.get(base + "_count")
        if count is None:
            continue
        d_sum, d_count = total - previous.get(base + "_sum", 0.0), count - previous.get(base + "_count", 0.0)
        previous[base + "_sum"], previous[base + "_count"] = total, count
        scale = 1000.0 if base.endswith("_seconds") else 1.0
        return d_sum / d_count * scale if d_count > 0 else 0.0
    for name, value in values.items():
        if not name.endswith(("_sum", "_count", "_total")):
            return value * (1000.0 if name.endswith("_seconds") else 1.0)
    return None


def probe_ms(url: str, token: str | None) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        http_get(url, token, timeout_s=5.0)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def slope_per_min(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (seconds), per minute; 0 with fewer than two points."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--rate", type=float, required=True, help="maximum call rate (calls/s); soak runs at half"
    )
    ap.add_argument("--minutes", type=float, default=10.0, help="duration of the load (default 10)")
    ap.add_argument("--hold-ms", type=int, default=2000, help="talk time of each answered call")
    ap.add_argument("--ring-ms", type=int, default=50, help="carrier ring time before 200")
    ap.add_argument("--interval-s", type=float, default=60.0, help="sampling period (default 60 s)")
    ap.add_argument("--transport", choices=("u1", "t1"), default="u1", help="dialer transport: UDP or TCP")
    ap.add_argument(
        "--workdir", type=Path, help="where traces go (default: a temp dir, removed unless --keep)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--attach", action="store_true", help="drive an already running sipfilter")
    ap.add_argument("--pid", type=int, help="--attach: pid of `sipfilter run`")
    ap.add_argument("--inside", help="--attach: host:port of its dialer-side listener")
    ap.add_argument("--admin", help="--attach: base URL of its admin port, e.g. http://127.0.0.1:9090")
    ap.add_argument("--token", help="--attach: admin bearer token")
    ap.add_argument(
        "--csv", type=Path, help="--attach: SIPp -inf file of calls it relays (caller;callee;relay;)"
    )
    args = ap.parse_args(argv)
    if args.minutes < 10 and not os.environ.get("SIPFILTER_SOAK_SHORT"):
        ap.error("a soak runs at least 10 minutes (set SIPFILTER_SOAK_SHORT=1 to try the script quicker)")
    if args.attach and not all((args.pid, args.inside, args.admin, args.csv)):
        ap.error("--attach needs --pid, --inside, --admin and --csv")
    if not args.attach and (why := sipfilter_available()):
        print(f"soak: {why}", file=sys.stderr)
        return 2

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sipfilter-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    drive_rate = args.rate / 2
    total_calls = max(1, int(drive_rate * args.minutes * 60))
    load_s = total_calls / drive_rate
    expected_dialogs = drive_rate * (args.hold_ms + args.ring_ms) / 1000
    processes: list[Sipp] = []
    deployment = None
    try:
        if args.attach:
            pid, inside, admin, token, csv_file = (
                args.pid,
                args.inside,
                args.admin.rstrip("/"),
                args.token,
                args.csv,
            )
        else:
            from sipfilter_provision import CONSENTED, deploy

            deployment = deploy(workdir / "sipfilter")
            assert deployment.sipfilter.proc is not None
            pid, inside = deployment.sipfilter.proc.pid, deployment.inside
            admin, token = f"http://127.0.0.1:{deployment.sipfilter.ports.admin}", None
            carrier = Sipp(
                "carrier_uas.xml",
                workdir / "carrier",
                deployment.carrier_ports[0],
                calls=total_calls * 2 + 1000,  # sipfilter's OPTIONS probes count as calls for SIPp
                pause_ms=args.ring_ms,
                timeout_s=load_s + 300,
                trace_msg=False,
                limit=None,
                name="carrier",
            )
            processes.append(carrier.start())
            carrier.wait_listening()
            # Consented callees, one valid caller: every call is legal and relayed; the frequency cap is
            # lifted by the harness's rule overrides.
            csv_file = write_calls_csv(
                workdir / "calls.csv", [CallCase("+33162000001", callee, "relay") for callee in CONSENTED[:9]]
            )
        print(
            f"soak: {args.minutes:g} min at {drive_rate:g} calls/s (half of {args.rate:g}), "
            f"hold {args.hold_ms} ms, ~{expected_dialogs:.0f} concurrent dialogs expected; "
            f"sipfilter pid {pid}; traces in {workdir}",
            flush=True,
        )
        dialer = Sipp(
            "dialer_uac.xml",
            workdir / "dialer",
            free_ports(1)[0],
            remote=inside,
            transport=args.transport,
            calls=total_calls,
            csv_file=csv_file,
            rate=drive_rate,
            limit=max(50, int(expected_dialogs * 10)),
            pause_ms=args.hold_ms,
            timeout_s=load_s + 120,
            trace_msg=False,
            name="dialer",
        )
        lag_state: dict[str, float] = {}
        status, metrics = http_get(f"{admin}/metrics", token)
        if status != 200:
            print(f"soak: {admin}/metrics answered {status}", file=sys.stderr)
            return 2
        loop_lag_ms(metrics, lag_state)
        rss0, fds0 = rss_mib(pid), open_fds(pid)
        dialogs0 = metric_sum(metrics, ACTIVE_DIALOGS)
        print(f"before load: rss {rss0:.1f} MiB, {fds0} fds, dialogs {fmt(dialogs0, '.0f')}")
        header = (
            f"{'min':>6} {'rss MiB':>8} {'fds':>5} {'dialogs':>8} {'lag ms':>7} {'probe ms':>8} "
            f"{'cpu %':>6} {'calls':>8} {'ok':>8} {'failed':>7}"
        )
        print(header, flush=True)
        samples: list[Sample] = []
        start = time.monotonic()
        dialer.start()
        processes.append(dialer)
        cpu_prev, t_prev = proc_cpu_seconds(pid), start
        next_at = start + args.interval_s
        while dialer.proc is not None and dialer.proc.poll() is None:
            time.sleep(max(0.0, min(1.0, next_at - time.monotonic())))
            if time.monotonic() < next_at:
                continue
            next_at += args.interval_s
            now = time.monotonic()
            cpu = proc_cpu_seconds(pid)
            _, metrics = http_get(f"{admin}/metrics", token)
            row = _last_stat_row(dialer._glob("*_.csv"))
            s = Sample(
                t_s=now - start,
                rss_mib=rss_mib(pid),
                fds=open_fds(pid),
                dialogs=metric_sum(metrics, ACTIVE_DIALOGS),
                lag_ms=loop_lag_ms(metrics, lag_state),
                probe_ms=probe_ms(f"{admin}/healthz", token),
                cpu_pct=100 * (cpu - cpu_prev) / (now - t_prev),
                created=int(row.get("TotalCallCreated", 0) or 0),
                successful=int(row.get("SuccessfulCall(C)", 0) or 0),
                failed=int(row.get("FailedCall(C)", 0) or 0),
            )
            cpu_prev, t_prev = cpu, now
            samples.append(s)
            print(
                f"{s.t_s / 60:6.1f} {s.rss_mib:8.1f} {s.fds:5d} {fmt(s.dialogs, '8.0f')} "
                f"{fmt(s.lag_ms, '7.2f')} "
                f"{s.probe_ms:8.2f} {s.cpu_pct:6.1f} {s.created:8d} {s.successful:8d} {s.failed:7d}",
                flush=True,
            )
        run = dialer.wait(timeout_s=30)
        # Let the last calls end, then read what is left behind.
        time.sleep(min(30.0, 2 + args.hold_ms / 1000))
        _, metrics = http_get(f"{admin}/metrics", token)
        left = metric_sum(metrics, ACTIVE_DIALOGS)
        rss1, fds1 = rss_mib(pid), open_fds(pid)
        print()
        print(
            f"dialer: {run.created} calls, {run.successful} ok, {run.failed} failed, "
            f"{run.retransmissions} retransmissions (rc {run.returncode})"
        )
        invite = run.rtts_ms.get("invite", ())
        if invite:
            q = statistics.quantiles(invite, n=100) if len(invite) > 1 else [invite[0]] * 99
            print(f"INVITE->final (SIPp, ms): p50 {q[49]:.0f}  p99 {q[98]:.0f}  max {max(invite):.0f}")
        print(
            f"after load: rss {rss1:.1f} MiB ({rss1 - rss0:+.1f}), fds {fds1} ({fds1 - fds0:+d}), "
            f"dialogs left {fmt(left, '.0f')}"
        )
        # Flatness is judged on the second half: the first minutes include warm-up (caches, pools).
        tail = samples[len(samples) // 2 :]
        if len(tail) >= 2:
            xs = [s.t_s for s in tail]
            rss_slope = slope_per_min(xs, [s.rss_mib for s in tail])
            fd_slope = slope_per_min(xs, [float(s.fds) for s in tail])
            dlg = [s.dialogs for s in tail if s.dialogs is not None]
            lags = [s.lag_ms for s in tail if s.lag_ms is not None]
            print(
                f"second half: rss slope {rss_slope:+.3f} MiB/min, fd slope {fd_slope:+.2f}/min, "
                f"dialogs {min(dlg, default=0):.0f}..{max(dlg, default=0):.0f}, "
                f"lag max {fmt(max(lags) if lags else None, '.2f')} ms, "
                f"probe max {max(s.probe_ms for s in tail):.2f} ms"
            )
            flat = abs(rss_slope) * 60 < max(8.0, 0.05 * tail[0].rss_mib) and abs(fd_slope) < 1 and not left
            print("verdict: FLAT" if flat else "verdict: NOT FLAT (look at the rows above)")
        else:
            print("verdict: too short to judge flatness (need at least 4 samples)")
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
