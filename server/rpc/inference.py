"""inference.GRPCInferenceService: thin adapters from gRPC to the core (decode, call, encode).

Errors leave through status.guarded, which handlers.py wraps around every method.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import grpc
import grpc.aio
from opentelemetry import trace

from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

from ..core.errors import Unsupported
from ..core.limits import Gate
from ..core.service import InferenceCore
from ..observability.logs import AccessLog
from ..observability.tracing import Tracing
from .status import status_of
from .streaming import serve_stream

Context = grpc.aio.ServicerContext[Any, Any]


def _not_yet(method: str) -> Any:
    async def handler(self: Any, request: Any, context: Context) -> None:
        raise Unsupported(f"{method} is not supported by this torchwire server")

    handler.__name__ = method
    return handler


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        core: InferenceCore,
        stream_max_in_flight: int,
        tracing: Tracing | None = None,
        access_log: AccessLog | None = None,
        streams: Gate | None = None,
    ) -> None:
        self._streams = streams or Gate(0, "max_streams", "streams")
        self._core = core
        self._stream_max_in_flight = stream_max_in_flight
        self._tracing = tracing or Tracing(enabled=False)
        self._access = access_log or AccessLog(0.0)

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return self._core.server_live()

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return self._core.server_ready()

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return self._core.model_ready(request)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return self._core.server_metadata()

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        return self._core.model_metadata(request)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        return self._core.model_config(request)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        return self._core.repository_index(request)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        return await self._core.load_model(request)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        return await self._core.unload_model(request)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        if not self._tracing.enabled and not self._access.sample:
            return await self._core.infer(request)  # the plain path: nothing observed per request
        return await self._observed_infer(request, context)

    async def _observed_infer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        start = time.perf_counter()
        code = "OK"
        version = request.model_version  # "" (the highest) until the answer names the one that ran
        # grpc.aio hands metadata as (key, value) pairs; its stubs say a Mapping.
        metadata = cast("Sequence[tuple[str, Any]] | None", context.invocation_metadata())
        with self._tracing.rpc_span("ModelInfer", metadata) as span:
            try:
                response = await self._core.infer(
                    request, lambda completed: self._tracing.record(span, request.model_name, completed)
                )
                version = response.model_version
                return response
            except Exception as exc:
                code = status_of(exc)[0].name
                if span is not None:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, code))
                raise
            finally:
                if self._access.wanted():
                    elapsed = time.perf_counter() - start
                    self._access.log(
                        "ModelInfer", request.model_name, version, code, elapsed, context.peer(), request.id
                    )

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        return self._core.model_statistics(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        self._streams.enter()
        try:
            async for response in serve_stream(self._core, request_iterator, self._stream_max_in_flight):
                yield response
        finally:
            self._streams.exit()

    SystemSharedMemoryStatus = _not_yet("SystemSharedMemoryStatus")
    SystemSharedMemoryRegister = _not_yet("SystemSharedMemoryRegister")
    SystemSharedMemoryUnregister = _not_yet("SystemSharedMemoryUnregister")
    CudaSharedMemoryStatus = _not_yet("CudaSharedMemoryStatus")
    CudaSharedMemoryRegister = _not_yet("CudaSharedMemoryRegister")
    CudaSharedMemoryUnregister = _not_yet("CudaSharedMemoryUnregister")
    TraceSetting = _not_yet("TraceSetting")
    LogSettings = _not_yet("LogSettings")
