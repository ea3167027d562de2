"""Worker 0's /metrics: every worker's series, each with a `worker` label, as one exposition.

Counters and histograms stay per worker (sum them: `sum without (worker) (rate(...))`), gauges say which
worker they describe. A worker that does not answer within GATHER_TIMEOUT_S is left out of that scrape (and
counted in sipfilter_worker_scrape_failures)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sipfilter.workers.worker import WorkerContext

log = logging.getLogger(__name__)

GATHER_TIMEOUT_S = 1.0


class MergedRegistry:
    """What `generate_latest` reads on worker 0: its own registry plus the others' expositions, fetched by
    `gather()` (awaited by the /metrics handler) just before."""

    def __init__(self, own: CollectorRegistry, context: WorkerContext) -> None:
        self.own = own
        self.context = context
        self._others: dict[int, list[Metric]] = {}
        self.scrape_failures = [0] * context.count

    async def gather(self) -> None:
        indexes = range(1, self.context.count)
        texts = await asyncio.gather(*(self._fetch(i) for i in indexes))
        self._others = {}
        for index, text in zip(indexes, texts, strict=True):
            if text is None:
                self.scrape_failures[index] += 1
                continue
            try:
                self._others[index] = list(text_string_to_metric_families(text))
            except ValueError as exc:
                self.scrape_failures[index] += 1
                log.warning("worker %d metrics unreadable: %s", index, exc)

    async def _fetch(self, index: int) -> str | None:
        try:
            async with asyncio.timeout(GATHER_TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(str(self.context.metrics_socket(index)))
                try:
                    return (await reader.read()).decode()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            log.warning("worker %d metrics not gathered: %s", index, exc)
            return None

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        sources: list[tuple[int, list[Metric]]] = [(0, list(self.own.collect())), *self._others.items()]
        for index, families in sources:
            label = str(index)
            for family in families:
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation, family.type,
                                                        family.unit)  # fmt: skip
                for s in family.samples:
                    into.samples.append(Sample(s.name, {**s.labels, "worker": label}, s.value, s.timestamp,
                                               s.exemplar))  # fmt: skip
        yield from merged.values()
        workers = GaugeMetricFamily("sipfilter_workers", "Worker processes configured (sip.workers)")
        workers.add_metric([], self.context.count)
        yield workers
        restarts = CounterMetricFamily("sipfilter_worker_restarts", "Times the supervisor restarted a worker "
                                       "that died", labels=["worker"])  # fmt: skip
        failures = CounterMetricFamily("sipfilter_worker_scrape_failures", "Scrapes that could not include "
                                       "this worker's metrics", labels=["worker"])  # fmt: skip
        for index in range(self.context.count):
            restarts.add_metric([str(index)], self.context.restart_count(index))
            failures.add_metric([str(index)], self.scrape_failures[index])
        yield restarts
        yield failures
