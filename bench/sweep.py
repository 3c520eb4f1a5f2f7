"""The concurrency sweep: each level against torchwire, then at once against each bare server,
with the server's own counters read at the window's edges.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from rich.progress import Progress, TaskID

from torchwire.client import Client

from . import perfanalyzer, processes, report
from .batchstats import Counts, StatisticsProbe, mean_batch_size
from .loadgen import WorkerPool
from .options import BenchOptions as Options
from .results import Measured, rounded_batch, summarize
from .runner import BenchError

START_MARGIN_S = 0.1  # from sending a level's command to its workers to its first request
TORCHWIRE = "torchwire"  # the targets' names, in the load generator and in the output


def sweep(
    pool: WorkerPool,
    options: Options,
    progress: Progress,
    probe: StatisticsProbe,
    targets: dict[str, str],
    pid: int | None = None,
) -> tuple[list[Measured], dict[str, list[Measured]]]:
    """Each concurrency level against torchwire, then at once against each bare server.

    Alternating level by level, rather than sweeping one server and then the other, keeps each
    ratio's two halves seconds apart: a shared machine drifts by tens of percent over minutes.
    The idle server meanwhile costs nothing measurable.
    """
    measured: list[Measured] = []
    bare: dict[str, list[Measured]] = {name: [] for name in targets if name != TORCHWIRE}
    version = None
    if options.perf_analyzer is not None:
        version = _served_version(targets[TORCHWIRE], options.model)
    for concurrency in options.concurrency:
        for name in targets:
            own = (probe, pid) if name == TORCHWIRE else (None, None)
            if version is None:
                result = _level(pool, name, concurrency, options, progress, *own)
            else:
                address = targets[name]
                result = _perf_analyzer_level(address, name, version, concurrency, options, progress, *own)
            (measured if name == TORCHWIRE else bare[name]).append(result)
    return measured, bare


def _level(
    pool: WorkerPool,
    name: str,
    concurrency: int,
    options: Options,
    progress: Progress,
    probe: StatisticsProbe | None,
    pid: int | None = None,
) -> Measured:
    task = progress.add_task(f"{name} c={concurrency}", total=options.warmup + options.duration)
    start_at = time.monotonic() + START_MARGIN_S
    pool.start(name, concurrency, start_at, options.warmup, options.duration)
    measure_from = start_at + options.warmup
    measure_to = measure_from + options.duration
    # Statistics are read at the window's edges, so warmup batches do not count.
    window = _ServerWindow(probe, pid)
    _wait_until(measure_from, start_at, progress, task)
    window.open()
    _wait_until(measure_to, start_at, progress, task)
    window.close()
    measured = summarize(pool.collect(), window.mean_batch_size())
    measured = window.with_cpu(measured, measured.throughput * options.duration)
    progress.remove_task(task)
    progress.console.print(report.level_line(name, measured), soft_wrap=True)
    if measured.problem:
        progress.console.print(f"  invalid response: {measured.problem}", style="red")
    return measured


def _perf_analyzer_level(
    target: str,
    name: str,
    version: str,
    concurrency: int,
    options: Options,
    progress: Progress,
    probe: StatisticsProbe | None,
    pid: int | None,
) -> Measured:
    assert options.perf_analyzer is not None
    load = perfanalyzer.Load(concurrency, options.batch, options.duration, options.streaming, options.shapes)
    task = progress.add_task(f"{name} c={concurrency} (perf_analyzer)", total=None)
    # Counters span the whole run (its stabilizing windows too): the same load throughout.
    window = _ServerWindow(probe, pid)
    window.open()
    started = time.monotonic()
    try:
        measured = perfanalyzer.run_level(options.perf_analyzer, target, options.model, version, load)
    except perfanalyzer.PerfAnalyzerError as exc:
        raise BenchError(f"{name} c={concurrency}: {exc}") from exc
    finally:
        progress.remove_task(task)
    elapsed = time.monotonic() - started
    window.close()
    measured = dataclasses.replace(measured, mean_batch_size=rounded_batch(window.mean_batch_size()))
    # perf_analyzer's own count covers only its last windows: the server's counters span the run.
    measured = window.with_cpu(measured, window.rows() / options.batch)
    progress.console.print(report.level_line(name, measured) + f" ({elapsed:.0f} s)", soft_wrap=True)
    return measured


@dataclass
class _ServerWindow:
    """The server's counters across one measuring window: ModelStatistics through `probe`, and its
    CPU from /proc when this run started it (`pid`)."""

    probe: StatisticsProbe | None
    pid: int | None
    before: Counts | None = None
    after: Counts | None = None
    cpu_before: float | None = None
    cpu_after: float | None = None

    def open(self) -> None:
        self.before = self.probe.snapshot() if self.probe else None
        self.cpu_before = processes.cpu_seconds(self.pid) if self.pid else None

    def close(self) -> None:
        self.cpu_after = processes.cpu_seconds(self.pid) if self.pid else None
        self.after = self.probe.snapshot() if self.probe else None

    def mean_batch_size(self) -> float | None:
        return mean_batch_size(self.before, self.after)

    def rows(self) -> int:
        """Rows the server computed in the window (0 where statistics are n/a)."""
        return self.after.inferences - self.before.inferences if self.after and self.before else 0

    def with_cpu(self, measured: Measured, requests: float) -> Measured:
        """`measured` with the server's CPU per request, when it was read. Flat or falling as
        concurrency rises means no thread oversubscription."""
        if self.cpu_before is None or self.cpu_after is None or requests <= 0:
            return measured
        cpu_us = round((self.cpu_after - self.cpu_before) * 1e6 / requests, 1)
        return dataclasses.replace(measured, server_cpu_us=cpu_us)


def _served_version(target: str, model: str) -> str:
    with Client(target, timeout=10.0) as client:
        return perfanalyzer.latest_version(client.metadata(model).versions)


def _wait_until(when: float, start_at: float, progress: Progress, task: TaskID) -> None:
    while (now := time.monotonic()) < when:
        progress.update(task, completed=max(0.0, now - start_at))
        time.sleep(min(0.25, when - now))
