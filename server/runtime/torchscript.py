"""Loads a TorchScript model and runs its forward pass on numpy batches, off the event loop.

Each model owns one thread per instance (instances.py); every forward pass runs there, so the event
loop never waits on torch.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from torchwire.client import _codec

from ..core.errors import ConfigError, ModelExecutionError
from ..repository import ModelSpec, TensorSpec
from ..repository.config import SUPPORTED
from .instances import Instances
from .warmup import warmup_batches

Array = npt.NDArray[Any]

# Derived from the client's table: the torch dtype of each datatype a model may use is that of its
# raw bytes, except BF16, whose raw form is its uint16 bit pattern.
TORCH_DTYPES: dict[str, torch.dtype] = {
    name: torch.bfloat16
    if name == "BF16"
    else torch.from_numpy(np.empty(0, _codec.DATATYPES[name].wire)).dtype
    for name in sorted(SUPPORTED)
}

# Inputs are views of the request's immutable bytes; torch warns that they are read-only. Models
# are not expected to write into their inputs (batched requests get a fresh concatenated copy).
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def to_tensor(array: Array, spec: TensorSpec, rows: int | None) -> torch.Tensor:
    if spec.datatype == "BF16":  # raw BF16 arrives as its uint16 bit pattern
        tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(array)
    if spec.reshape is not None:
        tensor = tensor.reshape(((rows,) if rows is not None else ()) + spec.reshape)
    return tensor


def to_array(tensor: torch.Tensor, spec: TensorSpec) -> Array:
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(np.uint16)
    return tensor.contiguous().numpy()


class TorchScriptModel:
    """One loaded version of a model, with its instance threads."""

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        spec: ModelSpec,
        threads: int,
        warmup: Sequence[Sequence[Array]] = (),
    ) -> None:
        """Starts the instance threads; each runs the `warmup` batches before it takes work."""
        self.spec = spec
        self._module = module
        self._batched = spec.max_batch_size > 0
        self._warmup = warmup
        self._instances: Instances[Sequence[Array], list[Array]] = Instances(
            self.forward,
            count=spec.instances,
            threads=threads,
            name=f"torchwire-{spec.name}",
            prepare=self._warm,
        )

    def _warm(self) -> None:
        for batch in self._warmup:
            self.forward(batch)

    def wait_warm(self) -> None:
        """Blocking: until every instance thread has run the warmup (its first error raised)."""
        self._instances.wait_prepared()

    def run(self, inputs: Sequence[Array]) -> Awaitable[list[Array]]:
        """The model's outputs (config order) for inputs in config order; runs in an instance thread."""
        return self._instances.submit(inputs)

    def forward(self, inputs: Sequence[Array]) -> list[Array]:
        spec = self.spec
        rows = inputs[0].shape[0] if self._batched else None
        tensors = [to_tensor(a, t, rows) for a, t in zip(inputs, spec.inputs, strict=True)]
        try:
            with torch.inference_mode():
                result = self._module(*tensors)
        except Exception as exc:  # the model's own failure: report its message, not ours
            raise ModelExecutionError(f"model '{spec.name}' failed in forward(): {_first_line(exc)}") from exc
        return self._check_outputs(result, rows)

    def _check_outputs(self, result: Any, rows: int | None) -> list[Array]:
        spec = self.spec
        outputs = list(result) if isinstance(result, list | tuple) else [result]
        if len(outputs) != len(spec.outputs) or not all(isinstance(o, torch.Tensor) for o in outputs):
            kinds = ", ".join(type(o).__name__ for o in outputs)
            raise ModelExecutionError(
                f"model '{spec.name}' returned {len(outputs)} value(s) ({kinds}); its config lists "
                f"{len(spec.outputs)} output tensor(s): {', '.join(t.name for t in spec.outputs)}"
            )
        arrays: list[Array] = []
        for tensor, t in zip(outputs, spec.outputs, strict=True):
            want = TORCH_DTYPES[t.datatype]
            if tensor.dtype != want:
                raise ModelExecutionError(
                    f"model '{spec.name}' output '{t.name}' has dtype {tensor.dtype}, "
                    f"config says {t.datatype}"
                )
            shape = tuple(tensor.shape)
            body = shape[1:] if rows is not None else shape
            if (rows is not None and (not shape or shape[0] != rows)) or not t.matches(body):
                expected = ([rows] if rows is not None else []) + list(t.dims)
                raise ModelExecutionError(
                    f"model '{spec.name}' output '{t.name}' has shape {list(shape)}, expected {expected}"
                )
            arrays.append(to_array(tensor.detach().cpu(), t))
        return arrays

    def close(self) -> None:
        self._instances.close()


def _first_line(exc: BaseException) -> str:
    """TorchScript errors carry the whole script traceback; the first meaningful line is the message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line
    return lines[-1] if lines else type(exc).__name__


HOW_TO_SAVE = "save TorchScript with torch.jit.save(torch.jit.script(model), path) (or torch.jit.trace)"


def _why_not_torchscript(path: Path) -> str | None:
    """What the file is instead, when that explains the failure better than torch's own message
    (which calls a file saved by torch.save "corrupted")."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "not TorchScript (TorchScript files are zip archives; this one is not)"
    pickled = any(name.endswith("/data.pkl") for name in names)
    if pickled and not any(name.endswith("/constants.pkl") for name in names):
        return "not TorchScript: it was saved with torch.save (a pickled module or state_dict)"
    return None


def load_module(path: Path, spec: ModelSpec) -> torch.jit.ScriptModule:
    """Blocking: the module at path on the CPU in eval mode, optimized if the config asks.

    OPTIMIZE_FOR_INFERENCE runs torch.jit.optimize_for_inference once here: it freezes the weights
    into the graph, folds batch norms into convolutions and picks oneDNN kernels. Measured on the
    example CNN (2 threads, this machine): a batch of 24 in 498 µs instead of 652; but a batch of 1
    in 149 µs instead of 114, so it is a choice per model, off by default.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: model file not found (config field 'default_model_filename' names it)")
    try:
        module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location="cpu"
        )
    except Exception as exc:
        why = _why_not_torchscript(path) or f"not a loadable TorchScript file: {_first_line(exc)}"
        raise ConfigError(f"{path}: {why}; {HOW_TO_SAVE}") from exc
    module.eval()
    if spec.optimize:
        try:
            module = torch.jit.optimize_for_inference(module)
        except Exception as exc:
            raise ConfigError(
                f"{path}: parameters 'OPTIMIZE_FOR_INFERENCE' is set, and torch.jit.optimize_for_inference "
                f"failed: {_first_line(exc)}"
            ) from exc
    return module


def load_model(path: Path, spec: ModelSpec, threads: int) -> TorchScriptModel:
    """Blocking: load the module (load_module), then start its instance threads, each of which
    runs the warmup batches on itself before serving; returns once all are warm."""
    module = load_module(path, spec)
    try:
        batches = warmup_batches(spec)
    except ConfigError as exc:
        raise ConfigError(f"{path}: warmup failed: {exc}") from exc
    model = TorchScriptModel(module, spec, threads, batches)
    try:
        model.wait_warm()
    except (ModelExecutionError, ConfigError) as exc:
        model.close()
        raise ConfigError(f"{path}: warmup failed: {exc}") from exc
    return model
