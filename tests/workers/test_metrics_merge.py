"""Worker 0's /metrics: its own series and the other workers' expositions, fetched over their sockets, as
one exposition where every sample carries its worker."""

from __future__ import annotations

import asyncio
import mmap
import socket
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sipfilter.workers.metrics_merge import MergedRegistry
from sipfilter.workers.worker import WorkerContext


def registry(calls: int, dialogs: int) -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("sipfilter_decisions", "d", ["action"], registry=reg).labels("allow").inc(calls)
    Gauge("sipfilter_active_dialogs", "a", registry=reg).set(dialogs)
    Histogram("sipfilter_decision_duration_seconds", "h", buckets=(0.001, 0.01), registry=reg).observe(0.005)
    return reg


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_every_worker_s_series_with_its_label(tmp_path: Path) -> None:
    restarts = mmap.mmap(-1, 8 * 3)
    restarts[8:16] = (2).to_bytes(8, "little")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    context = WorkerContext(0, 3, [], [b], a, tmp_path, restarts)
    other = registry(5, 2)

    async def answer(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(generate_latest(other))
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(answer, path=str(context.metrics_socket(1)))
    try:
        merged = MergedRegistry(registry(3, 1), context)
        await merged.gather()  # worker 2 has no socket: left out, counted
        got = samples(generate_latest(merged).decode())
    finally:
        server.close()
        a.close()
        b.close()
    assert got[("sipfilter_decisions_total", (("action", "allow"), ("worker", "0")))] == 3
    assert got[("sipfilter_decisions_total", (("action", "allow"), ("worker", "1")))] == 5
    assert got[("sipfilter_active_dialogs", (("worker", "0"),))] == 1
    assert got[("sipfilter_active_dialogs", (("worker", "1"),))] == 2
    assert got[("sipfilter_decision_duration_seconds_count", (("worker", "1"),))] == 1
    assert got[("sipfilter_worker_restarts_total", (("worker", "1"),))] == 2
    assert got[("sipfilter_worker_scrape_failures_total", (("worker", "2"),))] == 1
    assert got[("sipfilter_workers", ())] == 3
    assert not any(labels == (("action", "allow"),) for _, labels in got)  # no sample without its worker
