"""`torchwire soak`: bounded mixed unary + streaming load for a while, watching errors and memory.

Closed loop, like `torchwire bench` and with its pieces: the same server process (`torchwire serve`
started on a free loopback port, or --target), the same request built from the model's metadata,
and the same load generator processes, which here run unary calls and ModelStreamInfer streams at
once for warmup + duration seconds. Every --interval seconds it prints throughput, errors by status
code and the server's resident memory (VmRSS; n/a for --target, which is not our process). At the
end: totals, throughput over time, RSS growth from the end of warmup to the end, JSON and CSV.
Any failed request fails the run (exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from . import processes, runner, soakreport
from .loadgen import LoadError, WorkerPool
from .options import SoakOptions as Options
from .options import from_args
from .output import stamped
from .soakresults import Interval, SoakRun

START_MARGIN_S = 0.2  # from sending the soak to the workers to its first request
UNARY = "soak-unary"  # the load generator's connections, one per kind of call
STREAM = "soak-stream"


def boundaries(warmup: float, duration: float, interval: float) -> list[float]:
    """Seconds from the first request at which an interval ends: every `interval`, and at warmup's end."""
    total = warmup + duration
    cuts = {round(k * interval, 6) for k in range(1, int(total / interval) + 1)}
    cuts.update({round(warmup, 6), round(total, 6)})
    return sorted(c for c in cuts if 0 < c <= total)


def run(args: argparse.Namespace) -> int:
    return runner.run_command("soak", lambda: from_args(Options, args), execute)


def execute(options: Options, console: Console) -> int:
    soak = SoakRun(
        model=options.model,
        target=options.target or "spawned",
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        settings=_settings(options),
        machine=runner.machine_info(),
    )
    # Exit order: the workers first (they stop loading), then the server (SIGTERM, then kill).
    with contextlib.ExitStack() as servers, WorkerPool(options.workers) as pool:
        target, pid = servers.enter_context(processes.serving(options, console.print))
        if pid is None:
            soak.notes.append("server RSS n/a: --target is not a process this run started")
        load = runner.load_workload(target, options.model, options.batch, options.shapes)
        if options.unary_slots:
            pool.connect(UNARY, target, load.request, load.expected_outputs(), False)
        if options.stream_slots:
            pool.connect(STREAM, target, load.request, load.expected_outputs(), True)
        console.print(_plan(options, target), highlight=False)
        _drive(pool, options, pid, soak, console)
    soakreport.show(soak, console)
    paths = _write(soak, options.out)
    console.print("wrote " + ", ".join(str(p) for p in paths))
    if soak.interrupted:
        return runner.EXIT_INTERRUPTED
    return 0 if soak.summary().passed else runner.EXIT_FAILED


def _drive(pool: WorkerPool, options: Options, pid: int | None, soak: SoakRun, console: Console) -> None:
    """Runs the soak, recording each interval as it ends; Ctrl-C stops it with what it has so far."""
    offsets = boundaries(options.warmup, options.duration, options.interval)
    start_at = time.monotonic() + START_MARGIN_S
    soak.rss_start_bytes = _rss(pid)
    pool.start_soak(
        (UNARY, options.unary_slots),
        (STREAM, options.stream_slots),
        start_at,
        [start_at + o for o in offsets],
    )
    begun = 0.0
    try:
        for index, offset in enumerate(offsets):
            time.sleep(max(0.0, start_at + offset - time.monotonic()))
            rss = _rss(pid)  # sampled at the boundary, not when the workers' slices arrive
            piece = pool.soak_slice()
            interval = Interval.of(index, begun, offset, offset <= options.warmup, piece, rss)
            soak.intervals.append(interval)
            soak.problem = soak.problem or piece.problem
            console.print(soakreport.interval_line(interval), highlight=False, soft_wrap=True)
            begun = offset
    except KeyboardInterrupt:
        soak.interrupted = True
        console.print("torchwire soak: interrupted; stopping the workers and the server", style="yellow")
    except LoadError as exc:  # a worker died: keep what was measured, and fail
        soak.problem = f"the load generator failed: {exc}"
        console.print(f"torchwire soak: {soak.problem}", style="red")


def _rss(pid: int | None) -> int | None:
    return None if pid is None else processes.resident_bytes(pid)


def _plan(options: Options, target: str) -> str:
    streams = options.stream_slots
    return (
        f"soaking {options.model} on {target}: {options.warmup:g} s warmup + {options.duration:g} s, "
        f"concurrency {options.concurrency} ({options.unary_slots} unary, {sum(streams)} on "
        f"{len(streams)} stream{'' if len(streams) == 1 else 's'}), a line every {options.interval:g} s"
    )


def _settings(options: Options) -> dict[str, Any]:
    return {
        "duration_s": options.duration,
        "warmup_s": options.warmup,
        "interval_s": options.interval,
        "concurrency": options.concurrency,
        "unary": options.unary_slots,
        "stream_slots": options.stream_slots,
        "stream_share": options.stream_share,
        "batch": options.batch,
        "shapes": dict(options.shapes),  # json writes the dims tuples as lists
        "workers": options.workers,
        "torch_threads": options.torch_threads,
        "repository": str(options.repository) if options.repository else None,
    }


def _write(soak: SoakRun, out: Path) -> list[Path]:
    stem = stamped(out, f"soak-{soak.model}")
    paths = [stem.with_suffix(".json"), stem.with_suffix(".csv")]
    soakreport.write(soak, paths[0], paths[1])
    return paths
