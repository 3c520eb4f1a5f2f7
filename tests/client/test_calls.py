"""The client's pure call layer, no channel: requests built, responses and stream answers decoded,
errors mapped, stream results put back in order."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from torchwire.client import InferenceError, _calls, _codec
from torchwire.client._proto import grpc_service_pb2 as pb


def test_a_request_carries_raw_little_endian_bytes_and_the_asked_outputs() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    request = _calls.build_infer_request("m", {"x": x}, version="2", outputs=["y"], request_id="r1")
    assert (request.model_name, request.model_version, request.id) == ("m", "2", "r1")
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [("x", "FP32", [2, 3])]
    assert request.raw_input_contents[0] == x.astype("<f4").tobytes()
    assert [o.name for o in request.outputs] == ["y"]


def test_a_response_decodes_raw_and_typed_outputs_by_name() -> None:
    response = pb.ModelInferResponse()
    response.outputs.add(name="raw", datatype="INT64", shape=[2])
    response.raw_output_contents.append(np.array([7, 8], "<i8").tobytes())
    decoded = _calls.decode_infer_response(response)
    assert decoded["raw"].tolist() == [7, 8]
    typed = pb.ModelInferResponse()
    typed.outputs.add(name="typed", datatype="INT32", shape=[1, 2]).contents.int_contents.extend([3, 4])
    assert _calls.decode_infer_response(typed)["typed"].tolist() == [[3, 4]]


def test_a_stream_error_keeps_its_status_and_request_id() -> None:
    answer = pb.ModelStreamInferResponse(error_message="model 'm' queue is full")
    answer.infer_response.id = "4"
    answer.infer_response.parameters["status_code"].string_param = "RESOURCE_EXHAUSTED"
    result = _calls.decode_stream_response(answer)
    assert (result.index, result.request_id, result.outputs) == (4, "4", None)
    assert result.error is not None
    assert result.error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(result.error) == "RESOURCE_EXHAUSTED: model 'm' queue is full"
    with pytest.raises(InferenceError, match="queue is full"):
        result.unwrap()


def test_a_stream_error_without_a_status_name_is_unknown() -> None:
    answer = pb.ModelStreamInferResponse(error_message="something")
    answer.infer_response.id = "not-a-number"
    result = _calls.decode_stream_response(answer)
    assert result.index == -1
    assert result.error is not None and result.error.code is grpc.StatusCode.UNKNOWN


def test_reorder_releases_results_in_input_order() -> None:
    reorder = _calls.Reorder()
    results = [_calls.StreamResult(i, str(i), {}, None) for i in range(4)]
    assert reorder.push(results[2]) == []
    assert reorder.push(results[1]) == []
    assert [r.index for r in reorder.push(results[0])] == [0, 1, 2]
    assert [r.index for r in reorder.push(results[3])] == [3]


def test_codec_errors_become_invalid_argument_with_the_cause_kept() -> None:
    with pytest.raises(InferenceError) as raised, _calls.mapped_errors("r9"):
        raise _codec.CodecError("tensor 'x': 3 bytes is not a whole number of FP32 elements")
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.request_id == "r9"
    assert isinstance(raised.value.__cause__, _codec.CodecError)


def test_targets_and_timeouts() -> None:
    assert _calls.channel_target("127.0.0.1:8001") == "127.0.0.1:8001"
    assert _calls.channel_target(["10.0.0.1:8001", "10.0.0.2:8001"]) == "ipv4:10.0.0.1:8001,10.0.0.2:8001"
    assert _calls.resolve_timeout(_calls.USE_CLIENT_DEFAULT, 5.0) == 5.0
    assert _calls.resolve_timeout(None, 5.0) is None
    assert _calls.auth_metadata("t") == (("authorization", "Bearer t"),)
    assert _calls.auth_metadata(None) is None
