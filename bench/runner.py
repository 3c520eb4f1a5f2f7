"""What `torchwire bench` and `torchwire soak` share to run: exit codes, the expected failures,
signals, the progress bar, the request built from the server's metadata, the machine's description.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import signal
from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from torchwire.client import Client, InferenceError

from . import processes, workload
from .loadgen import LoadError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNIMPLEMENTED = 3
EXIT_INTERRUPTED = 130


class BenchError(RuntimeError):
    """A problem with the model or target the user can act on; printed without a traceback."""


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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def progress_bar(console: Console) -> Progress:
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
