"""Benchmark of the policy engine: decisions/s and p50/p99 latency per decision for a realistic call mix
(CallFacts read from a parsed INVITE by sipfilter.b2bua.facts + decide, attempts recorded).

The event loop runs between decisions (`--per-tick` decisions per iteration, 1 by default: the lightest load,
where write-behind batches least); what it does there (the embedded store's attempt writes, its watcher) is
timed apart as "between ticks". Prints figures; not part of the test suite.
Run: .venv/bin/python bench/policy.py [--store memory|embedded] [--calls 200000] [--per-tick 1] [--rate 0]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import resource
import statistics
import sys
import tempfile
import time
from collections import deque
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipfilter.app import GC_THRESHOLDS  # noqa: E402
from sipfilter.b2bua.facts import read_invite  # noqa: E402
from sipfilter.configure import load_config  # noqa: E402
from sipfilter.policy.engine import PolicyEngine  # noqa: E402
from sipfilter.sip import Request, parse  # noqa: E402
from sipfilter.stores.base import AttemptDecision, ConsentRecord, ContractRecord, ListInfo  # noqa: E402


class BenchStore:
    """Embedded-like store: lists as Python sets, consent/contract as dicts, counters as per-key deques."""

    def __init__(self, lists: dict[str, set[str]], imported_at: float):
        self.lists = lists
        self.infos = {n: ListInfo(n, 1, len(s), imported_at, n, 0, "") for n, s in lists.items()}
        self.consents: dict[tuple[str, str], ConsentRecord] = {}
        self.contracts: set[tuple[str, str]] = set()
        self.counters: dict[tuple[str, str], deque[float]] = {}
        self.refusals: dict[tuple[str, str], float] = {}

    def list_contains(self, list_name: str, number: str) -> bool:
        return number in self.lists[list_name]

    def list_info(self, list_name: str) -> ListInfo | None:
        return self.infos.get(list_name)

    def list_names(self) -> list[str]:
        return list(self.lists)

    def consent_for(self, account: str, number: str, at: float) -> ConsentRecord | None:
        return self.consents.get((account, number))

    def has_contract(self, account: str, number: str, at: float, purpose: str | None = None) -> bool:
        return (account, number) in self.contracts

    def contract_for(self, account: str, number: str, at: float,
                     purpose: str | None = None) -> ContractRecord | None:  # fmt: skip
        return ContractRecord(account, number, 0.0) if (account, number) in self.contracts else None

    def opposition_for(self, account: str, number: str, at: float) -> float | None:
        return None

    def list_versions(self, names: tuple[str, ...]) -> dict[str, int]:
        return {n: self.infos[n].version for n in names if n in self.infos}

    async def check_and_record_attempt(
        self, account: str, number: str, now: float, cap: int, window_s: float, refusal_cooldown_s: float
    ) -> AttemptDecision:
        key = (account, number)
        refused = self.refusals.get(key)
        if refused is not None and now - refused < refusal_cooldown_s:
            return AttemptDecision(False, 0, refused)
        q = self.counters.get(key)
        if q is None:
            q = self.counters[key] = deque()
        while q and now - q[0] >= window_s:
            q.popleft()
        if len(q) >= cap:
            return AttemptDecision(False, len(q), refused)
        q.append(now)
        return AttemptDecision(True, len(q), refused)

    async def attempts(self, account: str, number: str, now: float, window_s: float) -> int:
        return len(self.counters.get((account, number), ()))

    async def record_refusal(self, account: str, number: str, at: float) -> None:
        self.refusals[(account, number)] = at

    async def last_refusal(self, account: str, number: str) -> float | None:
        return self.refusals.get((account, number))

    async def close(self) -> None:
        return None


def mobile(rng: random.Random) -> str:
    # Metropolitan 060–065 only: 0639/069x are overseas mobiles, normalised to +262/+590/+596 (not +33).
    return f"+336{rng.choice('01245')}{rng.randrange(10**7):07d}"


def build(calls: int, dnc_size: int, seed: int = 7):
    rng = random.Random(seed)
    at0 = datetime.fromisoformat("2026-09-16T10:00:00+02:00").timestamp()  # a Wednesday, opt-in regime
    callees = [mobile(rng) for _ in range(max(1000, calls // 3))]
    bloctel = {mobile(rng) for _ in range(dnc_size)}
    dnc_hits = rng.sample(callees, len(callees) // 10)
    bloctel.update(dnc_hits)
    store = BenchStore(
        {"bloctel": bloctel, "optouts": set(rng.sample(callees, len(callees) // 50))}, at0 - 86400
    )
    for c in callees:
        if rng.random() < 0.9:  # 90 % of the file has consent (opt-in regime)
            store.consents[("acme-energie", c)] = ConsentRecord("acme-energie", c, at0 - 86400 * 100, "crm")
    for c in rng.sample(callees, len(callees) // 100):
        store.refusals[("acme-energie", c)] = at0 - 86400 * 10
    npv = [f"01621{i:05d}" for i in range(20)] + [f"+33949{i:06d}" for i in range(20)]
    bad_cli = ["0612345678", "0899123456", "0145000000", "sip:anonymous@anonymous.invalid"]
    forms = (
        lambda n: f"sip:{n}@carrier.example;user=phone",
        lambda n: "0" + n[3:],
        lambda n: f"tel:{n}",
        lambda n: f"sip:0{n[3:]}@10.0.0.1",
    )
    mix = []
    for i in range(calls):
        caller = rng.choice(bad_cli) if rng.random() < 0.05 else rng.choice(npv)
        callee = rng.choice(forms)(rng.choice(callees))
        mix.append((caller, callee, at0 + i * (10 * 3600 / calls)))  # spread over 10:00-20:00 (incl. lunch)
    return store, mix


def requests(mix: list[tuple[str, str, float]]) -> list[tuple[Request, float]]:
    """INVITEs as the B2BUA hands them over (parsed and validated by the SIP core): From with a fresh tag
    each call, PAI on a third of them."""
    out = []
    for i, (caller, callee, at) in enumerate(mix):
        uri = callee if callee.startswith(("sip:", "tel:")) else f"sip:{callee}@sipfilter.local;user=phone"
        ident = caller if caller.startswith("sip:") else f"sip:{caller}@10.0.0.1;user=phone"
        lines = [
            f"INVITE {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{i:x}",
            "Max-Forwards: 70",
            f'From: "Acme" <{ident}>;tag={i:x}',
            f"To: <{uri}>",
            f"Call-ID: {i:x}@dialer",
            "CSeq: 1 INVITE",
            "Contact: <sip:dialer@10.0.0.1:5060>",
        ]
        if i % 3 == 0:
            lines.append(f"P-Asserted-Identity: <{ident}>")
        msg = parse(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
        assert isinstance(msg, Request)
        out.append((msg, at))
    return out


async def run(
    engine: PolicyEngine,
    store: BenchStore,
    reqs: list[tuple[Request, float]],
    rules: dict[str, int],
    per_tick: int = 1,
    between: list[int] | None = None,
    cpu: list[int] | None = None,
    rate: float = 0.0,
) -> list[int]:
    """Latency of each decision (ns); the event loop runs after every `per_tick` decisions, its time is
    appended to `between`; the thread's CPU time of each decision to `cpu` (read outside the latency
    interval: it is a system call). `rate` > 0: INVITEs arrive at that many per second (the loop sleeps
    until the next one is due) instead of back to back."""
    lat: list[int] = []
    ticks = between if between is not None else []
    cpus = cpu if cpu is not None else []
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    reader, decide = engine.reader("dialer"), engine.decide
    n = 0
    start = time.perf_counter()
    for i, (request, at) in enumerate(reqs):
        c0 = cpu_clock()
        t0 = clock()
        facts = read_invite(reader, "dialer", request, at).facts
        d = await decide(facts, store)
        t1 = clock()
        cpus.append(cpu_clock() - c0)
        lat.append(t1 - t0)
        rule = d.verdict.rule or "allow"
        rules[rule] = rules.get(rule, 0) + 1
        n += 1
        if n == per_tick:
            n = 0
            t0 = clock()
            # The loop's other callbacks (write-behind, watcher), and the wait for the next INVITE.
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()) if rate else 0)
            if not rate:
                ticks.append(clock() - t0)
    return lat


async def bench_embedded(args: argparse.Namespace) -> None:
    """The same mix on the embedded backend of open_store (lists imported through the importer)."""
    from sipfilter.policy.rulepack import normaliser_for
    from sipfilter.stores import open_store
    from sipfilter.stores.importer import read_list
    from sipfilter.stores.writable import ContractRecord  # noqa: F401  (the backend's record types)

    with tempfile.TemporaryDirectory() as tmp:
        text = (
            (ROOT / "config" / "sipfilter.yaml")
            .read_text()
            .replace("rules/fr.yaml", str(ROOT / "config" / "rules" / "fr.yaml"))
            .replace("../var/data", f"{tmp}/data")
        )
        cfg = Path(tmp) / "sipfilter.yaml"
        cfg.write_text(text)
        config = load_config(cfg)
        engine = PolicyEngine(config)
        mem, mix = build(args.calls, args.dnc)
        # Provision as the CLI does (its own short-lived handle), then open the store as `sipfilter run` does.
        store = await open_store(config, watch=False)
        try:
            t0 = time.perf_counter()
            for name, numbers in mem.lists.items():
                src = Path(tmp) / f"{name}.txt"
                src.write_text("\n".join(numbers) + "\n")
                result = read_list(src, normaliser_for(config))
                await store.put_list(
                    name, result.numbers, result.source, imported_at=mem.infos[name].imported_at
                )
            await store.add_consents(list(mem.consents.values()))  # as `sipfilter consent import`
            for (account, number), at in mem.refusals.items():
                await store.record_refusal(account, number, at)
            print(f"  provisioning: {time.perf_counter() - t0:.1f} s")
        finally:
            await store.close()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        store = await open_store(config)  # watch=True: the proxy's handle (records preloaded, watcher on)
        print(f"  open (proxy): {time.perf_counter() - t0:.2f} s, max RSS {rss0 / 1024:.0f} → "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        try:
            # Warm code paths and number caches on a throw-away store, as the memory run does.
            warm = BenchStore(mem.lists, mem.infos["bloctel"].imported_at)
            await run(engine, warm, requests(mix[:2000]), {})
            reqs = requests(mix)
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)  # as `sipfilter run` sets them once started
            outcomes: dict[str, int] = {}
            between: list[int] = []
            cpu_lat: list[int] = []
            t0, c0 = time.perf_counter(), time.process_time()
            lat = await run(  # type: ignore[arg-type]
                engine, store, reqs, outcomes, args.per_tick, between, cpu_lat, args.rate
            )
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            await store.close()
    report(
        f"embedded store, {len(mix)} decisions (facts + decide), Bloctel set of {len(mem.lists['bloctel'])}",
        lat,
        wall,
        cpu,
        outcomes,
        between,
        cpu_lat,
    )


def report(
    title: str,
    lat: list[int],
    wall: float,
    cpu: float,
    outcomes: dict[str, int],
    between: list[int],
    cpu_lat: list[int],
) -> None:
    lat.sort()
    q = statistics.quantiles(lat, n=100)
    print(title)
    print(f"  decisions/s : {len(lat) / wall:,.0f}")
    # CPU time does not count the time other processes held the core: comparable across machine loads.
    print(f"  CPU/decision: {cpu / len(lat) * 1e6:.1f} µs (includes the benchmark loop)")
    if cpu < wall * 0.8:
        print(f"  note        : the process had the CPU {cpu / wall:.0%} of the time (shared cores)")
    print(f"  p50 latency : {q[49] / 1000:.1f} µs")
    print(f"  p99 latency : {q[98] / 1000:.1f} µs")
    print(f"  max latency : {lat[-1] / 1000:.1f} µs")
    if cpu_lat:
        # The same decisions in thread CPU time: what is left when preemption by other processes is not
        # counted (it still counts their cache pollution). Includes ~1 µs of the wall clock reads.
        cpu_lat.sort()
        c = statistics.quantiles(cpu_lat, n=100)
        print(f"  CPU time    : p50 {c[49] / 1000:.1f} µs, p99 {c[98] / 1000:.1f} µs per decision")
    if between:
        between.sort()
        b = statistics.quantiles(between, n=100)
        print(
            f"  between ticks: {len(between)} loop iterations,"
            f" mean {sum(between) / len(between) / 1000:.1f} µs,"
            f" p99 {b[98] / 1000:.1f} µs, max {between[-1] / 1000:.1f} µs (write-behind, watcher)"
        )
    print(
        "  verdicts    : " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1]))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--dnc", type=int, default=1_000_000, help="numbers in the Bloctel set")
    ap.add_argument("--per-tick", type=int, default=1, help="decisions per event-loop iteration")
    ap.add_argument(
        "--rate", type=float, default=0.0, help="INVITEs per second (default: back to back, a CPU stress)"
    )
    ap.add_argument(
        "--store",
        choices=("memory", "embedded"),
        default="memory",
        help="memory: Python sets/dicts; embedded: the real embedded store (Roaring lists + SQLite)",
    )
    args = ap.parse_args()
    if args.store == "embedded":
        asyncio.run(bench_embedded(args))
        return
    with tempfile.TemporaryDirectory() as tmp:
        text = (
            (ROOT / "config" / "sipfilter.yaml")
            .read_text()
            .replace("rules/fr.yaml", str(ROOT / "config" / "rules" / "fr.yaml"))
        )
        cfg = Path(tmp) / "sipfilter.yaml"
        cfg.write_text(text)
        engine = PolicyEngine(load_config(cfg))
    store, mix = build(args.calls, args.dnc)
    # Warm code paths, zones and holidays on a throw-away store (the counters of the real run stay empty).
    warm = BenchStore(store.lists, store.infos["bloctel"].imported_at)
    asyncio.run(run(engine, warm, requests(mix[:2000]), {}))
    reqs = requests(mix)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)  # as `sipfilter run` sets them once started
    outcomes: dict[str, int] = {}
    between: list[int] = []
    cpu_lat: list[int] = []
    t0, c0 = time.perf_counter(), time.process_time()
    lat = asyncio.run(run(engine, store, reqs, outcomes, args.per_tick, between, cpu_lat, args.rate))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    report(
        f"policy engine (in-memory store), {len(mix)} decisions (facts + decide), "
        f"Bloctel set of {len(store.lists['bloctel'])}",
        lat,
        wall,
        cpu,
        outcomes,
        between,
        cpu_lat,
    )


if __name__ == "__main__":
    main()
