"""The request codec against golden messages (protobuf JSON, as a client would send them), no server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.server.core.codec import decode_request, encode_response
from torchwire.server.core.errors import InvalidRequest, LimitExceeded, Unsupported
from torchwire.server.core.limits import Limits
from torchwire.server.repository import ModelSpec, build_spec, read_config

SIMPLE = Path(__file__).resolve().parents[2] / "models" / "simple"
# np.arange(16, dtype="<i4") and np.ones(16, dtype="<i4"), base64 as protobuf JSON writes bytes.
ARANGE = "AAAAAAEAAAACAAAAAwAAAAQAAAAFAAAABgAAAAcAAAAIAAAACQAAAAoAAAALAAAADAAAAA0AAAAOAAAADwAAAA=="
ONES = "AQAAAAEAAAABAAAAAQAAAAEAAAABAAAAAQAAAAEAAAABAAAAAQAAAAEAAAABAAAAAQAAAAEAAAABAAAAAQAAAA=="
SUM = "AQAAAAIAAAADAAAABAAAAAUAAAAGAAAABwAAAAgAAAAJAAAACgAAAAsAAAAMAAAADQAAAA4AAAAPAAAAEAAAAA=="

RAW_REQUEST = f"""{{
  "modelName": "simple", "id": "golden-1",
  "inputs": [
    {{"name": "INPUT1", "datatype": "INT32", "shape": ["1", "16"]}},
    {{"name": "INPUT0", "datatype": "INT32", "shape": ["1", "16"]}}
  ],
  "outputs": [{{"name": "OUTPUT1"}}, {{"name": "OUTPUT0"}}],
  "parameters": {{"priority": {{"int64Param": "2"}}, "timeout": {{"uint64Param": "1500"}}}},
  "rawInputContents": ["{ONES}", "{ARANGE}"]
}}"""

TYPED_REQUEST = """{
  "modelName": "simple",
  "inputs": [
    {"name": "INPUT0", "datatype": "INT32", "shape": ["2", "16"],
     "contents": {"intContents": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,
                                  0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}},
    {"name": "INPUT1", "datatype": "INT32", "shape": ["2", "16"],
     "contents": {"intContents": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}}
  ]
}"""

GOLDEN_RESPONSE = f"""{{
  "modelName": "simple", "modelVersion": "1", "id": "golden-1",
  "outputs": [
    {{"name": "OUTPUT1", "datatype": "INT32", "shape": ["1", "16"]}},
    {{"name": "OUTPUT0", "datatype": "INT32", "shape": ["1", "16"]}}
  ],
  "rawOutputContents": ["{ARANGE}", "{SUM}"]
}}"""


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return build_spec(SIMPLE, read_config(SIMPLE))


def message(text: str) -> pb.ModelInferRequest:
    return json_format.Parse(text, pb.ModelInferRequest())


def test_a_raw_request_decodes_to_views_in_config_order_with_its_scheduling(spec: ModelSpec) -> None:
    decoded = decode_request(message(RAW_REQUEST), spec)
    assert [a.tolist() for a in decoded.inputs] == [[list(range(16))], [[1] * 16]]
    assert [a.dtype for a in decoded.inputs] == [np.dtype("<i4")] * 2
    assert decoded.rows == 1
    assert decoded.outputs == (1, 0)  # OUTPUT1 first, as asked
    assert (decoded.priority, decoded.timeout_s) == (2, 0.0015)
    assert not decoded.inputs[0].flags.owndata  # a view of the request's bytes, not a copy


def test_typed_contents_decode_like_raw_bytes(spec: ModelSpec) -> None:
    decoded = decode_request(message(TYPED_REQUEST), spec)
    assert decoded.rows == 2
    assert decoded.inputs[0].tolist() == [list(range(16))] * 2
    assert decoded.inputs[1].tolist() == [[1] * 16] * 2
    assert decoded.outputs == (0, 1)  # none asked: all, in config order
    assert (decoded.priority, decoded.timeout_s) == (0, None)


def test_the_response_is_the_golden_message(spec: ModelSpec) -> None:
    request = message(RAW_REQUEST)
    decoded = decode_request(request, spec)
    outputs = [decoded.inputs[0] + decoded.inputs[1], decoded.inputs[0]]  # OUTPUT0: the sum; OUTPUT1: INPUT0
    response = encode_response(request, spec, 1, outputs, decoded.outputs)
    assert response == json_format.Parse(GOLDEN_RESPONSE, pb.ModelInferResponse())


@pytest.mark.parametrize(
    ("change", "error", "text"),
    [
        (
            lambda r: r.inputs[0].ClearField("datatype"),
            InvalidRequest,
            "input 'INPUT1': datatype (empty), expected INT32",
        ),
        (
            lambda r: (r.inputs.pop(), r.raw_input_contents.pop()),
            InvalidRequest,
            "missing input(s) 'INPUT0' for model 'simple'",
        ),
        (
            lambda r: r.raw_input_contents.pop(),
            InvalidRequest,
            "raw_input_contents has 1 entries for 2 inputs; each input needs exactly one, in the same order",
        ),
        (
            lambda r: r.outputs.add(name="OUTPUT9"),
            InvalidRequest,
            "requested output 'OUTPUT9' is not an output of model 'simple' (outputs: 'OUTPUT0', 'OUTPUT1')",
        ),
        (
            lambda r: r.inputs[0].shape.__setitem__(0, 9),
            InvalidRequest,
            "input 'INPUT1': batch dimension 9 must be within 1..8 (the model's max_batch_size)",
        ),
        (
            lambda r: r.parameters["sequence_id"].__setattr__("int64_param", 4),
            Unsupported,
            "parameter 'sequence_id': sequence batching is not supported",
        ),
        (
            lambda r: r.parameters["priority"].__setattr__("string_param", "high"),
            InvalidRequest,
            "parameter 'priority' must be an int64_param or uint64_param, got string_param",
        ),
    ],
)
def test_bad_requests_name_what_is_wrong(spec: ModelSpec, change: object, error: type, text: str) -> None:
    request = message(RAW_REQUEST)
    change(request)  # type: ignore[operator]
    with pytest.raises(error) as raised:
        decode_request(request, spec)
    assert str(raised.value) == text


def test_limits_name_the_setting_that_sets_them(spec: ModelSpec) -> None:
    with pytest.raises(InvalidRequest) as rows:
        decode_request(message(TYPED_REQUEST), spec, Limits(max_request_rows=1))
    assert str(rows.value) == (
        "input 'INPUT0' has 2 rows, over the limit of 1 set by "
        "--max-request-rows (TORCHWIRE_MAX_REQUEST_ROWS)"
    )
    request = message(RAW_REQUEST)
    decoded = decode_request(request, spec)
    with pytest.raises(LimitExceeded, match=r"the response would be 128 bytes, over the limit of 100 set by"):
        encode_response(request, spec, 1, decoded.inputs, decoded.outputs, Limits(max_message_bytes=100))
