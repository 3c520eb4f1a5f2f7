"""The batching queue through a real server: batches, limits, deadlines, cancellation, isolation."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.modelgen import Spinner, spinner_config, write_model
from support.serving import RunningServer, running_server, wait_until
from torchwire.client import Client, InferenceError
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

SLOW_ROUNDS = 10_000  # about a second of compute here; tests wait on conditions, never on time
PATIENT_DELAY_S = 0.4  # a batching delay far longer than anything else a request waits for here
PATIENT_US = int(PATIENT_DELAY_S * 1e6)


# Queue policies with a default timeout of 1 ms or 60 s, with or without allow_timeout_override, at
# the default level 2. Level 1 has no timeout, for the slow request that keeps the instance busy.
QUEUE_POLICIES = {
    f"{length}_{override}": (
        "priority_levels: 2 default_priority_level: 2 priority_queue_policy { key: 1 value: { } } "
        f"default_queue_policy {{ default_timeout_microseconds: {micros} "
        f"allow_timeout_override: {str(override == 'override').lower()} }}"
    )
    for length, micros in (("short", 1000), ("long", 60_000_000))
    for override in ("override", "fixed")
}


@pytest.fixture(scope="module")
def spinners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo: Path = tmp_path_factory.mktemp("spinners")
    write_model(
        repo,
        "batched",
        Spinner(),
        spinner_config("batched", "dynamic_batching { max_queue_delay_microseconds: 50000 }"),
    )
    write_model(
        repo,
        "bounded",
        Spinner(),
        spinner_config("bounded", "dynamic_batching { default_queue_policy { max_queue_size: 2 } }"),
    )
    write_model(repo, "timed", Spinner(), spinner_config("timed", "dynamic_batching { }"))
    patient = f"dynamic_batching {{ max_queue_delay_microseconds: {PATIENT_US} }}"
    write_model(repo, "patient", Spinner(), spinner_config("patient", patient))
    write_model(repo, "alone", Spinner(), spinner_config("alone", ""))
    preferring = f"dynamic_batching {{ preferred_batch_size: 2 max_queue_delay_microseconds: {PATIENT_US} }}"
    write_model(repo, "preferring", Spinner(), spinner_config("preferring", preferring))
    ranked = "dynamic_batching { priority_levels: 2 default_priority_level: 2 }"
    write_model(repo, "ranked", Spinner(), spinner_config("ranked", ranked))
    write_model(repo, "shaped", Spinner(), spinner_config("shaped", "dynamic_batching { }", width=-1))
    delaying = "default_queue_policy { timeout_action: DELAY allow_timeout_override: true }"
    write_model(repo, "delaying", Spinner(), spinner_config("delaying", f"dynamic_batching {{ {delaying} }}"))
    for name, policy in QUEUE_POLICIES.items():
        write_model(repo, name, Spinner(), spinner_config(name, f"dynamic_batching {{ {policy} }}"))
    with running_server(repo, torch_threads=1) as server:
        yield server


def request(
    model: str, rounds: int, value: float, *, rows: int = 1, width: int = 2, **params: int
) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, id=f"{value}")
    req.inputs.add(name="INPUT__0", datatype="FP32", shape=[rows, width])
    row = [rounds] + [0.0] * (width - 2) + [value]
    req.raw_input_contents.append(np.array([row] * rows, "<f4").tobytes())
    for key, number in params.items():
        req.parameters[key].int64_param = number
    return req


def doubled(response: pb.ModelInferResponse) -> list[float]:
    return np.frombuffer(response.raw_output_contents[0], "<f4").tolist()


def calls_so_far(response: pb.ModelInferResponse) -> int:
    return int(np.frombuffer(response.raw_output_contents[1], "<i8").max())


@pytest.fixture
def stub(spinners: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(spinners.target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_concurrent_requests_share_batches_and_answers_stay_exact(
    spinners: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    calls = [
        stub.ModelInfer.future(request("batched", 1, float(i), rows=1 + i % 3), timeout=120)
        for i in range(40)
    ]
    for i, call in enumerate(calls):
        assert doubled(call.result()) == [2.0 * i] * (1 + i % 3)
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="batched"), timeout=30).model_stats[0]
    sizes = {b.batch_size: b.compute_infer.count for b in stats.batch_stats}
    assert stats.inference_count == sum(1 + i % 3 for i in range(40))
    assert stats.execution_count < 40, sizes  # fewer forward passes than requests: batches formed
    assert max(sizes) > 1 and max(sizes) <= 8, sizes  # never more rows than max_batch_size
    assert sum(size * count for size, count in sizes.items()) == stats.inference_count
    assert stats.inference_stats.success.count == 40
    assert stats.inference_stats.queue.count == 40


def test_full_queue_is_rejected_at_once(
    spinners: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    busy = stub.ModelInfer.future(request("bounded", SLOW_ROUNDS, 1.0), timeout=120)
    wait_until(lambda: spinners.queue_state("bounded")[1] == 1, "the slow request runs")
    queued = [stub.ModelInfer.future(request("bounded", 0, float(i)), timeout=120) for i in range(2)]
    wait_until(lambda: spinners.queue_state("bounded")[0] == 2, "two requests wait")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request("bounded", 0, 9.0), timeout=60)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queue_size" in caught.value.details() and "2 requests" in caught.value.details()
    assert doubled(busy.result()) == [2.0]
    assert [doubled(q.result()) for q in queued] == [[0.0], [2.0]]


def test_expired_request_is_never_computed(
    spinners: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    before = calls_so_far(stub.ModelInfer(request("timed", 0, 0.0), timeout=60))
    busy = stub.ModelInfer.future(request("timed", SLOW_ROUNDS, 1.0), timeout=120)
    wait_until(lambda: spinners.queue_state("timed")[1] == 1, "the slow request runs")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request("timed", 0, 5.0, timeout=1000), timeout=60)  # 1 ms of queueing allowed
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timed out" in caught.value.details()
    assert calls_so_far(busy.result()) == before + 1
    # The next computed request proves the expired one never ran: only the slow one came between.
    assert calls_so_far(stub.ModelInfer(request("timed", 0, 0.0), timeout=60)) == before + 2


def test_cancelled_request_leaves_the_queue(
    spinners: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    before = calls_so_far(stub.ModelInfer(request("alone", 0, 0.0), timeout=60))
    busy = stub.ModelInfer.future(request("alone", SLOW_ROUNDS, 1.0), timeout=120)
    wait_until(lambda: spinners.queue_state("alone")[1] == 1, "the slow request runs")
    doomed = stub.ModelInfer.future(request("alone", 0, 7.0), timeout=120)
    wait_until(lambda: spinners.queue_state("alone")[0] == 1, "the second request waits")
    doomed.cancel()
    wait_until(lambda: spinners.queue_state("alone")[0] == 0, "the cancelled request leaves the queue")
    assert busy.result() is not None
    assert calls_so_far(stub.ModelInfer(request("alone", 0, 0.0), timeout=60)) == before + 2


def test_health_answers_during_a_slow_forward(
    spinners: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    busy = stub.ModelInfer.future(request("alone", 3 * SLOW_ROUNDS, 1.0), timeout=180)
    wait_until(lambda: spinners.queue_state("alone")[1] == 1, "the slow request runs")
    with grpc.insecure_channel(spinners.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(5):
            answer = health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=60)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert not busy.done(), "health answered only after the forward pass: the event loop was blocked"
    assert doubled(busy.result()) == [2.0]


def test_a_slow_model_does_not_hold_up_another(
    spinners: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """Separate queues and instances: while one model computes for a long time, another answers."""
    busy = stub.ModelInfer.future(request("alone", 3 * SLOW_ROUNDS, 1.0), timeout=180)
    wait_until(lambda: spinners.queue_state("alone")[1] == 1, "the slow request runs")
    for i in range(10):
        assert doubled(stub.ModelInfer(request("batched", 0, float(i)), timeout=60)) == [2.0 * i]
    assert not busy.done(), "the other model's answers waited for the slow forward pass"
    assert doubled(busy.result()) == [2.0]


def _queue_totals(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> tuple[int, int]:
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30).model_stats[0]
    return stats.inference_stats.queue.count, stats.inference_stats.queue.ns


def test_waits_that_never_fill_a_batch_stop(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """Two closed-loop callers batch together; a third never comes, so waiting at two rows for the
    0.4 s delay gains nothing. After a few such waits the scheduler stops making them (the delay is
    a bound, not a wait): the requests' queue time, as the server measures it, drops far below it."""

    def two_callers(rounds: int) -> None:
        def call(value: float) -> None:
            for _ in range(rounds):
                assert doubled(stub.ModelInfer(request("patient", 0, value), timeout=60)) == [2 * value]

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(call, 1.0), pool.submit(call, 2.0)]:
                done.result()

    two_callers(8)  # learning: the first waits at two rows run out the delay
    count, ns = _queue_totals(stub, "patient")
    two_callers(8)
    after_count, after_ns = _queue_totals(stub, "patient")
    assert after_count - count == 16
    mean_queue_s = (after_ns - ns) / (after_count - count) / 1e9
    # Waiting out the delay each time would make this ~0.4 s; a probe now and then adds a little.
    assert mean_queue_s < PATIENT_DELAY_S / 3, mean_queue_s


def _batch_sizes(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> dict[int, int]:
    """Forward passes so far by batch size (rows), as ModelStatistics reports them."""
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30).model_stats[0]
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def _behind_a_slow_request(
    spinners: RunningServer,
    stub: pb_grpc.GRPCInferenceServiceStub,
    model: str,
    requests: list[pb.ModelInferRequest],
) -> list[pb.ModelInferResponse]:
    """Queue `requests` one by one (so their order is known) while a slow request computes, then
    let them all be batched at once; their responses in the same order."""
    busy = stub.ModelInfer.future(request(model, SLOW_ROUNDS, 1.0), timeout=120)
    wait_until(lambda: spinners.queue_state(model)[1] == 1, "the slow request runs")
    queued = []
    for count, req in enumerate(requests, 1):
        queued.append(stub.ModelInfer.future(req, timeout=120))
        wait_until(lambda n=count: spinners.queue_state(model)[0] == n, f"{count} requests wait")
    assert doubled(busy.result()) == [2.0]
    return [q.result() for q in queued]


def test_the_largest_preferred_batch_goes_at_once(
    spinners: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """Triton's rule: three requests wait; the first two make the preferred size 2, so they go
    together at once and the third goes alone. (Taking all three would be a batch of 3, formed
    only after waiting for the delay.)"""
    before = _batch_sizes(stub, "preferring")
    answers = _behind_a_slow_request(
        spinners, stub, "preferring", [request("preferring", 0, float(v)) for v in (3, 4, 5)]
    )
    assert [doubled(a) for a in answers] == [[6.0], [8.0], [10.0]]
    after = _batch_sizes(stub, "preferring")
    grown = {size: after[size] - before.get(size, 0) for size in after if after[size] != before.get(size, 0)}
    assert grown == {1: 2, 2: 1}, grown  # the slow request and the third alone; the preferred pair
    first, second, third = (calls_so_far(a) for a in answers)
    assert first == second < third


@pytest.mark.parametrize("low_priority", [{}, {"priority": 2}, {"priority": 9}], ids=["default", "2", "9"])
def test_higher_priority_requests_go_first(
    spinners: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub, low_priority: dict[str, int]
) -> None:
    """A full batch at the low level waits first, a one-row request at priority 1 after it. They
    cannot share a batch (9 rows > 8), and the later, higher one is computed first. The low level
    is the model's default: named, left out, or (as in Triton) a level the model does not have."""
    low, high = _behind_a_slow_request(
        spinners,
        stub,
        "ranked",
        [request("ranked", 0, 2.0, rows=8, **low_priority), request("ranked", 0, 3.0, priority=1)],
    )
    assert doubled(low) == [4.0] * 8 and doubled(high) == [6.0]
    # Rows computed so far, counted by the model: the high request's batch ran before the low one's.
    assert calls_so_far(high) + 8 == calls_so_far(low)


def test_requests_with_different_shapes_never_share_a_batch(
    spinners: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    before = _batch_sizes(stub, "shaped")
    a, b, c = _behind_a_slow_request(
        spinners,
        stub,
        "shaped",
        [request("shaped", 0, v, width=w) for v, w in ((1.0, 3), (2.0, 4), (3.0, 3))],
    )
    assert [doubled(x) for x in (a, b, c)] == [[2.0], [4.0], [6.0]]
    assert calls_so_far(a) == calls_so_far(c) != calls_so_far(b)  # a and c together, b alone
    after = _batch_sizes(stub, "shaped")
    assert after.get(2, 0) - before.get(2, 0) == 1 and after[1] - before.get(1, 0) == 2, (before, after)


def test_timeout_action_delay_serves_a_late_request_after_those_in_time(
    spinners: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """Under timeout_action DELAY a request whose timeout (1 ms) passes while queued is not
    rejected: it goes behind the requests of its level still in time, though it came first."""
    late, punctual = _behind_a_slow_request(
        spinners,
        stub,
        "delaying",
        [request("delaying", 0, 2.0, rows=8, timeout=1000), request("delaying", 0, 3.0, rows=8)],
    )
    assert doubled(late) == [4.0] * 8 and doubled(punctual) == [6.0] * 8
    assert calls_so_far(punctual) + 8 == calls_so_far(late)


@pytest.mark.parametrize(
    ("model", "timeout_us", "expires"),
    [
        ("short_fixed", None, True),  # the policy's default applies to every request
        ("short_fixed", 60_000_000, True),  # a request cannot lengthen it...
        ("short_override", 60_000_000, True),  # ...not even where overrides are allowed
        ("long_override", 1000, True),  # it can shorten it where they are
        ("long_fixed", 1000, False),  # and not where they are not
    ],
)
def test_queue_policy_timeouts_follow_triton(
    spinners: RunningServer,
    stub: pb_grpc.GRPCInferenceServiceStub,
    model: str,
    timeout_us: int | None,
    expires: bool,
) -> None:
    busy = stub.ModelInfer.future(request(model, SLOW_ROUNDS, 1.0, priority=1), timeout=120)
    wait_until(lambda: spinners.queue_state(model)[1] == 1, "the slow request runs")
    params = {"timeout": timeout_us} if timeout_us is not None else {}
    waiting = stub.ModelInfer.future(request(model, 0, 3.0, **params), timeout=120)
    if expires:
        with pytest.raises(grpc.RpcError) as caught:
            waiting.result()
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "timed out after 1000 µs in the queue" in caught.value.details()
    else:
        assert doubled(waiting.result()) == [6.0]
    assert doubled(busy.result()) == [2.0]


def test_our_client_sets_priority_and_queue_timeout(
    spinners: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """Client.predict(priority=, queue_timeout=) are Triton's per-request parameters: behind a slow
    request, a later priority-1 call computes before an earlier default one, and a call whose queue
    timeout passes while it waits is refused without being computed."""
    with Client(spinners.target, timeout=120) as client, concurrent.futures.ThreadPoolExecutor(3) as pool:

        def predict(model: str, value: float, rows: int = 1, **scheduling: float) -> Any:
            inputs = {"INPUT__0": np.array([[0.0, value]] * rows, np.float32)}
            return pool.submit(client.predict, model, inputs, **scheduling)

        busy = stub.ModelInfer.future(request("ranked", SLOW_ROUNDS, 1.0), timeout=120)
        wait_until(lambda: spinners.queue_state("ranked")[1] == 1, "the slow request runs")
        low = predict("ranked", 2.0, rows=8)
        wait_until(lambda: spinners.queue_state("ranked")[0] == 1, "the low request waits")
        high = predict("ranked", 3.0, priority=1)
        wait_until(lambda: spinners.queue_state("ranked")[0] == 2, "the high request waits")
        assert doubled(busy.result()) == [2.0]
        low_out, high_out = low.result()["OUTPUT__0"], high.result()["OUTPUT__0"]
        assert low_out[:, -1].tolist() == [4.0] * 8 and high_out[:, -1].tolist() == [6.0]
        calls = {name: int(out.result()["OUTPUT__1"].max()) for name, out in (("low", low), ("high", high))}
        assert calls["high"] + 8 == calls["low"], calls

        busy = stub.ModelInfer.future(request("long_override", SLOW_ROUNDS, 1.0, priority=1), timeout=120)
        wait_until(lambda: spinners.queue_state("long_override")[1] == 1, "the slow request runs")
        with pytest.raises(InferenceError) as caught:
            predict("long_override", 3.0, queue_timeout=0.001).result()
        assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "timed out after 1000 µs in the queue" in caught.value.message
        assert doubled(busy.result()) == [2.0]
