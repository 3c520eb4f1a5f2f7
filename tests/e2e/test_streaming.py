"""ModelStreamInfer through a real server: tritonclient's stream API and ours (sync and asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from support.modelgen import Spinner, spinner_config, write_model
from support.serving import RunningServer, running_server
from torchwire.client import AsyncClient, Client, InferenceError
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

COUNT = 1000


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 1, 64), dtype=np.float32)


def batch_counts(target: str, model: str) -> tuple[int, int]:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30).model_stats[0]
    return stats.inference_count, stats.execution_count


@pytest.fixture(scope="module")
def unary_answers(bundled: RunningServer) -> np.ndarray:
    rows = images(COUNT)[:, 0]
    with Client(bundled.target, timeout=60) as client:
        parts = [
            client.predict("digits", {"INPUT__0": rows[i : i + 32]})["OUTPUT__0"] for i in range(0, COUNT, 32)
        ]
    return np.concatenate(parts)


def test_our_stream_matches_unary(bundled: RunningServer, unary_answers: np.ndarray) -> None:
    rows_before, runs_before = batch_counts(bundled.target, "digits")
    with Client(bundled.target, timeout=120) as client:
        results = list(
            client.stream("digits", ({"INPUT__0": row} for row in images(COUNT)), max_in_flight=64)
        )
    assert [r.index for r in results] == list(range(COUNT))  # ordered by default
    got = np.concatenate([r.unwrap()["OUTPUT__0"] for r in results])
    np.testing.assert_allclose(got, unary_answers, rtol=1e-5, atol=1e-6)
    rows, runs = batch_counts(bundled.target, "digits")
    assert rows - rows_before == COUNT
    assert (rows - rows_before) / (runs - runs_before) > 1, "streamed requests were not batched together"


def test_tritonclient_stream_matches_unary(bundled: RunningServer, unary_answers: np.ndarray) -> None:
    data = images(COUNT)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = triton.InferenceServerClient(bundled.target)
    rows_before, runs_before = batch_counts(bundled.target, "digits")
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i, row in enumerate(data):
            tensor = triton.InferInput("INPUT__0", [1, 64], "FP32")
            tensor.set_data_from_numpy(row)
            client.async_stream_infer("digits", [tensor], request_id=str(i))
        received = [answers.get(timeout=120) for _ in range(COUNT)]
    finally:
        client.stop_stream()
        client.close()
    assert all(error is None for _, error in received)
    by_id = {int(result.get_response().id): result.as_numpy("OUTPUT__0") for result, _ in received}
    assert sorted(by_id) == list(range(COUNT))
    np.testing.assert_allclose(
        np.concatenate([by_id[i] for i in range(COUNT)]), unary_answers, rtol=1e-5, atol=1e-6
    )
    rows, runs = batch_counts(bundled.target, "digits")
    assert (rows - rows_before) / (runs - runs_before) > 1


def test_bad_request_mid_stream_gets_its_error_and_the_stream_goes_on(bundled: RunningServer) -> None:
    good = {"INPUT__0": np.zeros((1, 64), np.float32)}
    bad = {"INPUT__0": np.zeros((1, 63), np.float32)}
    with Client(bundled.target, timeout=60) as client:
        results = list(client.stream("digits", [good, good, bad, good, good], errors="return"))
        assert [r.index for r in results] == [0, 1, 2, 3, 4]
        assert [r.error is None for r in results] == [True, True, False, True, True]
        error = results[2].error
        assert error is not None and error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert error.request_id == "2" and "INPUT__0" in error.message
        # With errors="raise" (the default) the first failed request ends the iteration, and the stream.
        stream = client.stream("digits", [good, bad, good])
        assert next(stream).index == 0
        with pytest.raises(InferenceError) as caught:
            next(stream)
        assert caught.value.request_id == "1" and caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert next(stream, None) is None


async def test_async_stream_over_async_generator_half_closes_and_gets_everything(
    bundled: RunningServer,
) -> None:
    data = images(200, seed=3)

    async def inputs() -> AsyncIterator[dict[str, np.ndarray]]:
        for row in data:
            yield {"INPUT__0": row}

    async with AsyncClient(bundled.target, timeout=120) as client:
        parts = [await client.predict("digits", {"INPUT__0": data[i : i + 32, 0]}) for i in range(0, 200, 32)]
        expected = np.concatenate([p["OUTPUT__0"] for p in parts])
        results = [r async for r in client.stream("digits", inputs(), ordered=False, max_in_flight=48)]
    assert sorted(r.index for r in results) == list(range(200))  # half-close answered everything
    for r in results:
        np.testing.assert_allclose(r.unwrap()["OUTPUT__0"][0], expected[r.index], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def spinning(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo: Path = tmp_path_factory.mktemp("spinning")
    write_model(repo, "spin", Spinner(), spinner_config("spin", ""))
    write_model(repo, "spinbatch", Spinner(), spinner_config("spinbatch", "dynamic_batching { }"))
    with running_server(repo, torch_threads=1) as server:
        yield server


async def test_cancelled_stream_frees_its_queue_entries(spinning: RunningServer) -> None:
    inputs = [{"INPUT__0": np.array([[10_000.0, 1.0]], np.float32)}] + [
        {"INPUT__0": np.array([[0.0, float(i)]], np.float32)} for i in range(5)
    ]

    async def until(condition: Any, what: str) -> None:
        deadline = time.monotonic() + 120
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting until {what}"
            await asyncio.sleep(0.005)

    async with AsyncClient(spinning.target, timeout=120) as client:

        async def consume() -> None:
            async for _ in client.stream("spin", inputs):
                pass

        task = asyncio.get_running_loop().create_task(consume())
        await until(lambda: spinning.queue_state("spin") == (5, 1), "the stream's requests queue up")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await until(lambda: spinning.queue_state("spin")[0] == 0, "the cancelled stream leaves the queue")


def test_one_stream_pipelines_many_requests_into_batches(spinning: RunningServer) -> None:
    """While the first request computes, the same stream's next ones all wait in the queue at once."""
    inputs = [{"INPUT__0": np.array([[10_000.0, -1.0]], np.float32)}] + [
        {"INPUT__0": np.array([[0.0, float(i)]], np.float32)} for i in range(63)
    ]
    rows_before, runs_before = batch_counts(spinning.target, "spinbatch")
    results: list[Any] = []
    with Client(spinning.target, timeout=120) as client:
        consumer = threading.Thread(target=lambda: results.extend(client.stream("spinbatch", inputs)))
        consumer.start()
        try:
            deadline = time.monotonic() + 120
            while spinning.queue_state("spinbatch")[0] < 32:  # >= 32 of one stream's requests in flight
                assert time.monotonic() < deadline, "the stream's requests never piled up in the queue"
                time.sleep(0.005)
        finally:
            consumer.join(timeout=120)
    assert [float(r.unwrap()["OUTPUT__0"][0, 0]) for r in results] == [-2.0] + [2.0 * i for i in range(63)]
    rows, runs = batch_counts(spinning.target, "spinbatch")
    assert rows - rows_before == 64
    assert (rows - rows_before) / (runs - runs_before) > 1, "queued stream requests were not batched"


def test_server_stops_reading_a_stream_at_its_in_flight_limit(tmp_path: Path) -> None:
    """Backpressure: with --stream-max-in-flight 4, no more than 4 of one stream's requests are in
    the server at once, however many the client has sent; nothing is dropped."""
    write_model(tmp_path, "spin", Spinner(), spinner_config("spin", ""))
    inputs = [{"INPUT__0": np.array([[10_000.0, -1.0]], np.float32)}] + [
        {"INPUT__0": np.array([[0.0, float(i)]], np.float32)} for i in range(20)
    ]
    results: list[Any] = []
    with (
        running_server(tmp_path, stream_max_in_flight=4, torch_threads=1) as server,
        Client(server.target, timeout=120) as client,
    ):
        consumer = threading.Thread(target=lambda: results.extend(client.stream("spin", inputs)))
        consumer.start()
        try:
            deadline = time.monotonic() + 120
            while server.queue_state("spin") != (3, 1):  # the slow one runs, three wait: the limit
                assert time.monotonic() < deadline, "the stream never reached its in-flight limit"
                time.sleep(0.005)
            samples = [server.queue_state("spin") for _ in range(50)]  # while the slow one computes
        finally:
            consumer.join(timeout=120)
    assert all(queued + running <= 4 for queued, running in samples), samples
    assert [float(r.unwrap()["OUTPUT__0"][0, 0]) for r in results] == [-2.0] + [2.0 * i for i in range(20)]
