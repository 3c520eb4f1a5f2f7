"""Loads a TorchScript file (`model.pt`, platform pytorch_libtorch)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..errors import ConfigError
from ..repository import ModelSpec
from .model import Forward, first_line

# torch 2.13 deprecates torch.jit in favour of torch.export. Serving TorchScript is deliberate (the
# design card asks for it, existing repositories rely on it), so exactly the calls made here are quiet.
# A filter installed once: warnings.catch_warnings is not safe around loads running on several threads.
warnings.filterwarnings(
    "ignore",
    message=r"`torch\.jit\.(load|optimize_for_inference|freeze)` is deprecated",
    category=DeprecationWarning,
)


def load_file(path: Path) -> torch.jit.ScriptModule:
    """Blocking: the TorchScript module at path on the CPU, in eval mode."""
    try:
        module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location="cpu"
        )
    except Exception as exc:
        raise ConfigError(f"{path}: not a loadable TorchScript file: {first_line(exc)}") from exc
    module.eval()
    return module


def load_module(path: Path, spec: ModelSpec) -> torch.jit.ScriptModule:
    """Blocking: the module at path on the CPU in eval mode, optimized if the config asks.

    OPTIMIZE_FOR_INFERENCE runs torch.jit.optimize_for_inference once here: it freezes the weights
    into the graph, folds batch norms into convolutions and picks oneDNN kernels. Measured on the
    example CNN (2 threads, this machine): a batch of 24 in 498 µs instead of 652; but a batch of 1
    in 149 µs instead of 114, so it is a choice per model, off by default.
    """
    module = load_file(path)
    if spec.optimize:
        try:
            module = torch.jit.optimize_for_inference(module)
        except Exception as exc:
            raise ConfigError(
                f"{path}: parameters 'OPTIMIZE_FOR_INFERENCE' is set, and torch.jit.optimize_for_inference "
                f"failed: {first_line(exc)}"
            ) from exc
    return module


def load_torchscript(path: Path, spec: ModelSpec) -> Forward:
    module = load_module(path, spec)
    return lambda tensors: module(*tensors)
