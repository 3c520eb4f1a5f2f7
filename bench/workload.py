"""The request a benchmark sends: random inputs shaped by the model's metadata, serialized once.

Inputs are built from what the server reports (metadata and config), so the same workload drives
torchwire, the bare server and the in-process model. No torch here: the load generator stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from torchwire.client import _codec
from torchwire.client._calls import ModelMetadata, TensorMetadata
from torchwire.client._proto import grpc_service_pb2 as pb

from .protocol import OutputSpec

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class Workload:
    model: str
    batch: int  # rows per request; 0 when the model has no batch dimension
    request: bytes  # the serialized ModelInferRequest every call sends
    inputs: dict[str, Array]  # the same data as numpy (BF16 as its uint16 bit pattern)
    outputs: tuple[TensorMetadata, ...]  # what a response must carry; -1 accepts any size

    def expected_outputs(self) -> tuple[OutputSpec, ...]:
        """Each output's name, datatype and shape as responses must carry them (-1: any size)."""
        return tuple(
            OutputSpec(
                t.name,
                t.datatype,
                tuple(
                    self.batch if i == 0 and self.batch > 0 and d < 0 else d for i, d in enumerate(t.shape)
                ),
            )
            for t in self.outputs
        )

    def output_specs(self) -> list[str]:
        """`NAME:DATATYPE:DIMS` for bare_server.py --outputs (batch dimension first, -1)."""
        return [f"{t.name}:{t.datatype}:{','.join(map(str, t.shape))}" for t in self.outputs]


Shapes = Mapping[str, tuple[int, ...]]  # input name -> its dims without the batch dimension


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME:D1,D2,...` (perf_analyzer's --shape): an input's dims, without the batch dimension."""
    name, _, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not name or not shape or min(shape) < 1:
        raise ValueError(f"--shape {text!r}: expected NAME:D1,D2,... with every size >= 1")
    return name, shape


def concrete_shape(
    tensor: TensorMetadata, batch: int, given: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """The batch dimension (first, when batched) gets `batch` rows; the others come from `given`
    (checked against the model's fixed sizes), else each variable one is 1."""
    batched = batch > 0
    dims = tensor.shape[1:] if batched else tensor.shape
    if given is None:
        given = tuple(1 if d < 0 else d for d in dims)
    elif len(given) != len(dims) or any(d >= 0 and d != g for d, g in zip(dims, given, strict=True)):
        raise ValueError(
            f"--shape {tensor.name}:{','.join(map(str, given))} does not fit the model's "
            f"{list(dims)} for input '{tensor.name}' (-1: any size; no batch dimension)"
        )
    return ((batch,) if batched else ()) + given


def random_array(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> Array:
    """Random data of a v2 datatype, as the array `_codec.to_raw` encodes for that datatype."""
    if datatype == "BYTES":
        return np.array([b"torchwire"] * int(np.prod(shape)), dtype=np.object_).reshape(shape)
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    if datatype in {"FP16", "FP32", "FP64", "BF16"}:
        # BF16 is generated as float32: to_raw keeps its top 16 bits, like tritonclient does.
        wire = np.float32 if datatype == "BF16" else _codec.DATATYPES[datatype].wire
        return rng.random(shape, dtype=np.float64).astype(wire)
    return rng.integers(0, 100, size=shape).astype(_codec.DATATYPES[datatype].wire)  # fits INT8 too


def build(
    metadata: ModelMetadata, max_batch_size: int, batch: int, shapes: Shapes | None = None, seed: int = 0
) -> Workload:
    """A request of `batch` rows (ignored for a model without batching) for `metadata`'s inputs,
    shaped by `shapes` where given (as perf_analyzer's --shape)."""
    shapes = shapes or {}
    rows = batch if max_batch_size > 0 else 0
    if rows > max_batch_size > 0:
        raise ValueError(f"--batch {batch} exceeds model '{metadata.name}' max_batch_size {max_batch_size}")
    unknown = sorted(set(shapes) - {t.name for t in metadata.inputs})
    if unknown:
        names = ", ".join(t.name for t in metadata.inputs)
        raise ValueError(f"--shape names {', '.join(unknown)}: model '{metadata.name}' takes {names}")
    rng = np.random.default_rng(seed)
    request = pb.ModelInferRequest(model_name=metadata.name)
    arrays: dict[str, Array] = {}
    for tensor in metadata.inputs:
        shape = concrete_shape(tensor, rows, shapes.get(tensor.name))
        array = random_array(tensor.datatype, shape, rng)
        raw = _codec.to_raw(array, tensor.datatype)
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        request.raw_input_contents.append(raw)
        # Keep the wire form (what the server decodes), so the in-process model sees the same data.
        arrays[tensor.name] = _codec.from_raw(tensor.datatype, shape, raw, tensor.name)
    return Workload(
        model=metadata.name,
        batch=rows,
        request=request.SerializeToString(),
        inputs=arrays,
        outputs=metadata.outputs,
    )
