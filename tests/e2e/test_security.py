"""TLS, mutual TLS, bearer tokens and limits, each end to end through a real server."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.certs import Certs, make_certs
from support.modelgen import Expand, Spinner, single_io_config, spinner_config, tensor_config, write_model
from support.serving import RunningServer, running_server
from torchwire.client import Client, InferenceError
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

TOKEN = "s3cret-token-for-tests"
A = np.ones((1, 16), np.int32)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def simple(client: Client) -> int:
    return int(client.predict("simple", {"INPUT0": A, "INPUT1": A})["OUTPUT0"][0, 0])


def test_tls_end_to_end_and_plaintext_refused(certs: Certs) -> None:
    with running_server(tls_cert=certs.server_cert, tls_key=certs.server_key) as server:
        with Client(server.target, tls_ca=certs.ca, timeout=30) as client:
            assert simple(client) == 2
        with Client(server.target, timeout=10, retries=1) as plain, pytest.raises(InferenceError) as caught:
            simple(plain)
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        with Client(server.target, tls_ca=certs.ca, timeout=30) as client:
            assert simple(client) == 2  # still serving


def test_mutual_tls_needs_a_client_certificate(certs: Certs) -> None:
    settings = {"tls_cert": certs.server_cert, "tls_key": certs.server_key, "tls_client_ca": certs.ca}
    with running_server(**settings) as server:
        with Client(
            server.target, tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key, timeout=30
        ) as client:
            assert simple(client) == 2
        with Client(server.target, tls_ca=certs.ca, timeout=10, retries=1) as anonymous:
            with pytest.raises(InferenceError) as caught:
                simple(anonymous)
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        with Client(
            server.target, tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key, timeout=30
        ) as client:
            assert simple(client) == 2


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"# one token a line\nother-token\n{TOKEN}\n")
    with running_server(auth_token_file=tokens, access_log_sample=1.0) as server:
        yield server


def test_tokens_unauthenticated_wrong_and_good(
    guarded: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        for token in (None, "wrong-token", ""):
            with (
                Client(guarded.target, token=token, timeout=30) as client,
                pytest.raises(InferenceError) as caught,
            ):
                simple(client)
            assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in caught.value.message
        with Client(guarded.target, token=TOKEN, timeout=30) as client:
            assert simple(client) == 2
            assert [r.index for r in client.stream("simple", [{"INPUT0": A, "INPUT1": A}] * 3)] == [0, 1, 2]
        with Client(guarded.target, token="wrong-token", timeout=30) as client, pytest.raises(InferenceError):
            list(client.stream("simple", [{"INPUT0": A, "INPUT1": A}]))
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
    with grpc.insecure_channel(guarded.target) as channel:  # health stays open for probes
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="readiness"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_tritonclient_and_grpcurl_send_the_token(guarded: RunningServer) -> None:
    client = triton.InferenceServerClient(guarded.target)
    try:
        with pytest.raises(triton.InferenceServerException) as caught:
            client.is_server_live()
        assert "UNAUTHENTICATED" in str(caught.value.status())
        assert client.is_server_live(headers={"authorization": f"Bearer {TOKEN}"}) is True
    finally:
        client.close()
    grpcurl = str(Path(sys.executable).parent / "grpcurl")
    denied = subprocess.run(
        [grpcurl, "-plaintext", guarded.target, "list"], capture_output=True, text=True, timeout=60
    )
    assert denied.returncode != 0 and "Unauthenticated" in denied.stderr
    allowed = subprocess.run(
        [grpcurl, "-plaintext", "-H", f"authorization: Bearer {TOKEN}", guarded.target, "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert allowed.returncode == 0 and "inference.GRPCInferenceService" in allowed.stdout


def test_round_robin_against_closed_health_needs_health_check_off(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    with running_server(auth_token_file=tokens, auth_health=True) as server:
        targets = [server.target, server.target]
        # gRPC's health-check stream carries no call metadata, so the token cannot reach it.
        with Client(targets, token=TOKEN, round_robin=True, timeout=30) as client:
            with pytest.raises(InferenceError) as caught:
                simple(client)
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE
            assert "health check" in caught.value.message
        with Client(targets, token=TOKEN, round_robin=True, health_check=False, timeout=30) as client:
            assert simple(client) == 2


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo: Path = tmp_path_factory.mktemp("limited")
    write_model(repo, "spin", Spinner(), spinner_config("spin", ""))
    expand_config = (
        'name: "expand"\nmax_batch_size: 64\n'
        f"input [ {tensor_config('INPUT__0', 'FP32', [-1])} ]\n"
        f"output [ {tensor_config('OUTPUT__0', 'FP32', [-1])} ]\n"
    )
    write_model(repo, "expand", Expand(), expand_config)
    write_model(repo, "wide", None, single_io_config("wide", "FP32", [-1], 64))
    settings = {
        "max_message_bytes": 256 * 1024,
        "max_tensor_elements": 20_000,
        "max_request_rows": 16,
        "max_concurrent_rpcs": 1,
        "max_streams": 1,
        "readiness": "any",
        "torch_threads": 1,
    }
    with running_server(repo, **settings) as server:
        yield server


def rpc_error(call: object) -> grpc.RpcError:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def test_each_limit_answers_with_its_setting(limited: RunningServer) -> None:
    with grpc.insecure_channel(
        limited.target, options=[("grpc.max_receive_message_length", 2**30)]
    ) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def expand(rows: int, width: int) -> pb.ModelInferRequest:
            req = pb.ModelInferRequest(model_name="expand")
            req.inputs.add(name="INPUT__0", datatype="FP32", shape=[rows, width])
            req.raw_input_contents.append(np.zeros((rows, width), "<f4").tobytes())
            return req

        too_big = rpc_error(lambda: stub.ModelInfer(expand(1, 100_000), timeout=30))  # 400 KB message
        assert too_big.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-message-bytes" in too_big.details()
        elements = rpc_error(lambda: stub.ModelInfer(expand(2, 15_000), timeout=30))
        assert elements.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "--max-tensor-elements" in elements.details() and "30000 elements" in elements.details()
        rows = rpc_error(lambda: stub.ModelInfer(expand(17, 1), timeout=30))
        assert rows.code() is grpc.StatusCode.INVALID_ARGUMENT and "--max-request-rows" in rows.details()
        reply = rpc_error(lambda: stub.ModelInfer(expand(1, 2_000), timeout=30))  # 8 KB in, 512 KB out
        assert reply.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "response" in reply.details()
        assert "--max-message-bytes" in reply.details()

        slow = pb.ModelInferRequest(model_name="spin")
        slow.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 2])
        slow.raw_input_contents.append(np.array([[10_000, 1]], "<f4").tobytes())
        busy = stub.ModelInfer.future(slow, timeout=120)
        deadline = time.monotonic() + 60
        while limited.queue_state("spin")[1] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        concurrent = rpc_error(lambda: stub.ModelInfer(expand(1, 4), timeout=30))
        assert concurrent.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-concurrent-rpcs" in concurrent.details()
        busy.result()
        assert (
            np.frombuffer(stub.ModelInfer(expand(1, 4), timeout=30).raw_output_contents[0], "<f4").size == 256
        )

    release = threading.Event()

    def held_open() -> Iterator[dict[str, np.ndarray]]:
        """Two requests, the second only once the test says so: until then the stream stays open."""
        yield {"INPUT__0": np.ones((1, 4), np.float32)}
        assert release.wait(timeout=60)
        yield {"INPUT__0": np.ones((1, 4), np.float32)}

    with Client(limited.target, timeout=60) as client:
        first = client.stream("expand", held_open())
        assert next(first).index == 0  # the one allowed stream is open
        with pytest.raises(InferenceError) as caught:
            list(client.stream("expand", [{"INPUT__0": np.ones((1, 4), np.float32)}]))
        assert (
            caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            and "--max-streams" in caught.value.message
        )
        release.set()
        assert [r.index for r in first] == [1]
