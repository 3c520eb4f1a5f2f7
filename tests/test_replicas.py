"""One client spreads calls over three servers, and keeps succeeding while one of them stops."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from serving import RunningServer, running_server
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


def test_round_robin_spreads_calls_fairly(replicas: list[RunningServer]) -> None:
    with Client([r.target for r in replicas], round_robin=True, timeout=60) as client:
        for i in range(300):
            assert client.predict("simple", simple_inputs(i))["OUTPUT0"][0, 0] == 2 * i
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
