"""One client spreads calls over three servers, skips one whose health says NOT_SERVING, and keeps
succeeding while one of them stops."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.serving import RunningServer, running_server, wait_until
from torchwire.client import Client, InferenceError
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture
def replicas() -> Iterator[list[RunningServer]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running_server(torch_threads=1)) for _ in range(3)]


def successes(server: RunningServer) -> int:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="simple"), timeout=30)
    return sum(s.inference_stats.success.count for s in stats.model_stats)


def simple_inputs(i: int) -> dict[str, np.ndarray]:
    a = np.full((1, 16), i, np.int32)
    return {"INPUT0": a, "INPUT1": a}


def predict_many(client: Client, count: int) -> None:
    for i in range(count):
        assert client.predict("simple", simple_inputs(i))["OUTPUT0"][0, 0] == 2 * i


def test_health_watch_streams_readiness_changes(replicas: list[RunningServer]) -> None:
    server = replicas[0]
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        readiness = stub.Watch(health_pb2.HealthCheckRequest(service="readiness"), timeout=60)
        liveness = stub.Watch(health_pb2.HealthCheckRequest(service="liveness"), timeout=60)
        assert next(readiness).status == health_pb2.HealthCheckResponse.SERVING
        assert next(liveness).status == health_pb2.HealthCheckResponse.SERVING
        server.call(server.app.health.drain())  # what a stop does first
        assert next(readiness).status == health_pb2.HealthCheckResponse.NOT_SERVING
        readiness.cancel()
        liveness.cancel()


@pytest.mark.parametrize("health_check", [True, False])
def test_round_robin_skips_a_replica_whose_health_says_not_serving(
    replicas: list[RunningServer], health_check: bool
) -> None:
    draining = replicas[1]
    with Client(
        [r.target for r in replicas], round_robin=True, health_check=health_check, timeout=60
    ) as client:
        predict_many(client, 30)
        assert successes(draining) > 0  # in the rotation to begin with
        draining.call(draining.app.health.drain())  # NOT_SERVING, yet still answering calls
        if not health_check:
            before = successes(draining)
            predict_many(client, 60)
            assert successes(draining) > before  # without health checking the client keeps picking it
            return

        def skipped() -> bool:
            before = successes(draining)
            predict_many(client, 30)
            return successes(draining) == before

        wait_until(skipped, "the client stops picking the NOT_SERVING replica")
        before, others = successes(draining), successes(replicas[0]) + successes(replicas[2])
        predict_many(client, 90)
        assert successes(draining) == before
        assert successes(replicas[0]) + successes(replicas[2]) == others + 90


def test_round_robin_spreads_calls_fairly(replicas: list[RunningServer]) -> None:
    with Client([r.target for r in replicas], round_robin=True, timeout=60) as client:
        predict_many(client, 300)
    shares = [successes(r) for r in replicas]
    assert sum(shares) == 300
    assert all(60 <= share <= 140 for share in shares), shares  # round robin: about 100 each


def test_calls_keep_succeeding_while_a_replica_stops(replicas: list[RunningServer]) -> None:
    failures: list[InferenceError] = []
    done = threading.Event()
    completed = 0

    def load() -> None:
        nonlocal completed
        with Client([r.target for r in replicas], round_robin=True, timeout=60) as client:
            for i in range(400):
                try:
                    assert client.predict("simple", simple_inputs(i))["OUTPUT0"][0, 0] == 2 * i
                except InferenceError as exc:
                    failures.append(exc)
                completed += 1
                if completed == 100:
                    done.set()

    stopped_stats = replicas[1].app.registry.lookup("simple").stats  # still readable after the stop
    worker = threading.Thread(target=load)
    worker.start()
    try:
        assert done.wait(timeout=120), "the load loop did not get going"
        completed_at_stop = completed
        replicas[1].call(replicas[1].app.stop())  # graceful stop in the middle of the run
    finally:
        worker.join(timeout=300)
    assert not worker.is_alive()
    assert completed_at_stop < 400, "the replica stopped only after the run"  # it began mid-run
    assert completed == 400
    assert failures == []
    assert successes(replicas[0]) + successes(replicas[2]) + stopped_stats.success.count == 400
