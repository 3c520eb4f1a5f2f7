"""The v2 REST inference call the HTTP load generator sends, and how its answer is read back.

The body is built once from the same ModelInferRequest the gRPC load sends, in Triton's binary tensor
extension: a JSON header (each input's `binary_data_size`, and `binary_data_output` so that every output
comes back as raw bytes too), then the inputs' raw bytes; `Inference-Header-Content-Length` says where
the JSON ends. A sampled answer is read back into a ModelInferResponse, so that the worker's one
Validator checks it exactly as it checks a gRPC answer.

Pure and I/O-free (no aiohttp, no server): the names below are the protocol's own, as Triton spells them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from torchwire.client._proto import grpc_service_pb2 as pb

HEADER_LENGTH: Final = "Inference-Header-Content-Length"
BINARY_SIZE: Final = "binary_data_size"
ALL_BINARY: Final = "binary_data_output"


@dataclass(frozen=True, slots=True)
class InferBody:
    """One POST: its path, its body and the length of the body's JSON header."""

    path: str
    data: bytes
    header_length: int

    def headers(self) -> dict[str, str]:
        return {HEADER_LENGTH: str(self.header_length), "Content-Type": "application/octet-stream"}


def infer_body(request: pb.ModelInferRequest) -> InferBody:
    """`request` (raw inputs, as workload.build makes it) as a binary-tensor v2 REST inference call."""
    if len(request.raw_input_contents) != len(request.inputs):
        raise ValueError("every input must be in raw_input_contents")
    inputs = [
        {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
            "parameters": {BINARY_SIZE: len(raw)},
        }
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True)
    ]
    header = json.dumps({"inputs": inputs, "parameters": {ALL_BINARY: True}}, separators=(",", ":")).encode()
    path = f"/v2/models/{quote(request.model_name, safe='')}"
    if request.model_version:
        path += f"/versions/{quote(request.model_version, safe='')}"
    return InferBody(path + "/infer", b"".join((header, *request.raw_input_contents)), len(header))


def infer_response(data: bytes, header_length: str | None) -> pb.ModelInferResponse:
    """An inference answer (JSON header, then binary outputs) as a ModelInferResponse with every output
    in raw_output_contents; ValueError says what is wrong with it."""
    length = len(data) if header_length is None else _length(header_length, len(data))
    try:
        header = json.loads(data[:length])
    except ValueError as exc:
        raise ValueError(f"the answer's JSON header does not parse: {exc}") from exc
    outputs = header.get("outputs") if isinstance(header, dict) else None
    if not isinstance(outputs, list):
        raise ValueError("the answer has no outputs array")
    response = pb.ModelInferResponse(
        model_name=str(header.get("model_name", "")), model_version=str(header.get("model_version", ""))
    )
    binary = memoryview(data)[length:]
    offset = 0
    for output in outputs:
        name, size = _binary_output(output)
        if offset + size > len(binary):
            raise ValueError(f"output '{name}' claims {size} bytes; {len(binary) - offset} are left")
        response.outputs.add(name=name, datatype=output["datatype"], shape=output["shape"])
        response.raw_output_contents.append(binary[offset : offset + size].tobytes())
        offset += size
    if offset != len(binary):
        raise ValueError(f"{len(binary) - offset} bytes follow the outputs' {BINARY_SIZE}s")
    return response


def _length(text: str, total: int) -> int:
    if not text.isdigit() or int(text) > total:
        raise ValueError(f"{HEADER_LENGTH} {text!r} is not a length within the {total}-byte answer")
    return int(text)


def _binary_output(output: Any) -> tuple[str, int]:
    """An output entry's name and binary size; ValueError if it is not a binary output."""
    if not isinstance(output, dict) or not isinstance(output.get("name"), str):
        raise ValueError(f"an output entry without a name: {output!r}")
    name = output["name"]
    size = (output.get("parameters") or {}).get(BINARY_SIZE)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"output '{name}' is not binary data (asked with {ALL_BINARY})")
    if not isinstance(output.get("datatype"), str) or not isinstance(output.get("shape"), list):
        raise ValueError(f"output '{name}' has no datatype or shape")
    return name, size
