"""`torchwire bench`: a closed-loop concurrency sweep against torchwire and its two ceilings.

One run measures, one thing at a time so that each has the cores to itself:
1. each concurrency level against torchwire (`torchwire serve` started as a subprocess, or
   --target), then at once against the bare grpc server (bare_server.py) with the same
   load generator;
2. with both servers stopped, the model in-process at the batch size torchwire formed per level.
It prints torchwire's figures as ratios to both, and writes JSON, CSV and a PNG plot.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

from rich.console import Console

from . import processes, report
from .bare import BARE_FLAVORS
from .bare import start as start_bare
from .batchstats import StatisticsProbe
from .inprocess import measure as measure_inprocess
from .loadgen import LoadError, WorkerPool
from .options import BenchOptions as Options
from .options import from_args
from .results import Level, Run, flag_impossible
from .runner import EXIT_FAILED, EXIT_UNIMPLEMENTED, load_workload, machine_info, progress_bar, run_command
from .sweep import TORCHWIRE, sweep


def run(args: argparse.Namespace) -> int:
    return run_command("bench", lambda: from_args(Options, args), execute, _explain)


def _explain(exc: Exception, options: Options) -> tuple[str, int]:
    if isinstance(exc, LoadError):
        if exc.code == "UNIMPLEMENTED" and options.streaming:
            return (
                f"the server does not implement ModelStreamInfer ({exc.message}); run without --streaming",
                EXIT_UNIMPLEMENTED,
            )
        return f"the load generator failed: {exc}", EXIT_FAILED
    return str(exc), EXIT_FAILED


def execute(options: Options, console: Console) -> int:
    notes: list[str] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # Exit order: servers first (SIGTERM, then kill), then the progress bar and the workers.
    with (
        WorkerPool(options.workers) as pool,
        progress_bar(console) as progress,
        contextlib.ExitStack() as servers,
    ):
        target, pid = servers.enter_context(processes.serving(options, console.print))
        load = load_workload(target, options.model, options.batch, options.shapes)
        targets = {TORCHWIRE: target}
        if options.perf_analyzer is None:
            pool.connect(TORCHWIRE, target, load.request, load.expected_outputs(), options.streaming)
        else:
            notes.append(f"load generator: {options.perf_analyzer}")
        targets |= start_bare(servers, pool, load, options, notes, target)
        with StatisticsProbe(target, options.model) as probe:
            measured, bare = sweep(pool, options, progress, probe, targets, pid)
            if probe.unavailable:
                notes.append(f"mean batch size n/a: {probe.unavailable}")
    # Both servers are stopped here: the model gets the machine to itself.
    inprocess, batch_from = measure_inprocess(load, measured, options, notes, console)
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
    paths = report.write_files(run, options.out)
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if all(m.completed > 0 for m in measured) else EXIT_FAILED


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
