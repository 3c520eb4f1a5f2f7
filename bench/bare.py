"""The bare ceiling's servers for a sweep: both flavors started beside torchwire, and known to the
load generator (or described for perf_analyzer).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from . import perfanalyzer, processes, workload
from .loadgen import WorkerPool
from .options import BenchOptions as Options

BARE = "bare"  # sync grpc; with BARE_AIO the two flavors of the bare ceiling (the faster counts)
BARE_AIO = "bare-aio"
BARE_FLAVORS = {BARE: "sync", BARE_AIO: "aio"}


def start(
    servers: contextlib.ExitStack,
    pool: WorkerPool,
    load: workload.Workload,
    options: Options,
    notes: list[str],
    torchwire_target: str,
) -> dict[str, str]:
    """The bare servers (both flavors), started for the whole sweep: their targets by name."""
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
                load.output_specs(), streams=streams, describe=description, aio=flavor == "aio"
            )
        )
        if options.perf_analyzer is None:
            pool.connect(name, targets[name], load.request, load.expected_outputs(), options.streaming)
    return targets
