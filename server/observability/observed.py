"""One inference call as both ports observe it: a span (a child of the caller's W3C trace context)
with its queue and compute children, and a sampled access-log line with the status the caller saw.

`idle` says when none of it would run (tracing off, no access log sampled): the ports then call the
core directly and pay nothing per request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from torchwire.client._proto import grpc_service_pb2 as pb

from ..batching import Completed
from .logs import AccessLog
from .tracing import Tracing

Infer = Callable[[pb.ModelInferRequest, Callable[[Completed], None]], Awaitable[pb.ModelInferResponse]]


@dataclass(frozen=True, slots=True)
class Transport:
    system: str  # the span's rpc.system: "grpc", "http"
    method: str  # the access log's method: "ModelInfer", "HTTP infer"
    ok: str  # the status of an answer, as this transport says it: "OK", "200"
    status: Callable[[BaseException], str]  # the status an error leaves this transport with


class Observer:
    def __init__(self, tracing: Tracing, access: AccessLog, transport: Transport) -> None:
        self._tracing = tracing
        self._access = access
        self._transport = transport

    @property
    def idle(self) -> bool:
        return not self._tracing.enabled and not self._access.sample

    async def infer(
        self,
        infer: Infer,
        request: pb.ModelInferRequest,
        metadata: Sequence[tuple[str, Any]] | None,
        peer: str,
    ) -> pb.ModelInferResponse:
        """`infer(request)`, traced and access-logged; `metadata` carries the caller's trace context."""
        transport = self._transport
        start = time.perf_counter()
        code = transport.ok
        version = request.model_version  # "" (the highest) until the answer names the one that ran
        with self._tracing.rpc_span("ModelInfer", metadata, system=transport.system) as span:
            try:
                response = await infer(
                    request, lambda completed: self._tracing.record(span, request.model_name, completed)
                )
                version = response.model_version
                return response
            except Exception as exc:
                code = transport.status(exc)
                if span is not None:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, code))
                raise
            finally:
                if self._access.wanted():
                    elapsed = time.perf_counter() - start
                    self._access.log(
                        transport.method, request.model_name, version, code, elapsed, peer, request.id
                    )
