"""The in-process ceiling for a sweep: the model alone, at the batch size torchwire formed per level."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console

from . import ceilings, workload
from .options import BenchOptions as Options
from .results import Measured

INPROCESS_MAX_S = 2.0  # the model alone is steady: this long per batch size is plenty


def measure(
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
