"""Prometheus metrics (`torchwire_*`, and Triton's `nv_inference_*` by --metrics-names), rendered at
scrape time from the same statistics that answer ModelStatistics, so /metrics and the RPC always
agree and requests pay nothing extra for metrics.

The scrape arrives on the metrics server's HTTP thread; the snapshot is taken on the event loop,
the only thread that writes the statistics, so no counter is read half-updated. One snapshot feeds
both name sets, so they agree within a scrape too.

/metrics is served in the Prometheus text format 0.0.4 only, as Triton serves it: in OpenMetrics,
which prometheus_client would otherwise offer, a counter must end in `_total`, and Triton's do not.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..settings import MetricsNames
from .snapshot import Snapshot
from .statistics import Histogram, ModelStatistics
from .triton_metrics import render_triton

log = logging.getLogger("torchwire.metrics")
SNAPSHOT_TIMEOUT_S = 10.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

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


class TorchwireFamilies:
    """torchwire's own metric families from one snapshot (a collector for generate_latest)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot
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
        for model, failed in sorted(snapshot.load_failures.items()):
            loads.add_metric([model], failed)
        yield loads
        unknown = CounterMetricFamily(
            "torchwire_unknown_model_requests", "Requests naming a model or version not served."
        )
        unknown.add_metric([], snapshot.unknown_model_requests)
        yield unknown


class MetricsServer:
    """/metrics over HTTP on its own port, with process CPU and memory beside the model metrics."""

    def __init__(
        self, snapshot: Callable[[], Snapshot], host: str, port: int, names: MetricsNames = "both"
    ) -> None:
        """`snapshot` copies what a scrape needs; it is called on the event loop given to start()."""
        self._take = snapshot
        self._host = host
        self._port = port
        self.names = names
        self.process = CollectorRegistry(auto_describe=False)
        ProcessCollector(namespace="torchwire", registry=self.process)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    def _snapshot(self) -> Snapshot:
        async def snap() -> Snapshot:
            return self._take()

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(snap(), self._loop).result(SNAPSHOT_TIMEOUT_S)

    def render(self) -> bytes:
        """One scrape: both name sets (as --metrics-names asks) from one snapshot, then the process."""
        snapshot = self._snapshot()
        parts: list[bytes] = []
        if self.names in ("torchwire", "both"):
            parts.append(generate_latest(TorchwireFamilies(snapshot)))
        if self.names in ("triton", "both"):
            parts.append(render_triton(snapshot).encode())
        parts.append(generate_latest(self.process))
        return b"".join(parts)

    def start(self, loop: asyncio.AbstractEventLoop) -> int:
        self._loop = loop
        # The address family of --host (IPv6 too, as the gRPC listener takes it).
        family = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("MetricsHTTPServer", (ThreadingHTTPServer,), {"address_family": family})
        self._server = server_class((self._host, self._port), _handler(self.render))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="torchwire-metrics", daemon=True).start()
        self.port = int(self._server.server_port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _handler(render: Callable[[], bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._reply(404, b"only /metrics is served here\n", "text/plain; charset=utf-8")
                return
            try:
                body = render()
            except Exception:  # the loop did not answer in time, or is stopping
                log.exception("metrics scrape failed")
                self._reply(503, b"metrics are not available right now\n", "text/plain; charset=utf-8")
                return
            gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
            self._reply(200, gzip.compress(body) if gzipped else body, CONTENT_TYPE, gzipped=gzipped)

        def _reply(self, status: int, body: bytes, kind: str, *, gzipped: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes are not worth a log line each

    return Handler
