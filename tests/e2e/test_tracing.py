"""`torchwire serve --trace --trace-exporter console|otlp` as a real process (the trace extra installed):
a ModelInfer that carries the caller's `traceparent` comes out as a span of the caller's trace, with
`queue` and `compute` children, on stdout or at an OTLP/gRPC collector."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from support.serving import ServeProcess, serve_process, wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
RPC_SPAN = "inference.GRPCInferenceService/ModelInfer"
# Export every 50 ms instead of every 5 s, so the test waits on spans, not on the batch timer.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str  # hex, as in traceparent
    span_id: str
    parent_id: str  # "" for a root span
    service: str
    attributes: dict[str, Any] = field(default_factory=dict)


def call_with_traceparent(server: ServeProcess) -> None:
    """One ModelInfer through tritonclient, as part of the caller's trace."""
    server.wait_for(r"server ready")
    client = triton.InferenceServerClient(server.target)
    try:
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [triton.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(a)
        headers = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
        result = client.infer("simple", inputs, headers=headers, client_timeout=60)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    finally:
        client.close()


def has_traced_call(spans: list[Span]) -> bool:
    return {RPC_SPAN, "queue", "compute"} <= {span.name for span in spans}


def assert_callers_trace(spans: list[Span]) -> None:
    by_name = {span.name: span for span in spans}
    rpc = by_name[RPC_SPAN]
    assert (rpc.trace_id, rpc.parent_id) == (TRACE_ID, CALLER_SPAN)
    assert rpc.attributes["torchwire.model"] == "simple"
    assert rpc.attributes["rpc.method"] == "ModelInfer"
    for child in ("queue", "compute"):
        assert (by_name[child].trace_id, by_name[child].parent_id) == (TRACE_ID, rpc.span_id), child
    assert {span.service for span in spans} == {"torchwire"}


def console_spans(stdout: str) -> list[Span]:
    """ConsoleSpanExporter prints each span as an indented JSON object; read them one after another."""
    decoder = json.JSONDecoder()
    spans: list[Span] = []
    position = 0
    text = stdout.strip()
    while position < len(text):
        try:
            record, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:  # the last object is still being written
            break
        spans.append(
            Span(
                record["name"],
                record["context"]["trace_id"].removeprefix("0x"),
                record["context"]["span_id"].removeprefix("0x"),
                (record["parent_id"] or "").removeprefix("0x"),
                record["resource"]["attributes"]["service.name"],
                record["attributes"],
            )
        )
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return spans


def test_console_exporter_prints_the_callers_trace_with_queue_and_compute() -> None:
    with serve_process(trace="true", trace_exporter="console", env=FAST_EXPORT) as server:
        call_with_traceparent(server)
        wait_until(lambda: has_traced_call(console_spans(server.text("stdout"))), "spans are printed")
        assert server.stop() == 0
    assert_callers_trace(console_spans(server.text("stdout")))


def _values(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP attributes (key, one-of value) as a dict; only string and int values are used here."""
    return {pair.key: pair.value.string_value or pair.value.int_value for pair in attributes}


class Collector(otlp_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def Export(
        self, request: otlp.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> otlp.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = _values(resource_spans.resource.attributes)["service.name"]
            for scope_spans in resource_spans.scope_spans:
                self.spans += [
                    Span(
                        span.name,
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                        service,
                        _values(span.attributes),
                    )
                    for span in scope_spans.spans
                ]
        return otlp.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    """The collector stand-in on a free 127.0.0.1 port."""
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    otlp_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(None)


def test_otlp_exporter_sends_the_callers_trace_to_a_collector(collector: tuple[Collector, int]) -> None:
    receiver, port = collector
    env = FAST_EXPORT | {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    with serve_process(trace="true", trace_exporter="otlp", env=env) as server:
        call_with_traceparent(server)
        wait_until(lambda: has_traced_call(receiver.spans), "the collector has the spans")
        assert server.stop() == 0
    assert_callers_trace(receiver.spans)
