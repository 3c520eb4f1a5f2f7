"""The client's retry policy, against a real gRPC server that fails a call's first attempts on cue."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from torchwire.client import AsyncClient, Client, InferenceError
from torchwire.client._proto import grpc_service_pb2 as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"
ONES = np.ones((1, 2), np.float32)


class FailingFirst:
    """Answers ModelInfer with its input, after failing the first `failures` attempts with `code`."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.UNAVAILABLE
        self.failures = 0
        self.attempts = 0
        self._lock = threading.Lock()

    def arm(self, code: grpc.StatusCode, failures: int) -> None:
        with self._lock:
            self.code, self.failures, self.attempts = code, failures, 0

    def infer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        with self._lock:
            self.attempts += 1
            fail = self.attempts <= self.failures
        if fail:
            context.abort(self.code, f"attempt failed on purpose with {self.code.name}")
        response = pb.ModelInferResponse(model_name=request.model_name)
        tensor = request.inputs[0]
        response.outputs.add(name="OUTPUT__0", datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(request.raw_input_contents[0])
        return response


@pytest.fixture(scope="module")
def failing() -> Iterator[tuple[str, FailingFirst]]:
    behavior = FailingFirst()
    handler = grpc.unary_unary_rpc_method_handler(
        behavior.infer, pb.ModelInferRequest.FromString, pb.ModelInferResponse.SerializeToString
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", behavior
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
def test_unavailable_and_cancelled_are_retried(
    failing: tuple[str, FailingFirst], code: grpc.StatusCode
) -> None:
    target, behavior = failing
    behavior.arm(code, failures=2)
    with Client(target, timeout=60) as client:
        np.testing.assert_array_equal(client.predict("m", {"INPUT__0": ONES})["OUTPUT__0"], ONES)
    assert behavior.attempts == 3


def test_the_async_client_retries_the_same_way(failing: tuple[str, FailingFirst]) -> None:
    target, behavior = failing
    behavior.arm(grpc.StatusCode.CANCELLED, failures=1)

    async def call() -> np.ndarray:
        async with AsyncClient(target, timeout=60) as client:
            return (await client.predict("m", {"INPUT__0": ONES}))["OUTPUT__0"]

    np.testing.assert_array_equal(asyncio.run(call()), ONES)
    assert behavior.attempts == 2


@pytest.mark.parametrize(
    ("code", "retries", "attempts"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 5, 1),  # would fail again: never retried
        (grpc.StatusCode.UNAVAILABLE, 3, 3),  # retried until the attempt budget runs out
        (grpc.StatusCode.CANCELLED, 1, 1),  # one attempt turns retries off
    ],
)
def test_failures_that_are_not_retried_away(
    failing: tuple[str, FailingFirst], code: grpc.StatusCode, retries: int, attempts: int
) -> None:
    target, behavior = failing
    behavior.arm(code, failures=100)
    with Client(target, timeout=60, retries=retries) as client, pytest.raises(InferenceError) as caught:
        client.predict("m", {"INPUT__0": ONES})
    assert caught.value.code is code
    assert f"failed on purpose with {code.name}" in caught.value.message
    assert behavior.attempts == attempts


def test_round_robin_over_servers_without_a_health_service(failing: tuple[str, FailingFirst]) -> None:
    # gRPC treats an address whose health service is UNIMPLEMENTED as healthy, so health_check=True
    # (the default) still works against servers that do not serve grpc.health.v1.
    target, behavior = failing
    behavior.arm(grpc.StatusCode.UNAVAILABLE, failures=0)
    with Client([target, target], round_robin=True, timeout=60) as client:
        np.testing.assert_array_equal(client.predict("m", {"INPUT__0": ONES})["OUTPUT__0"], ONES)
    assert behavior.attempts == 1
