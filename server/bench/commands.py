"""The `bench` and `soak` command lines, and nothing they run.

`torchwire serve` builds its parser from here, so it must import nothing the server extra lacks:
rich and matplotlib come with the bench extra. Each command imports its module only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

# What the bench extra adds over the server extra (pyproject.toml).
BENCH_EXTRA = ("rich", "matplotlib")


def register(commands: Any) -> None:
    """Add `bench` and `soak` to the `torchwire` subcommands."""
    _bench(commands)
    _soak(commands)


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


def _bench(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "bench",
        help="benchmark a model (closed loop) against a bare grpc server and the model in-process",
        description="Closed-loop benchmark: keeps CONCURRENCY requests in flight for DURATION seconds per "
        "level, then measures the same levels against a bare grpc server and the model in-process, and "
        "prints torchwire's throughput as ratios to both. Without --target it starts `torchwire serve`.",
    )
    parser.add_argument("--model", required=True, help="model to benchmark (its metadata shapes the request)")
    parser.add_argument("--target", help="HOST:PORT of a running server (default: start one on a free port)")
    parser.add_argument(
        "--concurrency", default="1,4,16,64", help="comma-separated levels [default 1,4,16,64]"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per level [default 5]")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level [1]")
    parser.add_argument("--streaming", action="store_true", help="ModelStreamInfer: one stream per worker")
    parser.add_argument(
        "--model-repository",
        "--repository",
        dest="repository",
        type=Path,
        help="model repository, as for `torchwire serve` (default: the bundled examples); also locates "
        "the model file for the in-process ceiling when --target is given",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="load generator processes sharing the concurrency [default 1]"
    )
    parser.add_argument(
        "--torch-threads", type=int, help="passed to `torchwire serve` and used in-process [server default]"
    )
    parser.add_argument(
        "--perf-analyzer",
        metavar="PATH",
        help="drive both servers with Triton's perf_analyzer at PATH instead of the Python load generator "
        "(each level runs until 3 windows of DURATION agree; --warmup and --workers do not apply)",
    )
    _both(parser)
    parser.set_defaults(run=_runs("cli"))


def _soak(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "soak",
        help="run mixed unary + streaming load for a while; report errors, throughput and server memory",
        description="Soak test: keeps CONCURRENCY requests in flight (a --stream-share of them on "
        "ModelStreamInfer streams, the rest unary) for WARMUP + DURATION seconds. Every INTERVAL it "
        "prints throughput, errors by status code and the server's RSS; at the end it reports RSS "
        "growth after warmup and writes JSON and CSV. Any failed request fails the run (exit 1). "
        "Without --target it starts `torchwire serve` on a free loopback port and always stops it.",
    )
    parser.add_argument("--model", required=True, help="model to load (its metadata shapes the request)")
    parser.add_argument("--target", help="HOST:PORT of a running server on loopback (RSS is then n/a)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds after warmup [60]")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before RSS growth counts [30]")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per reported interval [10]")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight in all [32]")
    parser.add_argument(
        "--stream-share", type=float, default=0.25, help="share of the concurrency on streams [0.25]"
    )
    parser.add_argument("--streams", type=int, default=2, help="ModelStreamInfer streams that share it [2]")
    parser.add_argument(
        "--model-repository",
        "--repository",
        dest="repository",
        type=Path,
        help="model repository, as for `torchwire serve` (default: the bundled examples)",
    )
    parser.add_argument("--workers", type=int, default=1, help="load generator processes [1]")
    parser.add_argument("--torch-threads", type=int, help="passed to `torchwire serve` [server default]")
    _both(parser)
    parser.set_defaults(run=_runs("soak"))


def _both(parser: argparse.ArgumentParser) -> None:
    """The options bench and soak share, with the same meaning and defaults."""
    parser.add_argument("--batch", type=int, default=1, help="rows per request [1]")
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME:D1,D2",
        help="an input's dims without the batch dimension, as perf_analyzer's --shape; repeatable "
        "[variable dims: 1]",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="results folder [bench-results]"
    )
    parser.add_argument(
        "--start-timeout", type=float, default=120.0, help="seconds to wait for the server to be ready [120]"
    )
