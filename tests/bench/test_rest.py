"""The HTTP load's body and answer checks, without a server: the body is what the server's own parser
reads back into the gRPC request, and the worker's Validator reads the server's binary answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from torchwire.bench import rest, workload
from torchwire.bench.worker import Validator
from torchwire.client._calls import ModelMetadata, TensorMetadata
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.server.http import tensors

SIMPLE = ModelMetadata(
    "simple",
    ("1",),
    "pytorch_libtorch",
    (TensorMetadata("INPUT0", "INT32", (-1, 16)), TensorMetadata("INPUT1", "FP32", (-1, 16))),
    (TensorMetadata("OUTPUT0", "INT32", (-1, 16)), TensorMetadata("OUTPUT1", "FP32", (-1, 16))),
)


def test_body_is_the_grpc_request_in_binary_tensors() -> None:
    load = workload.build(SIMPLE, 8, 3)
    body = load.http_body()
    assert body.path == "/v2/models/simple/infer"
    header = json.loads(body.data[: body.header_length])
    assert header["parameters"] == {"binary_data_output": True}
    assert [(t["name"], t["datatype"], t["shape"]) for t in header["inputs"]] == [
        ("INPUT0", "INT32", [3, 16]),
        ("INPUT1", "FP32", [3, 16]),
    ]
    assert [t["parameters"]["binary_data_size"] for t in header["inputs"]] == [3 * 16 * 4] * 2
    assert body.headers()["Inference-Header-Content-Length"] == str(body.header_length)
    # The server's own parser reads it back as the very request the gRPC load sends, answers all binary.
    parsed = tensors.parse_infer(body.data, str(body.header_length), "simple", "")
    assert parsed.request == pb.ModelInferRequest.FromString(load.request)
    assert parsed.binary("OUTPUT0") and parsed.binary("OUTPUT1")


def test_body_names_the_version_and_quotes_the_model() -> None:
    request = pb.ModelInferRequest(model_name="a b/c", model_version="2")
    assert rest.infer_body(request).path == "/v2/models/a%20b%2Fc/versions/2/infer"
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    with pytest.raises(ValueError, match="raw_input_contents"):
        rest.infer_body(request)  # an input given as contents, not raw bytes


def _answer(rows: int, columns: int = 16) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="simple", model_version="1")
    for name, datatype, dtype in (("OUTPUT0", "INT32", np.int32), ("OUTPUT1", "FP32", np.float32)):
        response.outputs.add(name=name, datatype=datatype, shape=[rows, columns])
        response.raw_output_contents.append(np.zeros((rows, columns), dtype).tobytes())
    return response


def _encoded(response: pb.ModelInferResponse) -> tuple[bytes, str | None]:
    """The answer as the server writes it for a body asking binary_data_output."""
    asked = tensors.InferBody(pb.ModelInferRequest(), frozenset(), all_binary=True)
    data, length = tensors.infer_response(response, asked)
    return data, None if length is None else str(length)


def test_validator_reads_the_servers_binary_answer() -> None:
    validator = Validator(workload.build(SIMPLE, 8, 3).expected_outputs())
    data, length = _encoded(_answer(3))
    assert length is not None
    assert validator.problem_in_answer(data, length) is None
    read = rest.infer_response(data, length)
    assert read == _answer(3)

    # Answers that must fail validation, each with a message saying why.
    assert "shape [2, 16], expected [3, 16]" in str(validator.problem_in_answer(*_encoded(_answer(2))))
    assert "claims 192 bytes; 188 are left" in str(validator.problem_in_answer(data[:-4], length))
    assert "follow" in str(validator.problem_in_answer(data + b"\0" * 4, length))
    assert "is not a length" in str(validator.problem_in_answer(data, str(len(data) + 1)))
    assert "does not parse" in str(validator.problem_in_answer(b"{not json", None))
    in_json = tensors.InferBody(pb.ModelInferRequest(), frozenset(), all_binary=False)
    as_json, _ = tensors.infer_response(_answer(3), in_json)
    assert "not binary data" in str(validator.problem_in_answer(as_json, None))
    # A wrong byte count for the declared shape: the codec's own check, as for gRPC.
    short = _answer(3)
    short.raw_output_contents[0] = short.raw_output_contents[0][:-4]
    assert "OUTPUT0" in str(validator.problem_in_answer(*_encoded(short)))
