"""Responses as a client parses them, field for field: unary answers, and stream answers with
Triton's final-response flag."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from support.requests import simple_request
from support.serving import RunningServer
from torchwire.client._proto import grpc_service_pb2 as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def _raw_call(server: RunningServer, request: pb.ModelInferRequest) -> bytes:
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary(INFER, request_serializer=pb.ModelInferRequest.SerializeToString)
        answer: bytes = call(request, timeout=30)
        return answer


def _expected(request: pb.ModelInferRequest, outputs: dict[str, np.ndarray]) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype="INT32", shape=array.shape)
        response.raw_output_contents.append(array.astype("<i4").tobytes())
    return response


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("request_id", ["", "req-é-42"])
def test_unary_response_is_exactly_the_expected_message(
    bundled: RunningServer, rows: int, request_id: str
) -> None:
    a = np.arange(16 * rows, dtype="<i4").reshape(rows, 16)
    b = np.full((rows, 16), 3, dtype="<i4")
    request = pb.ModelInferRequest(model_name="simple", id=request_id)
    for name, array in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="INT32", shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    answer = pb.ModelInferResponse.FromString(_raw_call(bundled, request))
    assert answer == _expected(request, {"OUTPUT0": a + b, "OUTPUT1": a - b})
    request.outputs.add(name="OUTPUT1")
    answer = pb.ModelInferResponse.FromString(_raw_call(bundled, request))
    assert answer == _expected(request, {"OUTPUT1": a - b})


def _stream(server: RunningServer, requests: list[pb.ModelInferRequest]) -> list[pb.ModelStreamInferResponse]:
    with grpc.insecure_channel(server.target) as channel:
        call = channel.stream_stream(
            STREAM,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        return list(call(iter(requests), timeout=30))


def test_stream_answers_carry_the_final_response_flag_when_asked(bundled: RunningServer) -> None:
    plain = simple_request()
    plain.id = "plain"
    flagged = simple_request()
    flagged.id = "flagged"
    flagged.parameters["triton_enable_empty_final_response"].bool_param = True
    failing = simple_request()
    failing.id = "failing"
    failing.parameters["triton_enable_empty_final_response"].bool_param = True
    failing.inputs[0].datatype = "FP32"
    answers = {a.infer_response.id: a for a in _stream(bundled, [plain, flagged, failing])}
    assert set(answers) == {"plain", "flagged", "failing"}
    a = np.arange(16, dtype="<i4").reshape(1, 16)
    expected = _expected(plain, {"OUTPUT0": a + a, "OUTPUT1": a - a})
    assert answers["plain"] == pb.ModelStreamInferResponse(infer_response=expected)
    expected.id = "flagged"
    expected.parameters["triton_final_response"].bool_param = True
    assert answers["flagged"] == pb.ModelStreamInferResponse(infer_response=expected)
    failed = answers["failing"]
    assert "input 'INPUT0': datatype FP32, expected INT32" in failed.error_message
    assert failed.infer_response.parameters["status_code"].string_param == "INVALID_ARGUMENT"
    assert failed.infer_response.parameters["triton_final_response"].bool_param is True
