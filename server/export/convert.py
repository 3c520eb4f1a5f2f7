"""What `torchwire export` runs: find the module, export it, write the folder."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from google.protobuf import text_format

from ..core.errors import ConfigError
from ..repository import build_spec, read_config
from ..repository.config import CONFIG_FILE
from ..repository.scanner import versions_of
from .build import ExportError, example_inputs, export_module, export_torchscript, write_model_folder

__all__ = ["ExportError", "run"]


def find_module(reference: str) -> tuple[str, torch.nn.Module]:
    """The module MODULE:NAME names (a class, or a callable returning a module), and NAME."""
    where, _, name = reference.rpartition(":")
    if not where or not name:
        raise ExportError(f"'{reference}': expected MODULE:NAME, e.g. mypackage.models:Net or net.py:Net")
    try:
        if where.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(where).stem, where)
            if spec is None or spec.loader is None:
                raise ExportError(f"'{where}': not a Python file")
            namespace = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(namespace)
        else:
            namespace = importlib.import_module(where)
    except (ImportError, OSError) as exc:
        raise ExportError(f"'{where}' cannot be imported: {exc}") from exc
    factory: Callable[[], Any] | None = getattr(namespace, name, None)
    if factory is None:
        raise ExportError(f"'{where}' has no '{name}'")
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"'{reference}' made a {type(module).__name__}, not a torch.nn.Module")
    return name, module.eval()


def run(args: argparse.Namespace, shapes: Sequence[tuple[str, list[int]]]) -> Path:
    repository = Path(args.repository)
    if args.from_torchscript:
        return _convert(Path(args.from_torchscript), repository, args)
    if not shapes:
        raise ExportError("give one --input DATATYPE:DIMS per forward() argument")
    name, module = find_module(args.module)
    program = export_module(module, example_inputs(shapes), args.max_batch_size)
    return write_model_folder(
        program,
        repository,
        args.name or name.lower(),
        kind=args.kind,
        max_batch_size=args.max_batch_size,
        version=args.version,
        portable=args.portable,
    )


def _convert(source: Path, repository: Path, args: argparse.Namespace) -> Path:
    """A TorchScript folder's highest version as an exported one, its config kept (platform changed)."""
    try:
        config = read_config(source)
        spec = build_spec(source, config)
    except ConfigError as exc:
        raise ExportError(str(exc)) from exc
    if spec.platform != "pytorch_libtorch":
        raise ExportError(f"{source}: platform '{spec.platform}' is not TorchScript")
    if spec.max_batch_size < 2:
        raise ExportError(f"{source}: max_batch_size is {spec.max_batch_size}; only batched models convert")
    versions = versions_of(source)
    if not versions:
        raise ExportError(f"{source}: no version folder")
    shapes = [(t.datatype, list(t.reshape if t.reshape is not None else t.dims)) for t in spec.inputs]
    if any(d < 0 for _, dims in shapes for d in dims):
        raise ExportError(f"{source}: inputs with variable dims (-1) need example sizes; not supported yet")
    path = source / str(max(versions)) / spec.model_file
    program = export_torchscript(path, example_inputs(shapes), spec.max_batch_size)
    name = args.name or f"{source.name}_{'aoti' if args.kind == 'torch_aoti' else 'export'}"
    folder = write_model_folder(
        program,
        repository,
        name,
        kind=args.kind,
        max_batch_size=spec.max_batch_size,
        version=args.version,
        portable=args.portable,
    )
    kept = type(config)()
    kept.CopyFrom(config)
    kept.name, kept.platform, kept.default_model_filename = name, args.kind, ""
    (folder / CONFIG_FILE).write_text(text_format.MessageToString(kept))
    return folder
