"""v2 REST inference bodies <-> the protobuf messages the core works on.

A JSON request (with Triton's binary tensor extension: binary parts after the JSON header) becomes the
same ModelInferRequest a gRPC client would send, every input as raw bytes; the core's codec then applies
every rule about the model's inputs. The response goes the other way. Only what is particular to JSON
is checked here: the body's structure and that each tensor's `data` fits its own `datatype` and `shape`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from torchwire.client import _codec
from torchwire.client._proto import grpc_service_pb2 as pb

from ..core.errors import InvalidRequest, Unsupported
from .messages import json_parameters, parse_json

HEADER_LENGTH: Final = "Inference-Header-Content-Length"
BINARY_SIZE: Final = "binary_data_size"  # input/output parameter: this tensor's bytes follow the JSON
BINARY_OUTPUT: Final = "binary_data"  # requested-output parameter: answer this output in binary
ALL_BINARY: Final = "binary_data_output"  # request parameter: answer every output in binary

Array = npt.NDArray[Any]

# Which JSON values each datatype accepts, by numpy's kind of the array they make.
_INTEGER_KINDS: Final = frozenset("iu")
_ACCEPTED_KINDS: Final[dict[str, frozenset[str]]] = {
    "BOOL": frozenset("b"),
    **{name: _INTEGER_KINDS for name in ("UINT8", "UINT16", "UINT32", "UINT64")},
    **{name: _INTEGER_KINDS for name in ("INT8", "INT16", "INT32", "INT64")},
    **{name: frozenset("iuf") for name in ("FP16", "BF16", "FP32", "FP64")},
}


@dataclass(frozen=True, slots=True)
class InferBody:
    request: pb.ModelInferRequest
    binary_outputs: frozenset[str]  # outputs to answer as binary data
    all_binary: bool  # every output not named otherwise answers as binary data

    def binary(self, output: str) -> bool:
        """Whether this output answers as binary data after the JSON header."""
        return self.all_binary or output in self.binary_outputs


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InvalidRequest(f"{where}.{key} must be a JSON {_JSON_NAMES.get(names, names)}")
    return value


_JSON_NAMES: Final = {"str": "string", "list": "array", "dict": "object", "int": "integer"}


def _shape(tensor: Mapping[str, Any], where: str) -> list[int]:
    shape: list[int] = _field(tensor, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in shape):
        raise InvalidRequest(f"{where}.shape must be an array of non-negative integers, got {shape}")
    return shape


def json_to_raw(datatype: str, shape: Sequence[int], data: Any, name: str) -> bytes:
    """A tensor's JSON `data` (flat or nested, row-major) as its raw wire bytes: the one JSON decode."""
    if datatype == "BYTES":
        return _texts_to_raw(shape, data, name)
    kinds = _ACCEPTED_KINDS.get(datatype)
    if kinds is None:
        raise InvalidRequest(f"input '{name}': unknown datatype '{datatype}'")
    if not isinstance(data, list):
        raise InvalidRequest(f"input '{name}': data must be a JSON array")
    try:
        values = np.array(data)
    except ValueError as exc:  # ragged nesting
        raise InvalidRequest(f"input '{name}': data is not a regular array of numbers: {exc}") from exc
    _check_count(shape, values.size, name)
    if values.size and values.dtype.kind not in kinds:
        raise InvalidRequest(f"input '{name}': data holds {_kind_name(values)}, not {datatype} values")
    wire = _codec.DATATYPES[datatype].wire
    if (
        values.size
        and values.dtype.kind in _INTEGER_KINDS
        and datatype not in ("FP16", "BF16", "FP32", "FP64")
    ):
        info = np.iinfo(wire)
        low, high = int(values.min()), int(values.max())
        if low < info.min or high > info.max:
            raise InvalidRequest(
                f"input '{name}': value out of the {datatype} range [{info.min}, {info.max}]"
            )
    if datatype == "BF16":
        return _codec.to_raw(values.astype(np.float32), datatype)
    return np.ascontiguousarray(values, dtype=wire).tobytes()


def _kind_name(values: Array) -> str:
    return {"b": "booleans", "f": "floating-point numbers", "U": "strings", "O": "mixed values"}.get(
        values.dtype.kind, "integers"
    )


def parse_infer(body: bytes, header_length: str | None, model_name: str, model_version: str) -> InferBody:
    """An inference body (JSON, or JSON then binary tensors) as a ModelInferRequest."""
    if header_length is None:
        header_bytes, binary = body, memoryview(b"")
    else:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise InvalidRequest(
                f"{HEADER_LENGTH} {header_length!r} must be a length within the body's {len(body)} bytes"
            )
        view = memoryview(body)
        header_bytes, binary = view[:length].tobytes(), view[length:]
    header = parse_json(header_bytes)
    if not isinstance(header, dict):
        raise InvalidRequest("request body must be a JSON object")
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    if "id" in header:
        request.id = _field(header, "id", str, "request")
    parameters = header.get("parameters")
    all_binary = isinstance(parameters, dict) and parameters.pop(ALL_BINARY, False) is True
    json_parameters(parameters, "request", request.parameters)
    offset = 0
    for i, tensor in enumerate(_field(header, "inputs", list, "request")):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise InvalidRequest(f"{where} must be a JSON object")
        name = _field(tensor, "name", str, where)
        datatype = _field(tensor, "datatype", str, where)
        shape = _shape(tensor, where)
        params = tensor.get("parameters")
        size = params.pop(BINARY_SIZE, None) if isinstance(params, dict) else None
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        json_parameters(params, where, request.inputs[-1].parameters)
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary) - offset:
                raise InvalidRequest(
                    f"input '{name}': {BINARY_SIZE} {size!r} must be a size within the "
                    f"{len(binary) - offset} bytes of binary data left"
                )
            request.raw_input_contents.append(binary[offset : offset + size].tobytes())
            offset += size
        elif "data" in tensor:
            request.raw_input_contents.append(json_to_raw(datatype, shape, tensor["data"], name))
        else:
            raise InvalidRequest(f"input '{name}' has neither data nor parameters.{BINARY_SIZE}")
    if offset != len(binary):
        raise InvalidRequest(
            f"the body has {len(binary) - offset} bytes after the JSON header and the inputs' "
            f"{BINARY_SIZE}s; the header's length is given by {HEADER_LENGTH}"
        )
    binary_outputs: set[str] = set()
    json_outputs: set[str] = set()
    for i, output in enumerate(_field(header, "outputs", list, "request") if "outputs" in header else ()):
        where = f"outputs[{i}]"
        if not isinstance(output, dict):
            raise InvalidRequest(f"{where} must be a JSON object")
        name = _field(output, "name", str, where)
        params = output.get("parameters")
        wanted = params.pop(BINARY_OUTPUT, None) if isinstance(params, dict) else None
        if wanted is True:
            binary_outputs.add(name)
        elif wanted is False:
            json_outputs.add(name)
        request.outputs.add(name=name)
        json_parameters(params, where, request.outputs[-1].parameters)
    if all_binary:
        binary_outputs = {o.name for o in request.outputs} - json_outputs
    return InferBody(request, frozenset(binary_outputs), all_binary and not request.outputs)


def infer_response(response: pb.ModelInferResponse, body: InferBody) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    outputs: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if body.binary(tensor.name):
            entry["parameters"] = {BINARY_SIZE: len(raw)}
            parts.append(raw)
        else:
            entry["data"] = raw_to_json(tensor.datatype, tensor.shape, raw, tensor.name)
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        answer["id"] = response.id
    answer["outputs"] = outputs
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not parts:
        return header, None
    return b"".join((header, *parts)), len(header)


def _check_count(shape: Sequence[int], size: int, name: str) -> None:
    """The data's element count is the one the input's shape needs."""
    try:
        expected = _codec.element_count(shape, name)
    except _codec.CodecError as exc:
        raise InvalidRequest("input " + str(exc).removeprefix("tensor ")) from exc
    if size != expected:
        raise InvalidRequest(
            f"input '{name}': data has {size} elements, shape {list(shape)} needs {expected}"
        )


def _flat(data: Any) -> list[Any]:
    """A nested JSON array's leaves in row-major order."""
    if not isinstance(data, list):
        return [data]
    return [leaf for item in data for leaf in _flat(item)]


def _texts_to_raw(shape: Sequence[int], data: Any, name: str) -> bytes:
    """BYTES `data`: JSON strings (flat or nested), as the wire's length-prefixed elements."""
    if not isinstance(data, list):
        raise InvalidRequest(f"input '{name}': data must be a JSON array")
    items = _flat(data)
    _check_count(shape, len(items), name)
    if not all(isinstance(item, str) for item in items):
        raise InvalidRequest(f"input '{name}': BYTES data must be JSON strings")
    return _codec.serialize_bytes(np.array(items, dtype=np.object_))


def raw_to_json(datatype: str, shape: Sequence[int], raw: bytes, name: str) -> list[Any]:
    """A tensor's raw bytes as a flat, row-major JSON array (as Triton answers)."""
    if datatype == "BYTES":  # JSON carries text: elements as UTF-8 strings, as Triton answers
        try:
            count = _codec.element_count(shape, name)
            return [item.decode("utf-8") for item in _codec.deserialize_bytes(raw, count, name)]
        except UnicodeDecodeError as exc:
            raise Unsupported(f"output '{name}': an element is not UTF-8 text; ask for binary_data") from exc
    values = _codec.from_raw(datatype, shape, raw, name)
    if datatype == "BF16":
        values = _codec.bf16_to_float32(values)
    result: list[Any] = values.ravel().tolist()
    return result
