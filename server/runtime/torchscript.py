"""Loads a TorchScript file (`model.pt`, platform pytorch_libtorch)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..core.errors import ConfigError
from ..repository import ModelSpec
from .archives import AOTI, DESCRIPTIONS, EXPORT, PICKLED, entries, kind_of
from .model import Forward, first_line

# torch 2.13 deprecates torch.jit in favour of torch.export. Serving TorchScript is deliberate (the
# design card asks for it, existing repositories rely on it), so exactly the calls made here are quiet.
# A filter installed once: warnings.catch_warnings is not safe around loads running on several threads.
warnings.filterwarnings(
    "ignore",
    message=r"`torch\.jit\.(load|optimize_for_inference|freeze)` is deprecated",
    category=DeprecationWarning,
)

HOW_TO_SAVE = "save TorchScript with torch.jit.save(torch.jit.script(model), path) (or torch.jit.trace)"


def _why_not_torchscript(path: Path) -> str | None:
    """What the file is instead, when that explains the failure better than torch's own message
    (which calls a file saved by torch.save "corrupted"); with what to do about it."""
    names = entries(path)
    if names is None:
        return f"not TorchScript (TorchScript files are zip archives; this one is not); {HOW_TO_SAVE}"
    kind = kind_of(names)
    if kind in (AOTI, EXPORT):
        return (
            f"not TorchScript: it is {DESCRIPTIONS[kind]}: set platform '{kind}' in config.pbtxt (and name "
            f"the file model.pt2) to serve it"
        )
    if kind == PICKLED:
        return (
            f"not TorchScript: it was saved with torch.save (a pickled module or state_dict); {HOW_TO_SAVE}"
        )
    return None


def load_file(path: Path) -> torch.jit.ScriptModule:
    """Blocking: the TorchScript module at path on the CPU, in eval mode."""
    try:
        module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location="cpu"
        )
    except Exception as exc:
        why = (
            _why_not_torchscript(path) or f"not a loadable TorchScript file: {first_line(exc)}; {HOW_TO_SAVE}"
        )
        raise ConfigError(f"{path}: {why}") from exc
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
