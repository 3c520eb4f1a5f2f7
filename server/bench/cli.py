"""`torchwire bench`: a closed-loop concurrency sweep against torchwire and its two ceilings.

One run measures, one thing at a time so that each has the cores to itself:
1. each concurrency level against torchwire (`torchwire serve` started as a subprocess, or
   --target), then at once against the bare grpc server (benchmarks/bare_server.py) with the same
   load generator;
2. with both servers stopped, the model in-process at the batch size torchwire formed per level.
It prints torchwire's figures as ratios to both, and writes JSON, CSV and a PNG plot.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from torchwire.client import Client, InferenceError

from . import ceilings, perfanalyzer, processes, report, workload
from .batchstats import Counts, StatisticsProbe, mean_batch_size
from .loadgen import LoadError, WorkerPool
from .output import stamped
from .plot import write_png
from .results import Level, Measured, Run, flag_impossible, rounded_batch, summarize

START_MARGIN_S = 0.1  # from sending a level's command to its workers to its first request
INPROCESS_MAX_S = 2.0  # the model alone is steady: this long per batch size is plenty
TORCHWIRE = "torchwire"  # the targets' names, in the load generator and in the output
BARE = "bare"  # sync grpc; with BARE_AIO the two flavors of the bare ceiling (the faster counts)
BARE_AIO = "bare-aio"
BARE_FLAVORS = {BARE: "sync", BARE_AIO: "aio"}
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNIMPLEMENTED = 3
EXIT_INTERRUPTED = 130


class BenchError(RuntimeError):
    """A problem with the model or target the user can act on; printed without a traceback."""


@dataclass(frozen=True, slots=True)
class Options:
    model: str
    target: str | None
    concurrency: tuple[int, ...]
    duration: float
    warmup: float
    batch: int
    shapes: workload.Shapes
    streaming: bool
    out: Path
    repository: Path | None
    workers: int
    torch_threads: int | None
    start_timeout: float
    perf_analyzer: str | None = None  # its binary: the load generator instead of ours

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        try:
            levels = tuple(int(part) for part in str(args.concurrency).split(",") if part.strip())
        except ValueError as exc:
            raise ValueError(f"--concurrency {args.concurrency!r}: expected numbers like 1,4,16,64") from exc
        checks = [
            (bool(levels) and min(levels) >= 1, "--concurrency levels must be >= 1"),
            (args.duration > 0, "--duration must be > 0"),
            (args.warmup >= 0, "--warmup must be >= 0"),
            *shared_checks(args),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return cls(
            model=args.model,
            target=args.target,
            concurrency=levels,
            duration=args.duration,
            warmup=args.warmup,
            batch=args.batch,
            shapes=shapes_of(args),
            streaming=args.streaming,
            out=args.out,
            repository=args.repository,
            workers=args.workers,
            torch_threads=args.torch_threads,
            start_timeout=args.start_timeout,
            perf_analyzer=_binary(args.perf_analyzer) if args.perf_analyzer else None,
        )


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ValueError(f"--perf-analyzer {name}: not an executable (README Performance: how to get one)")
    return found


def shapes_of(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    """The --shape options by input name (ValueError naming a malformed one)."""
    return dict(workload.parse_shape(text) for text in args.shape)


def shared_checks(args: argparse.Namespace) -> list[tuple[bool, str]]:
    """The option checks bench and soak share: (condition that must hold, message if it does not)."""
    return [
        (args.batch >= 1, "--batch must be >= 1"),
        (args.workers >= 1, "--workers must be >= 1"),
        (args.torch_threads is None or args.torch_threads >= 1, "--torch-threads must be >= 1"),
        (
            args.repository is None or args.repository.is_dir(),
            f"--model-repository {args.repository} is not a folder",
        ),
    ]


Opts = TypeVar("Opts")
# What a run can fail with that is the load's or the server's fault, not a bug: printed, exit 1.
EXPECTED_FAILURES = (LoadError, BenchError, processes.StartError, InferenceError)


def run_command(
    command: str,
    options: Callable[[], Opts],
    execute: Callable[[Opts, Console], int],
    explain: Callable[[Exception, Opts], tuple[str, int]] | None = None,
) -> int:
    """Run `torchwire <command>`: bad options exit 2; Ctrl-C and SIGTERM stop every server and
    worker the run started and exit 130; an expected failure prints `explain`'s message (by default
    the exception's) and exits with its code (by default 1)."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file or pipe: keep the table's rows whole
    try:
        parsed = options()
    except ValueError as exc:
        console.print(f"torchwire {command}: {exc}", style="red")
        return EXIT_USAGE
    # SIGTERM unwinds like Ctrl-C, so the servers and workers this run started are always stopped.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return execute(parsed, console)
    except KeyboardInterrupt:
        console.print(f"torchwire {command}: interrupted (servers and workers stopped)", style="yellow")
        return EXIT_INTERRUPTED
    except EXPECTED_FAILURES as exc:
        message, code = explain(exc, parsed) if explain is not None else (str(exc), EXIT_FAILED)
        console.print(f"torchwire {command}: {message}", style="red")
        return code
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    return run_command("bench", lambda: Options.from_args(args), execute, _explain)


def _explain(exc: Exception, options: Options) -> tuple[str, int]:
    if isinstance(exc, LoadError):
        if exc.code == "UNIMPLEMENTED" and options.streaming:
            return (
                f"the server does not implement ModelStreamInfer ({exc.message}); run without --streaming",
                EXIT_UNIMPLEMENTED,
            )
        return f"the load generator failed: {exc}", EXIT_FAILED
    return str(exc), EXIT_FAILED


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def execute(options: Options, console: Console) -> int:
    notes: list[str] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # Exit order: servers first (SIGTERM, then kill), then the progress bar and the workers.
    with (
        WorkerPool(options.workers) as pool,
        _progress(console) as progress,
        contextlib.ExitStack() as servers,
    ):
        target, pid = servers.enter_context(processes.serving(options, console.print))
        load = load_workload(target, options.model, options.batch, options.shapes)
        targets = {TORCHWIRE: target}
        if options.perf_analyzer is None:
            pool.connect(TORCHWIRE, target, load.request, load.expected_outputs(), options.streaming)
        else:
            notes.append(f"load generator: {options.perf_analyzer}")
        targets |= _start_bare(servers, pool, load, options, notes, target)
        with StatisticsProbe(target, options.model) as probe:
            measured, bare = sweep(pool, options, progress, probe, targets, pid)
            if probe.unavailable:
                notes.append(f"mean batch size n/a: {probe.unavailable}")
    # Both servers are stopped here: the model gets the machine to itself.
    inprocess, batch_from = _inprocess(load, measured, options, notes, console)
    rows = load.batch or 1
    run = Run(
        model=options.model,
        target=options.target or "spawned",
        started=started,
        settings=_settings(options),
        machine=machine_info(),
        notes=notes,
    )
    for index, tw in enumerate(measured):
        run.levels.append(
            Level(
                concurrency=tw.concurrency,
                torchwire=tw,
                bare_flavors={BARE_FLAVORS[name]: results[index] for name, results in bare.items()},
                inprocess=inprocess[index] if inprocess else None,
                inprocess_batch_from=batch_from[index] if batch_from else None,
                rows_per_request=rows,
            )
        )
    run.levels = flag_impossible(run.levels, notes)
    report.show(run, console)
    paths = _write(run, options.out)
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if all(m.completed > 0 for m in measured) else EXIT_FAILED


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        refresh_per_second=4,  # the parent shares the cores with what it measures: keep it idle
    )


def load_workload(target: str, model: str, batch: int, shapes: workload.Shapes) -> workload.Workload:
    """The request to send `model` (`batch` rows, `shapes`), built from what `target` reports about it."""
    with Client(target, timeout=10.0) as client:
        if not client.ready(model):
            reasons = [m.reason for m in client.repository_index() if m.name == model and m.reason]
            why = f": {reasons[0]}" if reasons else " (is it in the repository?)"
            raise BenchError(f"model '{model}' is not ready on {target}{why}")
        metadata = client.metadata(model)
        max_batch_size = client.config(model).max_batch_size
    try:
        return workload.build(metadata, max_batch_size, batch, shapes)
    except ValueError as exc:
        raise BenchError(str(exc)) from exc


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


def _start_bare(
    servers: contextlib.ExitStack,
    pool: WorkerPool,
    load: workload.Workload,
    options: Options,
    notes: list[str],
    torchwire_target: str,
) -> dict[str, str]:
    """The bare servers (both flavors), started for the whole sweep: their targets by name; none
    when this is not a checkout."""
    script = processes.bare_server_script()
    if script is None:
        notes.append("bare server ceiling skipped: benchmarks/bare_server.py is not here (installed wheel)")
        return {}
    if options.target is not None and not options.target.startswith(("127.", "localhost", "[::1]")):
        notes.append(f"the bare server runs on this machine; {options.target} may not: compare with care")
    description = None
    if options.perf_analyzer is None:
        streams = options.workers if options.streaming else 0
    else:
        # perf_analyzer asks the bare server about the model first: it answers as torchwire described it.
        folder = Path(servers.enter_context(tempfile.TemporaryDirectory(prefix="torchwire-bench-")))
        description = folder / "describe.json"
        perfanalyzer.describe(torchwire_target, options.model, description)
        streams = max(options.concurrency) if options.streaming else 0  # at most a stream per request
    targets = {}
    for name, flavor in BARE_FLAVORS.items():
        targets[name] = servers.enter_context(
            processes.bare_server(
                script, load.output_specs(), streams=streams, describe=description, aio=flavor == "aio"
            )
        )
        if options.perf_analyzer is None:
            pool.connect(name, targets[name], load.request, load.expected_outputs(), options.streaming)
    return targets


def _inprocess(
    load: workload.Workload,
    measured: Sequence[Measured],
    options: Options,
    notes: list[str],
    console: Console,
) -> tuple[list[ceilings.InProcess] | None, list[str] | None]:
    repository = options.repository
    if repository is None and options.target is None:
        from torchwire.server.app import bundled_repository

        repository = bundled_repository()
    if repository is None:
        notes.append("in-process ceiling skipped: pass --model-repository to locate the model file")
        return None, None
    local = ceilings.find_model(repository, options.model)
    if local is None:
        notes.append(f"in-process ceiling skipped: no model file for '{options.model}' under {repository}")
        return None, None
    sources = ["server" if m.mean_batch_size is not None else "request" for m in measured]
    if "request" in sources:
        notes.append("in-process ceiling measured at the request's batch size where the formed one is n/a")
    batches = [
        max(1, round(m.mean_batch_size)) if m.mean_batch_size is not None else max(1, load.batch)
        for m in measured
    ]
    threads = ceilings.server_threads(local.spec, options.torch_threads)
    if options.target is not None and options.torch_threads is None:
        notes.append(
            f"in-process ceiling uses {threads} torch threads, torchwire's default rule on this machine"
        )
    console.print(
        f"measuring {options.model} in-process at batch {sorted(set(batches))}, {threads} threads ..."
    )
    seconds = min(options.duration, INPROCESS_MAX_S)
    by_batch = ceilings.measure(local, load.inputs, batches, threads=threads, seconds=seconds)
    return [by_batch[b] for b in batches], sources


def _settings(options: Options) -> dict[str, Any]:
    return {
        "concurrency": list(options.concurrency),
        "duration_s": options.duration,
        "warmup_s": options.warmup,
        "batch": options.batch,
        "shapes": dict(options.shapes),  # json writes the dims tuples as lists
        "streaming": options.streaming,
        "workers": options.workers,
        "torch_threads": options.torch_threads,
        "repository": str(options.repository) if options.repository else None,
        "load_generator": options.perf_analyzer or "torchwire",
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    from torchwire.server.settings import default_threads

    return {
        "cores_usable": default_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "torch": _version("torch"),
        "torchwire": _version("torchwire"),
    }


def _write(run: Run, out: Path) -> list[Path]:
    stem = stamped(out, run.model)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".csv"), stem.with_suffix(".png")]
    report.write(run, paths[0], paths[1])
    write_png(run, paths[2])
    return paths
