"""Registers `torchwire bench` (placeholder until the benchmark lands)."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("bench", help="benchmark a model (closed loop)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print("torchwire bench: not available yet")
    return 2
