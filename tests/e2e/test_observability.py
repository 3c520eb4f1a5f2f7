"""Metrics, statistics, tracing and access logs, checked against counts the test itself produced."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from support.modelgen import Spinner, spinner_config, write_model
from support.serving import RunningServer, running_server
from torchwire.client import Client, InferenceError
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc
from torchwire.server.core.errors import FAILURE_REASONS

SPANS = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> None:
    """The process's OpenTelemetry SDK (set once per process), exporting to memory for the tests."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SPANS))
    trace.set_tracer_provider(provider)


def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert server.app.metrics is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics.port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo: Path = tmp_path_factory.mktemp("observed")
    bounded = "dynamic_batching { default_queue_policy { max_queue_size: 1 } }"
    write_model(repo, "spin", Spinner(), spinner_config("spin", bounded))
    with running_server(repo, metrics_port=-1, trace=True, access_log_sample=1.0, torch_threads=1) as server:
        yield server


def infer(stub: pb_grpc.GRPCInferenceServiceStub, rounds: int, value: float, **kwargs: object) -> grpc.Future:
    req = pb.ModelInferRequest(model_name="spin")
    req.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(np.array([[rounds, value]], "<f4").tobytes())
    return stub.ModelInfer.future(req, timeout=120, **kwargs)


def test_metrics_and_statistics_count_exactly_what_happened(observed: RunningServer) -> None:
    labels = {"model": "spin", "version": "1"}
    with grpc.insecure_channel(observed.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = scrape(observed)
        for i in range(7):  # good
            infer(stub, 0, float(i)).result()
        bad = pb.ModelInferRequest(model_name="spin")
        bad.inputs.add(name="INPUT__0", datatype="FP64", shape=[1, 2])
        bad.raw_input_contents.append(bytes(16))
        for _ in range(3):  # invalid input
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(bad, timeout=60)
        busy = infer(stub, 10_000, 1.0)
        deadline = time.monotonic() + 60
        while observed.queue_state("spin")[1] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        waiting = infer(stub, 0, 2.0)
        while observed.queue_state("spin")[0] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        for _ in range(2):  # rejected: the queue holds one
            with pytest.raises(grpc.RpcError) as caught:
                infer(stub, 0, 3.0).result()
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        busy.result()
        waiting.result()
        after = scrape(observed)
        stats = stub.ModelStatistics(
            pb.ModelStatisticsRequest(name="spin", version="1"), timeout=30
        ).model_stats[0]

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert delta("torchwire_request_success_total") == 9
    assert delta("torchwire_request_failure_total", reason="invalid_input") == 3
    assert delta("torchwire_request_failure_total", reason="rejected") == 2
    assert delta("torchwire_request_failure_total", reason="model_error") == 0
    assert delta("torchwire_request_duration_seconds_count") == 14
    assert delta("torchwire_queue_duration_seconds_count") == 9
    assert delta("torchwire_inference_count_total") == 9
    assert value(after, "torchwire_queue_depth", **labels) == 0
    assert value(after, "torchwire_model_state", **labels, state="READY") == 1
    assert value(after, "torchwire_process_resident_memory_bytes") > 0
    # The ModelStatistics RPC agrees with /metrics, as tritonclient reads it.
    assert stats.inference_stats.success.count == value(after, "torchwire_request_success_total", **labels)
    assert stats.inference_stats.fail.count == sum(
        value(after, "torchwire_request_failure_total", **labels, reason=r) for r in FAILURE_REASONS
    )
    assert stats.execution_count == value(after, "torchwire_execution_count_total", **labels)
    client = triton.InferenceServerClient(observed.target)
    try:
        seen = client.get_inference_statistics("spin", as_json=True)["model_stats"][0]
    finally:
        client.close()
    assert int(seen["inference_stats"]["success"]["count"]) == stats.inference_stats.success.count
    assert int(seen["inference_count"]) == stats.inference_count
    assert value(after, "torchwire_batch_size_count", **labels) == stats.execution_count


def test_spans_follow_the_incoming_traceparent(observed: RunningServer) -> None:
    SPANS.clear()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    with grpc.insecure_channel(observed.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        infer(stub, 0, 1.0, metadata=(("traceparent", parent),)).result()
    spans = {s.name: s for s in SPANS.get_finished_spans()}
    rpc = spans["inference.GRPCInferenceService/ModelInfer"]
    assert format(rpc.context.trace_id, "032x") == trace_id
    assert rpc.parent is not None and format(rpc.parent.span_id, "016x") == "00f067aa0ba902b7"
    for child in ("queue", "compute"):
        assert spans[child].parent is not None and spans[child].parent.span_id == rpc.context.span_id
        assert spans[child].start_time <= spans[child].end_time
    assert spans["queue"].end_time <= spans["compute"].end_time


def test_access_log_names_model_status_and_peer(
    observed: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="torchwire.access"),
        Client(observed.target, timeout=60) as client,
    ):
        client.predict("spin", {"INPUT__0": np.array([[0.0, 1.0]], np.float32)})
        with pytest.raises(InferenceError):
            client.predict("spin", {"INPUT__0": np.zeros((1, 3), np.float32)})
    lines = [r.getMessage() for r in caplog.records if r.name == "torchwire.access"]
    assert any("model=spin version=1 status=OK" in line and "peer=ipv4:127.0.0.1:" in line for line in lines)
    assert any("status=INVALID_ARGUMENT" in line for line in lines)


def test_three_servers_each_count_a_fair_share(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(running_server(metrics_port=-1, torch_threads=1)) for _ in range(3)]
        a = np.ones((1, 16), np.int32)
        with Client([s.target for s in servers], round_robin=True, timeout=60) as client:
            for _ in range(150):
                client.predict("simple", {"INPUT0": a, "INPUT1": a})
        shares = [
            value(scrape(s), "torchwire_request_success_total", model="simple", version="1") for s in servers
        ]
    assert sum(shares) == 150
    assert all(30 <= share <= 70 for share in shares), shares


def test_max_connection_age_makes_clients_reconnect_and_keep_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        running_server(max_connection_age_s=0.3, access_log_sample=1.0) as server,
        caplog.at_level(logging.INFO, logger="torchwire.access"),
        Client(server.target, timeout=60) as client,
    ):
        a = np.ones((1, 16), np.int32)
        peers: set[str] = set()
        deadline = time.monotonic() + 60
        while len(peers) < 2:  # a second client port means the connection was closed and remade
            assert time.monotonic() < deadline, "the client never reconnected"
            assert client.predict("simple", {"INPUT0": a, "INPUT1": a})["OUTPUT0"][0, 0] == 2
            peers = {m.group(1) for r in caplog.records if (m := re.search(r"peer=(\S+)", r.getMessage()))}
