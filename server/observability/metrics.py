"""Prometheus metrics (`torchwire_*`), rendered at scrape time from the same statistics that answer
ModelStatistics, so /metrics and the RPC always agree and requests pay nothing extra for metrics.

The scrape arrives on prometheus_client's HTTP thread; the snapshot is taken on the event loop,
the only thread that writes the statistics, so no counter is read half-updated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .snapshot import Snapshot
from .statistics import Histogram, ModelStatistics

SNAPSHOT_TIMEOUT_S = 10.0

# Per model version: (name, help, what it reads from the version's statistics).
COUNTERS: tuple[tuple[str, str, Callable[[ModelStatistics], int]], ...] = (
    ("torchwire_request_success", "Requests answered successfully.", lambda s: s.success.count),
    (
        "torchwire_inference_count",
        "Rows inferred (a request of n rows counts n).",
        lambda s: s.inference_count,
    ),
    ("torchwire_execution_count", "Forward passes (batches) run.", lambda s: s.execution_count),
)
HISTOGRAMS: tuple[tuple[str, str, Callable[[ModelStatistics], Histogram]], ...] = (
    (
        "torchwire_request_duration_seconds",
        "Request time from arrival to response.",
        lambda s: s.request_seconds,
    ),
    ("torchwire_queue_duration_seconds", "Time requests waited for a batch.", lambda s: s.queue_seconds),
    ("torchwire_compute_duration_seconds", "Forward pass time per batch.", lambda s: s.compute_seconds),
    ("torchwire_batch_size", "Rows per forward pass.", lambda s: s.batch_rows),
)


def _histogram(name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], Histogram]]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, histogram in rows:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip([*map(str, histogram.bounds), "+Inf"], histogram.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric(values, buckets, histogram.total)
    return family


class TorchwireCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot], loop: asyncio.AbstractEventLoop) -> None:
        self._take = snapshot
        self._loop = loop

    def _snapshot(self) -> Snapshot:
        async def snap() -> Snapshot:
            return self._take()

        return asyncio.run_coroutine_threadsafe(snap(), self._loop).result(SNAPSHOT_TIMEOUT_S)

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        labels = ["model", "version"]
        rows = [([v.model, v.version], v) for v in snapshot.versions]

        for name, doc, read in COUNTERS:
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, v in rows:
                family.add_metric(key, read(v.stats))
            yield family
        failure = CounterMetricFamily(
            "torchwire_request_failure", "Requests that failed, by reason.", labels=[*labels, "reason"]
        )
        for key, v in rows:
            for reason in snapshot.failure_reasons:
                failure.add_metric([*key, reason], v.stats.failures.get(reason, 0))
        yield failure
        for name, doc, histogram in HISTOGRAMS:
            yield _histogram(name, doc, labels, ((k, histogram(v.stats)) for k, v in rows))
        queue = GaugeMetricFamily("torchwire_queue_depth", "Requests waiting for a batch.", labels=labels)
        running = GaugeMetricFamily("torchwire_batches_in_flight", "Batches computing now.", labels=labels)
        for key, v in rows:
            queue.add_metric(key, v.queued)
            running.add_metric(key, v.in_flight)
        yield queue
        yield running
        state = GaugeMetricFamily(
            "torchwire_model_state", "1 for each model version's current state.", labels=[*labels, "state"]
        )
        for model, version, current in snapshot.states:
            for name in snapshot.state_names:
                state.add_metric([model, version, name], 1.0 if name == current else 0.0)
        yield state
        loads = CounterMetricFamily("torchwire_model_load_failures", "Failed model loads.", labels=["model"])
        for model, count in sorted(snapshot.load_failures.items()):
            loads.add_metric([model], count)
        yield loads
        unknown = CounterMetricFamily(
            "torchwire_unknown_model_requests", "Requests naming a model or version not served."
        )
        unknown.add_metric([], snapshot.unknown_model_requests)
        yield unknown


class MetricsServer:
    """/metrics over HTTP on its own port, with process CPU and memory beside torchwire's metrics."""

    def __init__(self, snapshot: Callable[[], Snapshot], host: str, port: int) -> None:
        """`snapshot` copies what a scrape needs; it is called on the event loop given to start()."""
        self._snapshot = snapshot
        self._host = host
        self._port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self._server: Any = None
        self.port = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> int:
        self.registry.register(TorchwireCollector(self._snapshot, loop))
        ProcessCollector(namespace="torchwire", registry=self.registry)
        self._server, _thread = start_http_server(self._port, addr=self._host, registry=self.registry)
        self.port = int(self._server.server_port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
