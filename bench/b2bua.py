#!/usr/bin/env python3
"""In-process B2BUA benchmark: full calls (INVITE…BYE) and rejected calls through the real call path, policy
engine and embedded store, with recording endpoints instead of sockets, and the production timer wheel on a
manual clock. Prints µs per call spent inside the B2BUA (its entry points and the timers it scheduled; the
driver's own parsing is left out) and in all. With --report-every: RSS, Python's allocated blocks, and the
call attempts the embedded store keeps for its 30-day frequency window (data that legitimately grows with
every relayed call: the clock moves only ~0.9 days over a million calls), with RSS net of them.

    .venv/bin/python bench/b2bua.py --calls 5000 [--profile]   # SIPFILTER_PURE=1: cProfile sees the call path
    .venv/bin/python bench/b2bua.py --calls 1000000 --report-every 100000 [--metrics]   # memory stays flat?
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import heapq
import itertools
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "tests" / "b2bua"))

from b2bua_rig import FakeEndpoint, answer  # noqa: E402
from sipfilter_provision import CONSENTED, provision  # noqa: E402
from sipp_harness import SipfilterPorts, free_ports, sipfilter_config, write_config  # noqa: E402

from sipfilter.app import GC_THRESHOLDS  # noqa: E402
from sipfilter.audit import AuditLog  # noqa: E402
from sipfilter.b2bua.core import B2BUA, compile_runtime  # noqa: E402
from sipfilter.b2bua.wheel import TimerWheel  # noqa: E402
from sipfilter.configure import load_config  # noqa: E402
from sipfilter.metrics import CALLS, PrometheusObserver  # noqa: E402
from sipfilter.policy.engine import PolicyEngine  # noqa: E402
from sipfilter.sip import ParseError, parse  # noqa: E402
from sipfilter.stores import open_store  # noqa: E402

DIALER = ("127.0.0.1", 5999)


def _invite(i: int, callee: str, caller: str) -> bytes:
    return (
        f"INVITE sip:{callee}@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i:x}x\r\n"  # noqa: E501
        f"Max-Forwards: 70\r\nFrom: <sip:{caller}@127.0.0.1>;tag=d{i}\r\nTo: <sip:{callee}@127.0.0.1>\r\n"
        f"Call-ID: bench-{i}\r\nCSeq: 1 INVITE\r\nContact: <sip:dialer@127.0.0.1:5999>\r\n"
        f"P-Asserted-Identity: <sip:{caller}@127.0.0.1>\r\nUser-Agent: bench\r\n"
        "Content-Type: application/sdp\r\nContent-Length: 129\r\n\r\n"
        "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


class _Handle:
    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.callback, self.args, self.cancelled = callback, args, False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback, self.args = _none, ()  # as asyncio's handles: a cancelled one keeps nothing alive


def _none(*_: Any) -> None:
    return None


class ManualLoop:
    """What the timer wheel uses of an event loop (time, call_at, call_soon), on a clock that moves only in
    `advance`. The B2BUA gets the wheel, as under `sipfilter run`: its timers forget their callbacks once
    fired or cancelled; a test clock keeping them would hold every call for its longest timer."""

    def __init__(self, now: float) -> None:
        self.now = now
        self._heap: list[tuple[float, int, _Handle]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:  # the B2BUA's clock
        return self.now

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> _Handle:
        handle = _Handle(callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), handle))
        return handle

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> _Handle:
        return self.call_at(self.now, callback, *args)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        heap = self._heap
        while heap and heap[0][0] <= end:
            when, _, handle = heapq.heappop(heap)
            self.now = max(self.now, when)
            if not handle.cancelled:
                handle.callback(*handle.args)
        self.now = end


def _deep_size(root: object) -> int:
    """Bytes of `root` and everything it holds (containers, slotted objects), each object counted once."""
    seen: set[int] = set()
    total = 0
    stack = [root]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list | tuple | set | frozenset):
            stack.extend(o)
        elif not isinstance(o, str | bytes | int | float):
            for name in getattr(type(o), "__slots__", ()):
                if hasattr(o, name):
                    stack.append(getattr(o, name))
    return total


def _attempts(store: Any) -> tuple[int, float]:
    """Attempts the embedded store keeps in memory for the frequency rules, and their MiB (0 if unknown)."""
    # A peek inside (a bench, not an API). Attempts recorded between two clock steps share one float object.
    table = getattr(getattr(store, "_records", None), "attempts", None)
    if table is None:
        return 0, 0.0
    count = 0
    for key in table:
        count += len(table[key])
    return count, _deep_size(table) / 2**20


def _sqlite_mib() -> float:
    """Memory SQLite holds (page caches, statements) across its connections; NaN if it cannot be asked."""
    try:
        import _sqlite3
        import ctypes

        used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    except (ImportError, OSError, AttributeError):
        return float("nan")
    used.restype = ctypes.c_int64
    return float(used()) / 2**20


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def run(calls: int, reject_every: int, profile: bool, report_every: int = 0, metrics: bool = False
              ) -> None:  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="sipfilter-bench-b2bua-"))
    ports = SipfilterPorts(*free_ports(3))
    config_path = write_config(work / "sipfilter.yaml", sipfilter_config(work, ports, [5071]))
    provision(config_path, work)
    config = load_config(config_path)
    store = await open_store(config)  # as `sipfilter run` opens it (records preloaded, watcher on)
    audit = AuditLog(config.audit)
    clock = ManualLoop(time.time())
    wheel = TimerWheel(clock)  # type: ignore[arg-type]  # the loop's three methods it uses
    inside, outside = FakeEndpoint("inside", 5060), FakeEndpoint("outside", 5080)
    b2b = B2BUA(compile_runtime(config, PolicyEngine(config), store, audit), parse=parse, parse_error=ParseError,  # noqa: E501
                endpoints={"inside": [inside], "outside": [outside]}, scheduler=wheel.call_later, clock=clock,
                observer=PrometheusObserver(CALLS) if metrics else None)  # fmt: skip
    caller = "+33162000001"
    # The GC settings of `sipfilter run` (sipfilter/app.py): the default thresholds would bill full
    # collections of the live calls to whatever allocates at that moment.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    inside_s = 0.0  # CPU time inside the B2BUA (process time: a busy shared machine does not inflate it)

    def feed(ep: FakeEndpoint, data: bytes, addr: tuple[str, int]) -> None:
        nonlocal inside_s
        t = time.process_time()
        b2b.on_datagram(ep, data, addr)
        inside_s += time.process_time() - t

    def advance(seconds: float) -> None:
        nonlocal inside_s
        t = time.process_time()
        clock.advance(seconds)
        inside_s += time.process_time() - t

    rows: list[tuple[int, float, float]] = []  # (calls, RSS MiB, attempts MiB) at each report
    prof = cProfile.Profile() if profile else None
    cpu0 = time.process_time()
    if prof:
        prof.enable()
    for i in range(calls):
        if report_every and i and i % report_every == 0:
            rows.append(_report(i, b2b, wheel, store))
        if i and i % 500 == 0:  # every 500 calls, whichever path the last one took (a rejected one too)
            advance(40)
            # Let the event loop run, as it does between datagrams in `sipfilter run`: the store's
            # write-behind of attempts and its watcher are loop callbacks.
            await asyncio.sleep(0)
        callee = CONSENTED[i % len(CONSENTED)]
        if reject_every and i % reject_every == 0:
            callee = "+33140000000"  # not a mobile/geographic callee the pack accepts: rejected
        feed(inside, _invite(i, callee, caller), DIALER)
        b_inv = next((parse(d) for d, _ in outside.sent if d.startswith(b"INVITE")), None)
        outside.sent.clear()
        a_out = [parse(d) for d, _ in inside.sent]
        inside.sent.clear()
        if b_inv is None:
            final = a_out[-1]
            ack = (f"ACK sip:x@127.0.0.1 SIP/2.0\r\nVia: {final.headers.get('Via')}\r\nMax-Forwards: 70\r\n"
                   f"From: {final.headers.get('From')}\r\nTo: {final.headers.get('To')}\r\nCall-ID: bench-{i}\r\n"  # noqa: E501
                   "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()  # fmt: skip
            feed(inside, ack, DIALER)
            continue
        feed(outside, answer(b_inv, 180), ("127.0.0.1", 5071))
        feed(outside, answer(b_inv, 200, body=b"v=0\r\n"), ("127.0.0.1", 5071))
        ok = parse(inside.sent[-1][0])
        inside.sent.clear()
        to = ok.headers.get("To")
        base = (
            f"sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i:x}{{b}}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{caller}@127.0.0.1>;tag=d{i}\r\nTo: {to}\r\nCall-ID: bench-{i}\r\n"  # noqa: E501
        )
        feed(inside, ("ACK " + base.format(b="a") + "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode(),
                        DIALER)  # fmt: skip
        feed(inside, ("BYE " + base.format(b="b") + "CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode(),
                        DIALER)  # fmt: skip
        b_bye = next(parse(d) for d, _ in outside.sent if d.startswith(b"BYE"))
        outside.sent.clear()
        feed(outside, answer(b_bye, 200, to_tag=""), ("127.0.0.1", 5071))
        inside.sent.clear()
    if prof:
        prof.disable()
    if report_every:
        rows.append(_report(calls, b2b, wheel, store))
    advance(100)  # the timers still pending (transaction memory, Timer I/K) fire: part of a call's cost
    cpu = time.process_time() - cpu0
    print(f"{calls} calls ({f'1 in {reject_every} rejected' if reject_every else 'all relayed'}): "
          f"{inside_s / calls * 1e6:.0f} µs/call inside the B2BUA; {cpu:.2f} s CPU in all, "
          f"{cpu / calls * 1e6:.0f} µs/call with the driver's own parsing; "
          f"calls left: {b2b.active_calls}, transactions left: {len(b2b.server_tx) + len(b2b.client_tx)}")  # fmt: skip  # noqa: E501
    if rows:
        _summary(rows)
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    await store.close()
    audit.close()


def _report(i: int, b2b: B2BUA, wheel: TimerWheel, store: Any) -> tuple[int, float, float]:
    rss = _rss_mib()
    count, mib = _attempts(store)
    full = gc.get_stats()[2]["collections"]  # the GC settings make these rare: garbage cycles wait for them
    print(f"{i:>9} calls: RSS {rss:6.1f} MiB, net of attempts {rss - mib:6.1f} MiB | attempts kept {count:>7}"
          f" ({mib:5.1f} MiB) | SQLite {_sqlite_mib():4.1f} MiB | Python blocks {sys.getallocatedblocks():>8}"
          f", full GCs {full} | calls left "
          f"{b2b.active_calls}, transactions left {len(b2b.server_tx) + len(b2b.client_tx)}, timers pending "
          f"{len(wheel)}", flush=True)  # fmt: skip
    return i, rss, mib


def _summary(rows: list[tuple[int, float, float]]) -> None:
    """Growth per 100k calls from the first report on (the calls before it are the warm-up)."""
    if len(rows) < 2:
        return
    (c0, r0, a0), (c1, r1, a1) = rows[0], rows[-1]
    per = 100_000 / (c1 - c0)
    print(f"after warm-up ({c0} → {c1} calls), per 100k calls: RSS {(r1 - r0) * per:+.1f} MiB, of which "
          f"attempts kept for the frequency window {(a1 - a0) * per:+.1f} MiB (data); "
          f"net {((r1 - a1) - (r0 - a0)) * per:+.1f} MiB")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--reject-every", type=int, default=3, help="every Nth call is rejected (0: none)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--report-every", type=int, default=0, help="print RSS and live state every N calls")
    p.add_argument("--metrics", action="store_true", help="count events as `sipfilter run` does (Prometheus)")
    a = p.parse_args()
    asyncio.run(run(a.calls, a.reject_every, a.profile, a.report_every, a.metrics))


if __name__ == "__main__":
    main()
