"""Benchmark the list stores: import time, RSS per number, load time and lookup latency, embedded and Redis.

Usage: .venv/bin/python bench/lists.py [--sizes 1000000,20000000] [--backends embedded,redis]
Prints figures; asserts nothing. Needs redis-server on PATH for the Redis runs (started on a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def make_bloctel(path: Path, n: int, seed: int = 7) -> None:
    """A Bloctel-like export: header, then `0XXXXXXXXX;date` lines (mostly mobiles, some landlines)."""
    rng = np.random.default_rng(seed)
    mobiles = rng.integers(600000000, 800000000, size=int(n * 0.8), dtype=np.int64)
    fixed = rng.integers(100000000, 600000000, size=n - len(mobiles), dtype=np.int64)
    nsn = np.concatenate([mobiles, fixed])
    rng.shuffle(nsn)
    with open(path, "w") as f:
        f.write("NUMERO;DATE_INSCRIPTION\n")
        for start in range(0, n, 1 << 20):
            chunk = nsn[start : start + (1 << 20)]
            f.write("".join(f"0{v:09d};2026-01-01\n" for v in chunk.tolist()))


def write_config(tmp: Path, backend: str, redis_url: str) -> Path:
    import yaml

    data = yaml.safe_load((ROOT / "config" / "sipfilter.yaml").read_text())
    data["rule_packs"] = {"fr": str(ROOT / "config" / "rules" / "fr.yaml")}
    data["store"] = {"backend": backend, "data_dir": str(tmp / "data"), "redis_url": redis_url}
    data["audit"]["path"] = str(tmp / "audit.jsonl")
    path = tmp / f"sipfilter-{backend}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def child(config_path: str, n: int) -> dict[str, float]:
    """In a fresh process: RSS growth when the store loads the list, load time, lookup and counter latency."""
    import sipfilter.stores.embedded
    import sipfilter.stores.redis_store  # noqa: F401  (imports are not the list's memory)
    from sipfilter.configure import load_config
    from sipfilter.stores import open_store

    config = load_config(config_path)
    before = rss_bytes()
    t = time.perf_counter()
    store = await open_store(config, watch=False)
    load_s = time.perf_counter() - t
    rss = rss_bytes() - before
    numbers = list(store.list_numbers("bloctel"))[:: max(1, n // 200_000)][:200_000]
    rng = np.random.default_rng(1)
    misses = [f"+33{v}" for v in rng.integers(600000000, 800000000, size=200_000).tolist()]
    contains = store.list_contains
    out: dict[str, float] = {"load_s": load_s, "rss_bytes": rss, "rss_per_number": rss / n}
    for label, probes in (("hit", numbers), ("mixed", misses)):
        t = time.perf_counter()
        for p in probes:
            contains("bloctel", p)
        out[f"lookup_{label}_us"] = (time.perf_counter() - t) / len(probes) * 1e6
    t = time.perf_counter()
    k = 2000
    for i in range(k):
        await store.check_and_record_attempt("bench", f"+3361{i:07d}", time.time(), 4, 2592000.0, 5184000.0)
    out["attempt_us"] = (time.perf_counter() - t) / k * 1e6
    await store.close()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,20000000")
    ap.add_argument("--backends", default="embedded,redis")
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child[0], int(args.child[1])))))
        return
    tmp = Path(tempfile.mkdtemp(prefix="sipfilter-bench-"))
    redis_proc = None
    try:
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        if "redis" in args.backends and shutil.which("redis-server"):
            redis_proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp),
                ],
                stdout=subprocess.DEVNULL,
            )
            time.sleep(0.5)
        for n in [int(x) for x in args.sizes.split(",")]:
            src = tmp / f"bloctel-{n}.csv"
            t = time.perf_counter()
            make_bloctel(src, n)
            print(
                f"\n== {n:,} numbers (file {src.stat().st_size / 1e6:.0f} MB, generated in "
                f"{time.perf_counter() - t:.1f}s)",
                flush=True,
            )
            for backend in args.backends.split(","):
                if backend == "redis" and redis_proc is None:
                    print("redis: skipped (no redis-server)")
                    continue
                config = write_config(tmp, backend, url)
                t = time.perf_counter()
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "sipfilter",
                        "lists",
                        "import",
                        "--config",
                        str(config),
                        "--list",
                        "bloctel",
                        str(src),
                        "--quiet",
                    ],
                    check=True,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                import_s = time.perf_counter() - t
                res = subprocess.run(
                    [sys.executable, __file__, "--child", str(config), str(n)],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                )
                r = json.loads(res.stdout.strip().splitlines()[-1])
                print(
                    f"{backend:<9} import (CLI, end to end) {import_s:6.1f}s | load {r['load_s']:.2f}s | "
                    f"RSS {r['rss_bytes'] / 1e6:6.1f} MB = {r['rss_per_number']:.2f} B/number | lookup "
                    f"hit {r['lookup_hit_us']:.2f} µs, miss {r['lookup_mixed_us']:.2f} µs | "
                    f"check_and_record_attempt {r['attempt_us']:.0f} µs",
                    flush=True,
                )
            src.unlink()
    finally:
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
