"""What an exported program takes and returns, checked against config.pbtxt or turned into one.

A torch.export program knows its tensors: datatypes, shapes, and which dimensions are dynamic with
what range. That is enough to refuse a config that disagrees with it, or a batch dimension the
scheduler could exceed, at load time instead of as a failed batch at run time; and to write the
config itself when a model folder has none (Triton's auto-complete).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchwire.client._proto import model_config_pb2 as mc

from ..core.errors import ConfigError
from ..repository import ModelSpec, TensorSpec

DYNAMIC = -1
# max_batch_size for a completed config whose batch Dim has no upper bound.
UNBOUNDED_MAX_BATCH = 32
EXPORT_HINT = (
    "export it with dynamic_shapes giving dimension 0 of every input torch.export.Dim('batch', max={max}) "
    "(`torchwire export` does)"
)


@dataclass(frozen=True, slots=True)
class TensorSignature:
    datatype: str  # the v2 wire name, e.g. "FP32"
    shape: tuple[int, ...]  # every dimension, the batch one included; -1 where dynamic


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    # (min, max) of dimension 0 when it is one dynamic dimension shared by every input and output
    # (max None: unbounded); None when the program has no batch dimension it can vary.
    batch: tuple[int, int | None] | None

    def to_json(self) -> str:
        def tensors(ts: tuple[TensorSignature, ...]) -> list[dict[str, Any]]:
            return [{"datatype": t.datatype, "shape": list(t.shape)} for t in ts]

        batch = list(self.batch) if self.batch is not None else None
        return json.dumps({"inputs": tensors(self.inputs), "outputs": tensors(self.outputs), "batch": batch})

    @classmethod
    def from_json(cls, text: str) -> Signature:
        data = json.loads(text)

        def tensors(items: list[dict[str, Any]]) -> tuple[TensorSignature, ...]:
            return tuple(
                TensorSignature(str(t["datatype"]), tuple(int(d) for d in t["shape"])) for t in items
            )

        batch = data.get("batch")
        return cls(
            tensors(data["inputs"]),
            tensors(data["outputs"]),
            (int(batch[0]), None if batch[1] is None else int(batch[1])) if batch is not None else None,
        )


def _shape(t: TensorSignature) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def check(signature: Signature, spec: ModelSpec, where: Path) -> None:
    """ConfigError naming both sides where the config and the program disagree."""
    batched = spec.max_batch_size > 0
    if batched:  # first: a static batch dimension would otherwise read as a shape mismatch
        _check_batch(signature, spec.max_batch_size, where)
    for kind, program, config in (
        ("input", signature.inputs, spec.inputs),
        ("output", signature.outputs, spec.outputs),
    ):
        if len(program) != len(config):
            raise ConfigError(
                f"{where}: config.pbtxt lists {len(config)} {kind}(s) "
                f"({', '.join(t.name for t in config)}), the program has {len(program)}"
            )
        for index, (p, c) in enumerate(zip(program, config, strict=True)):
            _check_tensor(kind, index, p, c, batched, where)


def _check_tensor(
    kind: str, index: int, program: TensorSignature, config: TensorSpec, batched: bool, where: Path
) -> None:
    label = f"{where}: {kind} {index} ('{config.name}')"
    if program.datatype != config.datatype:
        raise ConfigError(
            f"{label}: config.pbtxt says {config.datatype}, the program's is {program.datatype}"
        )
    dims = config.reshape if kind == "input" and config.reshape is not None else config.dims
    want = ((DYNAMIC,) if batched else ()) + tuple(dims)
    agree = len(want) == len(program.shape) and all(
        p in (DYNAMIC, c) for p, c in zip(program.shape, want, strict=True)
    )
    if not agree:
        said = (
            "[-1 (batch), " + ", ".join(map(str, dims)) + "]"
            if batched
            else "[" + ", ".join(map(str, dims)) + "]"
        )
        raise ConfigError(
            f"{label}: config.pbtxt gives shape {said}, the program's is {_shape(program)} (-1: dynamic)"
        )


def _check_batch(signature: Signature, max_batch_size: int, where: Path) -> None:
    hint = EXPORT_HINT.format(max=max_batch_size)
    if signature.batch is None:
        raise ConfigError(
            f"{where}: max_batch_size is {max_batch_size}, but the program's batch dimension is static "
            f"(dimension 0 is not one dynamic dimension of every input and output): {hint}, or set "
            f"max_batch_size 0 and dims to its full shapes"
        )
    low, high = signature.batch
    if low > 1 or (high is not None and high < max_batch_size):
        declared = f"{low}..{high if high is not None else 'unbounded'}"
        raise ConfigError(
            f"{where}: max_batch_size is {max_batch_size}, but the program's batch dimension takes "
            f"{declared} rows only: {hint}, or lower max_batch_size"
        )


def completed_config(signature: Signature, name: str, platform: str) -> mc.ModelConfig:
    """The config.pbtxt a model folder without one is served with: Triton's names for the PyTorch
    backend (INPUT__i, OUTPUT__i, matched by position), datatypes and shapes from the program, and
    dynamic batching up to the batch dimension's declared maximum."""
    config = mc.ModelConfig(name=name, platform=platform, backend="pytorch")
    return completed_from(config, signature, platform)


def completed_from(config: mc.ModelConfig, signature: Signature, platform: str) -> mc.ModelConfig:
    """`config` with what it leaves out filled in from the program, as Triton's auto-complete does:
    the platform (when neither it nor a backend is named), `max_batch_size` with `dynamic_batching`
    (when it is 0 and the program has a batch dimension), and the inputs or the outputs (when the
    config lists none; named INPUT__i/OUTPUT__i, by position). What the config says is kept."""
    completed = mc.ModelConfig()
    completed.CopyFrom(config)
    if not completed.platform and not completed.backend:
        completed.platform = platform
    if signature.batch is not None and completed.max_batch_size == 0:
        completed.max_batch_size = signature.batch[1] or UNBOUNDED_MAX_BATCH
        if not completed.HasField("dynamic_batching") and not completed.HasField("sequence_batching"):
            completed.dynamic_batching.SetInParent()
    batched = completed.max_batch_size > 0
    for kind, tensors, field in (
        ("INPUT", signature.inputs, completed.input),
        ("OUTPUT", signature.outputs, completed.output),
    ):
        if field:
            continue
        for index, t in enumerate(tensors):
            datatype = mc.DataType.Value(f"TYPE_{t.datatype}")
            field.add(
                name=f"{kind}__{index}", data_type=datatype, dims=list(t.shape[1:] if batched else t.shape)
            )
    return completed
