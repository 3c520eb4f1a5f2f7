"""The `bench` and `soak` command lines, and nothing they run.

`torchwire serve` builds its parser from here, so it must import nothing the server extra lacks:
rich and matplotlib come with the bench extra. Each command imports its module only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

from . import options

# What the bench extra adds over the server extra (pyproject.toml).
BENCH_EXTRA = ("rich", "matplotlib")


def register(commands: Any) -> None:
    """Add `bench` and `soak` to the `torchwire` subcommands."""
    for name, help, description, declared, module in COMMANDS:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help, description=description)
        options.add_arguments(parser, declared)
        parser.set_defaults(run=_runs(module))


def _runs(module: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            command = importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").partition(".")[0]
            if missing not in BENCH_EXTRA:
                raise
            raise SystemExit(
                f"torchwire {args.command}: needs the bench extra ({missing} is missing): "
                f"pip install 'torchwire[bench]'"
            ) from exc
        result: int = command.run(args)
        return result

    return run


# Each command: its help, its description, its options, and the module that runs it.
COMMANDS: tuple[tuple[str, str, str, type[options.RunOptions], str], ...] = (
    (
        "bench",
        "benchmark a model (closed loop) against a bare grpc server and the model in-process",
        "Closed-loop benchmark: keeps CONCURRENCY requests in flight for DURATION seconds per "
        "level, then measures the same levels against a bare grpc server and the model in-process, and "
        "prints torchwire's throughput as ratios to both. Without --target it starts `torchwire serve`.",
        options.BenchOptions,
        "cli",
    ),
    (
        "soak",
        "run mixed unary + streaming load for a while; report errors, throughput and server memory",
        "Soak test: keeps CONCURRENCY requests in flight (a --stream-share of them on "
        "ModelStreamInfer streams, the rest unary) for WARMUP + DURATION seconds. Every INTERVAL it "
        "prints throughput, errors by status code and the server's RSS; at the end it reports RSS "
        "growth after warmup and writes JSON and CSV. Any failed request fails the run (exit 1). "
        "Without --target it starts `torchwire serve` on a free loopback port and always stops it.",
        options.SoakOptions,
        "soak",
    ),
)
