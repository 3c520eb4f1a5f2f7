"""The v2 REST API on --http-port, through a real server: plain HTTP requests (as curl sends them) and
unmodified tritonclient.http, checked against what the same server answers over gRPC."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from support.certs import Certs, make_certs
from support.modelgen import Spinner, spinner_config, write_model
from support.serving import RunningServer, running_server, wait_until
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc
from torchwire.models import REPOSITORY

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)
HEADER_LENGTH = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server(REPOSITORY, http_port=-1, torch_threads=1) as running:
        yield running


@pytest.fixture(scope="module")
def triton(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=server.http_target, network_timeout=60.0)
    try:
        yield client
    finally:
        client.close()


def call(
    target: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request as curl would send it: (status, headers, body), error statuses included."""
    scheme = "https" if context is not None else "http"
    request = urllib.request.Request(
        f"{scheme}://{target}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def error_of(answer: tuple[int, dict[str, str], bytes]) -> str:
    """The message of a v2 REST error body, checking that the body is exactly {"error": "..."}."""
    body = json.loads(answer[2])
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    message: str = body["error"]
    return message


def simple_body(a: Any = None, b: Any = None, **extra: Any) -> bytes:
    inputs = [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": A.tolist() if a is None else a},
        {
            "name": "INPUT1",
            "shape": [1, 16],
            "datatype": "INT32",
            "data": B.ravel().tolist() if b is None else b,
        },
    ]
    return json.dumps({"inputs": inputs, **extra}).encode()


def _nested(depth: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(depth):
        value = [value]
    return value


def grpc_stub(server: RunningServer) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(server.target)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


# --- curl-style ---------------------------------------------------------------------------------


def test_health_and_metadata_as_curl_sees_them(server: RunningServer) -> None:
    target = server.http_target
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/simple/ready",
        "/v2/models/simple/versions/1/ready",
    ):
        status, _, body = call(target, "GET", path)
        assert (status, json.loads(body)) == (200, {"live" if "live" in path else "ready": True}), path
    for path in ("/v2/models/nope/ready", "/v2/models/simple/versions/7/ready"):
        status, _, body = call(target, "GET", path)
        assert (status, json.loads(body)) == (400, {"ready": False}), path
    status, headers, body = call(target, "GET", "/v2")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    metadata = json.loads(body)
    assert metadata["name"] == "torchwire"
    assert {"binary_tensor_data", "model_repository", "statistics", "model_configuration"} <= set(
        metadata["extensions"]
    )
    status, _, body = call(target, "GET", "/v2/models/simple/versions/1")
    assert status == 200
    assert json.loads(body) == {
        "name": "simple",
        "versions": ["1"],
        "platform": "pytorch_libtorch",
        "inputs": [{"name": f"INPUT{i}", "datatype": "INT32", "shape": [-1, 16]} for i in range(2)],
        "outputs": [{"name": f"OUTPUT{i}", "datatype": "INT32", "shape": [-1, 16]} for i in range(2)],
    }


def test_json_infer_with_curl(server: RunningServer) -> None:
    status, headers, body = call(server.http_target, "POST", "/v2/models/simple/infer", simple_body(id="r-1"))
    assert status == 200 and HEADER_LENGTH not in headers
    answer = json.loads(body)
    assert answer["model_name"] == "simple" and answer["model_version"] == "1" and answer["id"] == "r-1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["OUTPUT0"] == {
        "name": "OUTPUT0",
        "datatype": "INT32",
        "shape": [1, 16],
        "data": (A + B).ravel().tolist(),
    }
    assert outputs["OUTPUT1"]["data"] == (A - B).ravel().tolist()


def test_binary_request_and_response_bodies_by_hand(server: RunningServer) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1, 16],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": 64},
                },
                {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": B.ravel().tolist()},
            ],
            "outputs": [{"name": "OUTPUT1", "parameters": {"binary_data": True}}, {"name": "OUTPUT0"}],
        }
    ).encode()
    status, headers, body = call(
        server.http_target,
        "POST",
        "/v2/models/simple/infer",
        header + A.astype("<i4").tobytes(),
        {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200, body
    length = int(headers[HEADER_LENGTH])
    answer = json.loads(body[:length])
    first, second = answer["outputs"]
    assert (
        first["name"] == "OUTPUT1" and first["parameters"] == {"binary_data_size": 64} and "data" not in first
    )
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<i4").reshape(1, 16), A - B)
    assert second["name"] == "OUTPUT0" and second["data"] == (A + B).ravel().tolist()


def test_errors_are_json_with_the_right_status_and_the_server_keeps_serving(server: RunningServer) -> None:
    target = server.http_target
    infer = "/v2/models/simple/infer"
    cases: list[tuple[str, str, bytes | None, dict[str, str], int, str]] = [
        ("POST", infer, b"{not json", {}, 400, "not valid JSON"),
        ("POST", infer, b"[1, 2]", {}, 400, "must be a JSON object"),
        ("POST", infer, b'{"inputs": 3}', {}, 400, "request.inputs must be a JSON array"),
        ("POST", infer, simple_body(a=[1, 2, 3]), {}, 400, "data has 3 elements, shape [1, 16] needs 16"),
        ("POST", infer, simple_body(a=["x"] * 16), {}, 400, "data holds strings, not INT32 values"),
        ("POST", infer, simple_body(a=[2**40] * 16), {}, 400, "out of the INT32 range"),
        ("POST", infer, simple_body(a=[[1, 2], [3]]), {}, 400, "not a regular array"),
        ("POST", "/v2/models/nope/infer", simple_body(), {}, 404, "'nope'"),
        ("POST", "/v2/models/simple/versions/9/infer", simple_body(), {}, 404, "no version '9'"),
        (
            "POST",
            infer,
            simple_body(b=None).replace(b"INPUT1", b"INPUTX"),
            {},
            400,
            "unexpected input 'INPUTX'",
        ),
        ("POST", infer, simple_body(parameters={"sequence_id": 5}), {}, 501, "sequence batching"),
        ("POST", infer, simple_body(), {HEADER_LENGTH: "99999"}, 400, HEADER_LENGTH),
        (
            "POST",
            infer,
            simple_body() + b"tail",
            {HEADER_LENGTH: str(len(simple_body()))},
            400,
            "4 bytes after",
        ),
        ("POST", infer, b"[" * 100_000 + b"]" * 100_000, {}, 400, "RecursionError"),
        ("POST", infer, simple_body(a=_nested(900)), {}, 400, "not a regular array"),
        ("POST", infer, simple_body(outputs=5), {}, 400, "request.outputs must be a JSON array"),
        ("POST", infer, simple_body(outputs=[{"name": "NOPE"}]), {}, 400, "requested output 'NOPE'"),
        ("POST", infer, simple_body(parameters={"priority": [1]}), {}, 400, "parameters.priority must be"),
        ("GET", infer, None, {}, 405, "Method Not Allowed"),
        ("GET", "/v2/models/simple/nothing", None, {}, 404, "Not Found"),
        ("GET", "/v2/models/nope/config", None, {}, 404, "'nope'"),
        ("POST", "/v2/repository/models/simple/unload", None, {}, 400, "explicit"),
    ]
    for method, path, body, headers, status, fragment in cases:
        answer = call(target, method, path, body, headers)
        assert answer[0] == status, (path, body, answer)
        assert fragment in error_of(answer), (path, body, answer)
    wrong_shape = simple_body(extra=None).replace(b"[1, 16]", b"[1, 4, 4]", 1)
    answer = call(target, "POST", infer, wrong_shape)
    assert answer[0] == 400 and "shape [1, 4, 4] does not match the config" in error_of(answer)
    # The server is unharmed: it still answers correctly.
    status, _, body = call(target, "POST", infer, simple_body())
    assert status == 200 and json.loads(body)["outputs"][0]["data"] == (A + B).ravel().tolist()


def test_oversized_body_gets_413_naming_the_setting() -> None:
    with running_server(REPOSITORY, http_port=-1, torch_threads=1, max_message_bytes=4096) as small:
        big = simple_body(a=list(range(16))) + b" " * 5000
        answer = call(small.http_target, "POST", "/v2/models/simple/infer", big)
        assert answer[0] == 413
        assert "over the limit of 4096 set by --max-message-bytes" in error_of(answer)
        assert call(small.http_target, "POST", "/v2/models/simple/infer", simple_body())[0] == 200


def test_http_and_grpc_share_statistics(server: RunningServer) -> None:
    channel, stub = grpc_stub(server)
    with channel:
        before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp"), timeout=30).model_stats[0]
        body = json.dumps(
            {"inputs": [{"name": "INPUT__0", "shape": [2, 64], "datatype": "FP32", "data": [0.5] * 128}]}
        ).encode()
        for _ in range(3):
            assert call(server.http_target, "POST", "/v2/models/mlp/infer", body)[0] == 200
        status, _, text = call(server.http_target, "GET", "/v2/models/mlp/versions/1/stats")
        over_grpc = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp"), timeout=30).model_stats[0]
    assert status == 200
    (over_http,) = json.loads(text)["model_stats"]
    assert over_http["inference_count"] == over_grpc.inference_count == before.inference_count + 6
    assert over_http["inference_stats"]["success"]["count"] == over_grpc.inference_stats.success.count
    assert over_http["inference_stats"]["success"]["count"] == before.inference_stats.success.count + 3
    assert isinstance(over_http["inference_stats"]["success"]["ns"], int)


# --- tritonclient.http ----------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_http_infers_with_json_and_binary_data(
    triton: httpclient.InferenceServerClient, binary: bool
) -> None:
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "INT32"),
        httpclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(A, binary_data=binary)
    inputs[1].set_data_from_numpy(B, binary_data=not binary)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=not binary),
    ]
    result = triton.infer("simple", inputs, outputs=outputs, request_id="7", model_version="1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    assert result.get_response()["id"] == "7"
    everything = triton.infer("simple", inputs)  # no outputs named: all of them, in binary
    np.testing.assert_array_equal(everything.as_numpy("OUTPUT1"), A - B)
    gzipped = triton.infer("simple", inputs, request_compression_algorithm="gzip")
    np.testing.assert_array_equal(gzipped.as_numpy("OUTPUT0"), A + B)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_http_strings_in_json_and_binary(
    server: RunningServer, triton: httpclient.InferenceServerClient, binary: bool
) -> None:
    texts = np.array([["hello world"], ["h\u00e9llo"]], dtype=np.object_)
    given = httpclient.InferInput("TEXT", [2, 1], "BYTES")
    given.set_data_from_numpy(texts, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("LENGTH", "UPPER")]
    result = triton.infer("text", [given], outputs=wanted)
    assert result.as_numpy("LENGTH").tolist() == [[11], [6]]
    upper = ["HELLO WORLD", "H\u00e9LLO"]  # binary data reads back as bytes, JSON as the strings it sent
    assert result.as_numpy("UPPER").tolist() == [[t.encode() if binary else t] for t in upper]
    body = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [5]}]}
    answer = call(server.http_target, "POST", "/v2/models/text/infer", json.dumps(body).encode())
    assert answer[0] == 400
    assert error_of(answer) == "input 'TEXT': BYTES data must be JSON strings"


def test_tritonclient_http_aio_client(server: RunningServer) -> None:
    async def run() -> Any:
        client = aioclient.InferenceServerClient(server.http_target)
        try:
            assert await client.is_server_ready()
            given = [
                aioclient.InferInput("INPUT0", [1, 16], "INT32"),
                aioclient.InferInput("INPUT1", [1, 16], "INT32"),
            ]
            given[0].set_data_from_numpy(A)
            given[1].set_data_from_numpy(B, binary_data=False)
            return (await client.infer("simple", given)).as_numpy("OUTPUT1")
        finally:
            await client.close()

    np.testing.assert_array_equal(asyncio.run(run()), A - B)


def test_tritonclient_http_fp32_model_matches_grpc(
    server: RunningServer, triton: httpclient.InferenceServerClient
) -> None:
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    answers = []
    for binary in (False, True):
        given = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
        given.set_data_from_numpy(x, binary_data=binary)
        answers.append(triton.infer("mlp", [given]).as_numpy("OUTPUT__0"))
    grpc_client = grpcclient.InferenceServerClient(server.target)
    try:
        given_grpc = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
        given_grpc.set_data_from_numpy(x)
        expected = grpc_client.infer("mlp", [given_grpc]).as_numpy("OUTPUT__0")
    finally:
        grpc_client.close()
    np.testing.assert_array_equal(answers[1], expected)  # binary: the same bytes
    np.testing.assert_allclose(answers[0], expected, rtol=1e-6)  # JSON: through decimal text


def test_tritonclient_http_metadata_config_statistics_and_index(
    server: RunningServer, triton: httpclient.InferenceServerClient
) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("digits") and not triton.is_model_ready("nope")
    assert triton.get_model_metadata("cnn")["inputs"][0]["name"] == "INPUT__0"
    channel, stub = grpc_stub(server)
    with channel:
        config = stub.ModelConfig(pb.ModelConfigRequest(name="digits"), timeout=30).config
        bundled = sorted(m.name for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30).models)
    assert {"cnn", "digits", "mlp", "simple"} <= set(bundled)
    assert triton.get_model_config("digits") == json_format.MessageToDict(
        config, preserving_proto_field_name=True
    )
    stats = triton.get_inference_statistics()["model_stats"]
    assert sorted(s["name"] for s in stats) == bundled
    index = triton.get_model_repository_index()
    assert sorted((m["name"], m["version"], m["state"]) for m in index) == [
        (name, "1", "READY") for name in bundled
    ]
    with pytest.raises(InferenceServerException, match="'nope'"):
        triton.get_model_metadata("nope")


def test_tritonclient_http_loads_and_unloads_in_explicit_mode() -> None:
    with running_server(
        REPOSITORY, http_port=-1, torch_threads=1, model_control_mode="explicit", load_model=("simple",)
    ) as server:
        client = httpclient.InferenceServerClient(url=server.http_target, network_timeout=120.0)
        try:
            assert client.is_model_ready("simple") and not client.is_model_ready("mlp")
            client.load_model("mlp")
            assert client.is_model_ready("mlp")
            client.unload_model("simple")
            assert not client.is_model_ready("simple")
            ready = {(m["name"], m["state"]) for m in client.get_model_repository_index()}
            assert ("mlp", "READY") in ready and ("simple", "READY") not in ready
            answer = call(server.http_target, "POST", "/v2/repository/index", b'{"ready": true}')
            assert [m["name"] for m in json.loads(answer[2])] == ["mlp"]
            with pytest.raises(InferenceServerException, match="'nope'"):
                client.load_model("nope")
        finally:
            client.close()


# --- the same security and lifecycle as gRPC --------------------------------------------------------


def test_the_grpc_token_guards_http_too_but_not_its_health(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    with running_server(REPOSITORY, http_port=-1, torch_threads=1, auth_token_file=tokens) as server:
        target = server.http_target
        assert call(target, "GET", "/v2/health/ready")[0] == 200  # Kubernetes probes carry no token
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            answer = call(target, "GET", "/v2/models/simple", headers=headers)
            assert answer[0] == 401 and "bearer token" in error_of(answer)
            assert answer[1]["WWW-Authenticate"] == "Bearer"
            assert call(target, "POST", "/v2/models/simple/infer", simple_body(), headers)[0] == 401
        good = {"Authorization": "Bearer s3cret"}
        assert call(target, "POST", "/v2/models/simple/infer", simple_body(), good)[0] == 200
        client = httpclient.InferenceServerClient(url=target)
        try:
            assert client.get_model_metadata("simple", headers=good)["name"] == "simple"
            with pytest.raises(InferenceServerException, match="bearer token"):
                client.get_model_metadata("simple")
        finally:
            client.close()
    with running_server(
        REPOSITORY, http_port=-1, torch_threads=1, auth_token_file=tokens, auth_health=True
    ) as guarded:
        assert call(guarded.http_target, "GET", "/v2/health/ready")[0] == 401


def test_tls_applies_to_http_too(tmp_path: Path) -> None:
    certs: Certs = make_certs(tmp_path)
    with running_server(
        REPOSITORY, http_port=-1, torch_threads=1, tls_cert=certs.server_cert, tls_key=certs.server_key
    ) as server:
        context = ssl.create_default_context(cafile=str(certs.ca))
        status, _, body = call(
            server.http_target, "POST", "/v2/models/simple/infer", simple_body(), context=context
        )
        assert status == 200 and json.loads(body)["outputs"][0]["data"] == (A + B).ravel().tolist()
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            call(server.http_target, "GET", "/v2/health/live")  # plaintext is refused


def test_readiness_turns_false_while_draining() -> None:
    with running_server(REPOSITORY, http_port=-1, torch_threads=1, drain_delay_s=3.0) as server:
        target = server.http_target
        assert call(target, "GET", "/v2/health/ready")[0] == 200
        stopping = asyncio.run_coroutine_threadsafe(server.app.stop(), server.loop)
        wait_until(lambda: call(target, "GET", "/v2/health/ready")[0] == 400, "HTTP readiness says not ready")
        assert call(target, "GET", "/v2/health/live")[0] == 200  # still listening through the drain delay
        stopping.result(timeout=120)


def test_once_closed_http_calls_are_refused_with_503_as_grpc_ones(server: RunningServer) -> None:
    # The stop closes the one Admission both ports share; here it is closed by hand, so that the
    # refusals can be read at leisure (the stop itself keeps the window open for 0.2-2 s).
    admission = server.app.admission
    refused = admission.refused
    admission.close()
    try:
        answer = call(server.http_target, "POST", "/v2/models/simple/infer", simple_body())
        assert answer[0] == 503 and "the server is shutting down" in error_of(answer)
        assert call(server.http_target, "GET", "/v2/models/simple")[0] == 503
        assert call(server.http_target, "GET", "/v2/health/live")[0] == 200  # probes still answered
        channel, stub = grpc_stub(server)
        with channel, pytest.raises(grpc.RpcError) as caught:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="simple"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert admission.refused == refused + 3
    finally:
        admission.closed = False  # the module's server serves the tests after this one
    assert call(server.http_target, "POST", "/v2/models/simple/infer", simple_body())[0] == 200


def test_max_concurrent_rpcs_counts_grpc_and_http_calls_together(tmp_path: Path) -> None:
    write_model(tmp_path, "spin", Spinner(), spinner_config("spin", ""))
    with running_server(tmp_path, http_port=-1, torch_threads=1, max_concurrent_rpcs=1) as server:
        channel, stub = grpc_stub(server)
        with channel:
            busy = pb.ModelInferRequest(model_name="spin")
            busy.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 2])
            busy.raw_input_contents.append(np.array([[8_000, 1.0]], "<f4").tobytes())
            running = stub.ModelInfer.future(busy, timeout=120)
            wait_until(lambda: server.queue_state("spin")[1] == 1, "the gRPC call is computing")
            body = json.dumps(
                {"inputs": [{"name": "INPUT__0", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]}
            ).encode()
            answer = call(server.http_target, "POST", "/v2/models/spin/infer", body)
            assert answer[0] == 429
            assert "1 inference calls in progress, the limit set by --max-concurrent-rpcs" in error_of(answer)
            running.result()
            assert call(server.http_target, "POST", "/v2/models/spin/infer", body)[0] == 200


def test_large_json_tensors_answer_as_binary_ones(triton: httpclient.InferenceServerClient) -> None:
    # Some 2 MB of JSON each way: parsed and written off the event loop, with the same result.
    x = np.random.default_rng(5).standard_normal((8, 3, 64, 64)).astype(np.float32)
    answers = []
    for binary in (False, True):
        given = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
        given.set_data_from_numpy(x, binary_data=binary)
        wanted = httpclient.InferRequestedOutput("OUTPUT__0", binary_data=binary)
        answers.append(triton.infer("cnn", [given], outputs=[wanted]).as_numpy("OUTPUT__0"))
    np.testing.assert_allclose(answers[0], answers[1], rtol=1e-6)
    assert answers[0].shape == (8, 10)
