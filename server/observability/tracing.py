"""OpenTelemetry spans: one per RPC (its parent taken from an incoming W3C `traceparent`), with
`queue` and `compute` children built after the fact from the scheduler's timestamps.

Off by default: with tracing off nothing here runs on the request path. Only opentelemetry-api (in
the server extra) is needed to trace; the `console` and `otlp` exporters need the trace extra.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..batching import Completed
from ..extras import needs

_PROPAGATOR = TraceContextTextMapPropagator()


def configure_exporter(kind: str) -> Callable[[], None] | None:
    """Install an SDK tracer provider for the `console` or `otlp` exporter ("none" leaves the process's).

    Returns what flushes and stops it at shutdown. Both exporters need the trace extra: without it
    this raises MissingExtra.
    """
    if kind == "none":
        return None
    with needs("trace", f"torchwire serve --trace-exporter {kind}"):
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

        exporter: SpanExporter
        if kind == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()

    # Named `torchwire` in the collector unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say else.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "torchwire"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider.shutdown


class Tracing:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._tracer = trace.get_tracer("torchwire") if enabled else None
        # Scheduler timestamps are monotonic; spans need wall-clock time.
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    @contextlib.contextmanager
    def rpc_span(
        self, method: str, metadata: Sequence[tuple[str, Any]] | None, *, system: str = "grpc"
    ) -> Iterator[trace.Span | None]:
        """A span for one call; `metadata` is gRPC's, or HTTP's headers with lowercase names."""
        if self._tracer is None:
            yield None
            return
        carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
        parent = _PROPAGATOR.extract(carrier)
        token = otel_context.attach(parent)
        try:
            with self._tracer.start_as_current_span(
                f"inference.GRPCInferenceService/{method}" if system == "grpc" else f"{system} {method}",
                kind=trace.SpanKind.SERVER,
            ) as span:
                span.set_attribute("rpc.system", system)
                span.set_attribute("rpc.method", method)
                yield span
        finally:
            otel_context.detach(token)

    def record(self, span: trace.Span | None, model: str, completed: Completed) -> None:
        """Children of the RPC span for the time queued and the time computing (in its batch)."""
        if self._tracer is None or span is None:
            return
        span.set_attribute("torchwire.model", model)
        parent = trace.set_span_in_context(span)
        for name, start, end in (
            ("queue", completed.queued_ns, completed.started_ns),
            ("compute", completed.started_ns, completed.finished_ns),
        ):
            child = self._tracer.start_span(name, context=parent, start_time=start + self._offset_ns)
            child.end(end_time=end + self._offset_ns)
