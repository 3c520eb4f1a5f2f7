"""`torchwire export`: the command line. The parser imports nothing heavy; torch loads when it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..repository.config import SUPPORTED

KINDS = ("torch_aoti", "torch_export")


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "export",
        help="export a PyTorch module (or a TorchScript model) into a model folder served as is",
        description="Export a module with torch.export, with dimension 0 of every input a dynamic batch "
        "dimension up to --max-batch-size, and write REPOSITORY/NAME/VERSION/model.pt2 and its config.pbtxt: "
        "an AOTInductor package (compiled for this machine and torch) by default, or the ExportedProgram "
        "with --kind torch_export. With --from-torchscript it converts a TorchScript model folder instead.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "module",
        nargs="?",
        help="MODULE:NAME, MODULE a dotted module or a .py file, NAME an nn.Module class or a callable "
        "returning an nn.Module (called with no arguments)",
    )
    source.add_argument(
        "--from-torchscript",
        metavar="MODEL_DIR",
        help="a TorchScript model folder (config.pbtxt + N/model.pt): its highest version is converted, its "
        "config kept with the platform changed",
    )
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="DATATYPE:D1,D2",
        help="one per forward() argument, in order: datatype and dims without the batch one, e.g. "
        "FP32:3,64,64 (not needed with --from-torchscript: its config says)",
    )
    parser.add_argument("--repository", required=True, help="the model repository folder to write into")
    parser.add_argument("--name", help="the model folder's name [the class or source folder's name]")
    parser.add_argument(
        "--kind", choices=KINDS, default="torch_aoti", help="what model.pt2 holds [torch_aoti]"
    )
    parser.add_argument("--max-batch-size", type=int, default=32, help="the batch dimension's maximum [32]")
    parser.add_argument("--version", type=int, default=1, help="the version folder to write [1]")
    parser.add_argument(
        "--portable",
        action="store_true",
        help="compile for any x86-64-v3 (AVX2) CPU instead of this one (torch_aoti on x86-64)",
    )
    parser.set_defaults(run=run)


def parse_input(text: str) -> tuple[str, list[int]]:
    datatype, _, dims = text.partition(":")
    datatype = datatype.upper()
    if datatype not in SUPPORTED:
        raise ValueError(f"--input '{text}': datatype must be one of {', '.join(sorted(SUPPORTED))}")
    try:
        sizes = [int(d) for d in dims.split(",") if d.strip()]
    except ValueError:
        raise ValueError(f"--input '{text}': dims must be comma-separated positive integers") from None
    if any(d <= 0 for d in sizes):
        raise ValueError(f"--input '{text}': dims must be positive")
    return datatype, sizes


def run(args: argparse.Namespace) -> int:
    from . import convert

    try:
        if args.max_batch_size < 2:
            raise ValueError("--max-batch-size must be >= 2 (torch.export makes a dimension of 1 static)")
        if args.version < 1:
            raise ValueError("--version must be >= 1")
        shapes = [parse_input(text) for text in args.input]
        folder = convert.run(args, shapes)
    except (ValueError, convert.ExportError) as exc:
        print(f"torchwire export: {exc}", file=sys.stderr)
        return 2
    print(f"torchwire export: wrote {folder}")
    return 0
