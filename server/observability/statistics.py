"""Per model-version counters in the shape of Triton's ModelStatistics message.

Only the event loop thread writes them (the scheduler and the core run there), so no locks.
"""

from __future__ import annotations

import bisect
import collections
import time
from dataclasses import dataclass, field

# Histogram bucket upper bounds: seconds for durations, rows for batch sizes (Prometheus style).
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (not cumulative) plus a +Inf slot, and the sum, for a scrape to render."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


def _durations() -> Histogram:
    return Histogram(DURATION_BUCKETS)


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStatistics:
    success: Duration = field(default_factory=Duration)  # request duration, arrival to response
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows inferred (a request of n rows counts n)
    execution_count: int = 0  # forward passes (batches)
    last_inference_ms: int = 0  # wall clock, milliseconds since the epoch
    batches: dict[int, BatchStats] = field(default_factory=dict)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)  # by reason
    request_seconds: Histogram = field(default_factory=_durations)
    queue_seconds: Histogram = field(default_factory=_durations)
    compute_seconds: Histogram = field(default_factory=_durations)
    batch_rows: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))

    def record_batch(self, rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self.inference_count += rows
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        # Triton counts compute durations per request, each request charged the whole batch's time.
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        self.compute_seconds.observe(infer_ns / 1e9)
        self.batch_rows.observe(rows)
        stats = self.batches.get(rows)
        if stats is None:
            stats = self.batches[rows] = BatchStats()
        stats.compute_input.add(input_ns)
        stats.compute_infer.add(infer_ns)
        stats.compute_output.add(output_ns)

    def record_queue(self, ns: int) -> None:
        self.queue.add(ns)
        self.queue_seconds.observe(ns / 1e9)

    def record_request(self, total_ns: int, failure: str | None = None) -> None:
        """One answered request; `failure` names why it failed (None: it succeeded)."""
        if failure is None:
            self.success.add(total_ns)
        else:
            self.fail.add(total_ns)
            self.failures[failure] += 1
        self.request_seconds.observe(total_ns / 1e9)
