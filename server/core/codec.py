"""Wire <-> model: checks a ModelInferRequest against the model's spec and builds the response.

The request's raw bytes become numpy views (no copy) via the shared client codec; every check names
the tensor and what was expected, as InvalidRequest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from torchwire.client import _codec
from torchwire.client._proto import grpc_service_pb2 as pb

from ..repository import ModelSpec, TensorSpec
from .errors import InvalidRequest, Unsupported
from .limits import Limits

Array = npt.NDArray[Any]
DEFAULT_LIMITS = Limits()
_SHARED_MEMORY_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True, slots=True)
class Decoded:
    inputs: list[Array]  # in the config's input order
    rows: int  # size of the batch dimension (1 for models without one)
    outputs: tuple[int, ...]  # indices of the requested outputs, in response order
    priority: int = 0  # 0: the model's default level
    timeout_s: float | None = None  # Triton's `timeout` parameter, queueing time allowed


def _integer_parameter(request: pb.ModelInferRequest, key: str) -> int | None:
    if key not in request.parameters:
        return None
    param = request.parameters[key]
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidRequest(
            f"parameter '{key}' must be an int64_param or uint64_param, got {kind or 'nothing'}"
        )
    value: int = getattr(param, kind)
    if value < 0:
        raise InvalidRequest(f"parameter '{key}' must be >= 0, got {value}")
    return value


def _scheduling(request: pb.ModelInferRequest) -> tuple[int, float | None]:
    sequence = request.parameters.get("sequence_id")
    if sequence is not None and (sequence.int64_param or sequence.uint64_param or sequence.string_param):
        raise Unsupported("parameter 'sequence_id': sequence batching is not supported")
    timeout_us = _integer_parameter(request, "timeout")
    return _integer_parameter(request, "priority") or 0, (timeout_us / 1e6 if timeout_us else None)


def _names(tensors: Sequence[TensorSpec]) -> str:
    return ", ".join(f"'{t.name}'" for t in tensors)


def _check_shape(spec: ModelSpec, t: TensorSpec, shape: tuple[int, ...]) -> int:
    """The request's row count for this input, after checking its shape against the config."""
    if spec.max_batch_size > 0:
        if not shape or not t.matches(shape[1:]):
            raise InvalidRequest(
                f"input '{t.name}': shape {list(shape)} does not match the config: "
                f"expected {spec.wire_shape(t)} (first dimension is the batch)"
            )
        rows = shape[0]
        if not 1 <= rows <= spec.max_batch_size:
            raise InvalidRequest(
                f"input '{t.name}': batch dimension {rows} must be within 1..{spec.max_batch_size} "
                f"(the model's max_batch_size)"
            )
        return rows
    if not t.matches(shape):
        raise InvalidRequest(
            f"input '{t.name}': shape {list(shape)} does not match the config: expected {spec.wire_shape(t)}"
        )
    return 1


def _requested_outputs(request: pb.ModelInferRequest, spec: ModelSpec) -> tuple[int, ...]:
    if not request.outputs:
        return spec.all_outputs
    indices: list[int] = []
    for wanted in request.outputs:
        index = spec.output_index.get(wanted.name)
        if index is None:
            raise InvalidRequest(
                f"requested output '{wanted.name}' is not an output of model '{spec.name}' "
                f"(outputs: {_names(spec.outputs)})"
            )
        indices.append(index)
    return tuple(indices)


def decode_request(
    request: pb.ModelInferRequest, spec: ModelSpec, limits: Limits = DEFAULT_LIMITS
) -> Decoded:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            f"each input needs exactly one, in the same order"
        )
    arrays: list[Array | None] = [None] * len(spec.inputs)
    rows: int | None = None
    for position, tensor in enumerate(request.inputs):
        index = spec.input_index.get(tensor.name)
        if index is None:
            raise InvalidRequest(
                f"unexpected input '{tensor.name}': model '{spec.name}' takes {_names(spec.inputs)}"
            )
        if arrays[index] is not None:
            raise InvalidRequest(f"input '{tensor.name}' appears more than once")
        if tensor.parameters and any(key in tensor.parameters for key in _SHARED_MEMORY_KEYS):
            raise Unsupported(f"input '{tensor.name}': shared memory inputs are not supported; send raw data")
        t = spec.inputs[index]
        if tensor.datatype != t.datatype:
            raise InvalidRequest(
                f"input '{t.name}': datatype {tensor.datatype or '(empty)'}, expected {t.datatype}"
            )
        shape = tuple(tensor.shape)
        these_rows = _check_shape(spec, t, shape)
        if spec.max_batch_size > 0:
            limits.check_rows(t.name, these_rows)
        if t.row_elements is not None:
            limits.check_elements(t.name, these_rows * t.row_elements)
        elif all(d >= 0 for d in shape):
            limits.check_elements(t.name, math.prod(shape))
        if rows is not None and these_rows != rows:
            raise InvalidRequest(
                f"input '{t.name}': batch dimension {these_rows} differs from the other inputs' {rows}"
            )
        rows = these_rows
        try:
            if raw:
                if tensor.HasField("contents"):
                    raise InvalidRequest(
                        f"input '{t.name}': has typed contents while the request uses raw_input_contents; "
                        f"use one or the other for all inputs"
                    )
                arrays[index] = _codec.from_raw(t.datatype, shape, raw[position], t.name)
            else:
                arrays[index] = _codec.from_contents(t.datatype, shape, tensor.contents, t.name)
        except _codec.CodecError as exc:
            raise InvalidRequest("input " + str(exc).removeprefix("tensor ")) from exc
    if len(request.inputs) != len(spec.inputs):  # no duplicates or strangers got here: some are missing
        missing = [t for t, a in zip(spec.inputs, arrays, strict=True) if a is None]
        raise InvalidRequest(f"missing input(s) {_names(missing)} for model '{spec.name}'")
    priority, timeout_s = _scheduling(request) if request.parameters else (0, None)
    return Decoded(
        arrays,  # type: ignore[arg-type]  # every slot is filled: checked just above
        rows or 1,
        _requested_outputs(request, spec),
        priority,
        timeout_s,
    )


def encode_response(
    request: pb.ModelInferRequest,
    spec: ModelSpec,
    version: int,
    outputs: list[Array],
    selected: tuple[int, ...],
    limits: Limits = DEFAULT_LIMITS,
) -> pb.ModelInferResponse:
    size = sum(outputs[index].nbytes for index in selected)
    limits.check_response(size)
    response = pb.ModelInferResponse(model_name=spec.name, model_version=str(version), id=request.id)
    for index in selected:
        t = spec.outputs[index]
        array = outputs[index]
        response.outputs.add(name=t.name, datatype=t.datatype, shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response
