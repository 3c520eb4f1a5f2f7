"""One loaded model version of any kind: numpy batches in, checked numpy outputs out, on instance threads.

The kinds (TorchScript, ExportedProgram, AOTInductor) differ only in how their file loads and how a
list of tensors reaches their forward pass (loader.py); everything around that is here, once.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from torchwire.client import _codec

from ..core.errors import ModelExecutionError
from ..repository import ModelSpec, TensorSpec
from ..repository.config import SUPPORTED
from .inline import PROBES, TRIP, InlineRule
from .instances import Instances

Array = npt.NDArray[Any]
# A model's input: a tensor, or for BYTES (TYPE_STRING) a List[str] (TorchScript has no bytes type).
Input = torch.Tensor | list[str]
# A model's forward pass as the runtime calls it: inputs in config order, whatever the model returns
# (a tensor or a List[str], or a tuple or list of them).
Forward = Callable[[list[Input]], Any]

log = logging.getLogger("torchwire.runtime")

# Derived from the client's table: the torch dtype of each datatype a model may use is that of its
# raw bytes, except BF16, whose raw form is its uint16 bit pattern (BYTES is a List[str], no tensor).
TORCH_DTYPES: dict[str, torch.dtype] = {
    name: torch.bfloat16
    if name == "BF16"
    else torch.from_numpy(np.empty(0, _codec.DATATYPES[name].wire)).dtype
    for name in sorted(SUPPORTED - {"BYTES"})
}
# The other way, for what an exported program declares.
DATATYPES: dict[torch.dtype, str] = {dtype: name for name, dtype in TORCH_DTYPES.items()}

# Inputs are views of the request's immutable bytes; torch warns that they are read-only. Models
# are not expected to write into their inputs (batched requests get a fresh concatenated copy).
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def to_tensor(array: Array, spec: TensorSpec, rows: int | None) -> Input:
    if spec.datatype == "BYTES":  # the str elements (the codec decoded them), flat in row-major order
        texts: list[str] = array.reshape(-1).tolist()
        return texts
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


def first_line(exc: BaseException) -> str:
    """TorchScript errors carry the whole script traceback; the first meaningful line is the message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line
    return lines[-1] if lines else type(exc).__name__


class LoadedModel:
    """One loaded version of a model, with its instance threads."""

    def __init__(
        self,
        forward: Forward,
        spec: ModelSpec,
        threads: int,
        warmup: Sequence[Sequence[Array]] = (),
        probe: Sequence[Array] | None = None,
        inline_bound_ns: int = 0,
    ) -> None:
        """Starts the instance threads; each runs the `warmup` batches before it takes work, then
        times `probe` (one row) for the inline rule; without a probe nothing runs inline."""
        self.spec = spec
        self._forward = forward
        self._batched = spec.max_batch_size > 0
        self._warmup = warmup
        self._probe = probe
        self.inline_rule = InlineRule(inline_bound_ns) if probe is not None and inline_bound_ns else None
        self._instances: Instances[Sequence[Array], list[Array]] = Instances(
            self.forward,
            count=spec.instances,
            threads=threads,
            name=f"torchwire-{spec.name}",
            prepare=self._warm,
        )

    def _warm(self) -> None:
        for batch in self._warmup:
            self.forward(batch, timed=False)
        if self._probe is None or self.inline_rule is None:
            return
        samples: list[int] = []
        for _ in range(PROBES):
            start = time.perf_counter_ns()
            self.forward(self._probe, timed=False)
            samples.append(time.perf_counter_ns() - start)
            if len(samples) >= 3 and min(samples) > TRIP * self.inline_rule.bound_ns:
                break  # far too long to ever run inline: no need to time it again
        self.inline_rule.warmed(samples)

    def inline(self, rows: int) -> bool:
        """Whether a lone request of `rows` may run on the calling (event loop) thread: one row, and a
        forward pass measured short at load and since (runtime/inline.py)."""
        return rows == 1 and self.inline_rule is not None and self.inline_rule.allowed

    def wait_warm(self) -> None:
        """Blocking: until every instance thread has run the warmup (its first error raised)."""
        self._instances.wait_prepared()

    def run(self, inputs: Sequence[Array]) -> Awaitable[list[Array]]:
        """The model's outputs (config order) for inputs in config order; runs in an instance thread."""
        return self._instances.submit(inputs)

    def forward(self, inputs: Sequence[Array], *, timed: bool = True) -> list[Array]:
        """Blocking: the outputs for one batch, on the calling thread. One-row passes are timed for the
        inline rule, except `timed` False ones (warmup)."""
        spec = self.spec
        rows = inputs[0].shape[0] if self._batched else None
        tensors = [to_tensor(a, t, rows) for a, t in zip(inputs, spec.inputs, strict=True)]
        rule = self.inline_rule if timed and (rows or 1) == 1 else None
        start = time.perf_counter_ns() if rule is not None else 0
        try:
            with torch.inference_mode():
                result = self._forward(tensors)
        except Exception as exc:  # the model's own failure: report its message, not ours
            raise ModelExecutionError(f"model '{spec.name}' failed in forward(): {first_line(exc)}") from exc
        if rule is not None and rule.record(elapsed := time.perf_counter_ns() - start):
            log.warning(
                "model %s: a one-row forward pass took %.0f µs, over %d times --inline-forward-us: its lone "
                "requests run on the instance threads from now on",
                spec.name,
                elapsed / 1e3,
                TRIP,
            )
        return self._check_outputs(result, rows)

    def _check_outputs(self, result: Any, rows: int | None) -> list[Array]:
        spec = self.spec
        # One output may itself be a List[str]; several come as a tuple (or a list of outputs).
        single = len(spec.outputs) == 1 and (isinstance(result, torch.Tensor) or _is_texts(result))
        outputs = [result] if single or not isinstance(result, list | tuple) else list(result)
        if len(outputs) != len(spec.outputs) or not all(
            _is_texts(o) if t.datatype == "BYTES" else isinstance(o, torch.Tensor)
            for o, t in zip(outputs, spec.outputs, strict=False)
        ):
            kinds = ", ".join(type(o).__name__ for o in outputs)
            raise ModelExecutionError(
                f"model '{spec.name}' returned {len(outputs)} value(s) ({kinds}); its config lists "
                f"{len(spec.outputs)} output tensor(s): {', '.join(t.name for t in spec.outputs)}"
            )
        arrays: list[Array] = []
        for tensor, t in zip(outputs, spec.outputs, strict=True):
            if t.datatype == "BYTES":
                arrays.append(self._texts_array(tensor, t, rows))
                continue
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

    def _texts_array(self, texts: list[str], t: TensorSpec, rows: int | None) -> Array:
        """A List[str] output as an object array of its wire shape: one string per row when batched."""
        if rows is not None:
            shape: tuple[int, ...] = (rows, *t.dims)
        else:
            shape = tuple(len(texts) if d == -1 else d for d in t.dims)
        if len(texts) != math.prod(shape):
            raise ModelExecutionError(
                f"model '{self.spec.name}' output '{t.name}' is a list of {len(texts)} strings, "
                f"expected {math.prod(shape)} (shape {list(shape)})"
            )
        array = np.empty(len(texts), dtype=np.object_)
        array[:] = texts
        return array.reshape(shape)

    def close(self) -> None:
        self._instances.close()


def _is_texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
