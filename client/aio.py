"""The asyncio client: I/O only, the twin of sync.Client over the shared pure core in _calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Unpack

import grpc
import grpc.aio
import numpy.typing as npt

from . import _calls
from ._calls import USE_CLIENT_DEFAULT, ModelMetadata, ServerMetadata, StreamResult, Timeout
from ._proto import grpc_service_pb2 as pb
from ._proto import grpc_service_pb2_grpc as pb_grpc
from ._proto import model_config_pb2 as config_pb


class AsyncClient:
    """An asyncio client for one torchwire (or any Open Inference Protocol v2) server.

    Create it inside the running event loop (grpc.aio channels bind to the loop they start in).
    Targets, retries, round_robin and credentials work as for Client.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        timeout: float | None = None,
        **channel: Unpack[_calls.ChannelOptions],
    ) -> None:
        plan = _calls.plan_channel(target, **channel)
        self._metadata = plan.metadata
        self._channel = (
            grpc.aio.secure_channel(plan.target, plan.credentials, plan.options)
            if plan.credentials is not None
            else grpc.aio.insecure_channel(plan.target, plan.options)
        )
        self._stub: pb_grpc.GRPCInferenceServiceAsyncStub = pb_grpc.GRPCInferenceServiceStub(  # type: ignore[assignment]
            self._channel
        )
        self._timeout = timeout
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        await self._channel.close(None)

    def _call_options(self, timeout: Timeout) -> dict[str, Any]:
        if self._closed:
            raise _calls.closed_client()
        return {"timeout": _calls.resolve_timeout(timeout, self._timeout), "metadata": self._metadata}

    async def predict(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        request_id: str = "",
        priority: int = 0,
        queue_timeout: float | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run `model` on named numpy inputs; returns its outputs (all, or those named) by name.

        `priority` (1 is the highest; 0, the model's default level) and `queue_timeout` (seconds
        the request may wait in the model's queue) are Triton's per-request scheduling parameters."""
        with _calls.mapped_errors(request_id):
            request = _calls.build_infer_request(
                model,
                inputs,
                version=version,
                outputs=outputs,
                request_id=request_id,
                priority=priority,
                queue_timeout=queue_timeout,
            )
            response = await self._stub.ModelInfer(request, **self._call_options(timeout))
            return _calls.decode_infer_response(response)

    async def live(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> bool:
        with _calls.mapped_errors():
            response = await self._stub.ServerLive(pb.ServerLiveRequest(), **self._call_options(timeout))
            return response.live

    async def ready(
        self, model: str | None = None, *, version: str | None = None, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> bool:
        """Whether the server (no model named) or one model version is ready for inference."""
        with _calls.mapped_errors():
            if model is None:
                server = await self._stub.ServerReady(pb.ServerReadyRequest(), **self._call_options(timeout))
                return server.ready
            request = pb.ModelReadyRequest(name=model, version=version or "")
            return (await self._stub.ModelReady(request, **self._call_options(timeout))).ready

    async def server_metadata(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> ServerMetadata:
        with _calls.mapped_errors():
            request = pb.ServerMetadataRequest()
            return _calls.server_metadata(
                await self._stub.ServerMetadata(request, **self._call_options(timeout))
            )

    async def metadata(
        self, model: str, *, version: str | None = None, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> ModelMetadata:
        with _calls.mapped_errors():
            request = pb.ModelMetadataRequest(name=model, version=version or "")
            response = await self._stub.ModelMetadata(request, **self._call_options(timeout))
            return _calls.model_metadata(response)

    async def config(
        self, model: str, *, version: str | None = None, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> config_pb.ModelConfig:
        with _calls.mapped_errors():
            request = pb.ModelConfigRequest(name=model, version=version or "")
            return (await self._stub.ModelConfig(request, **self._call_options(timeout))).config

    async def repository_index(
        self, *, ready_only: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        with _calls.mapped_errors():
            request = pb.RepositoryIndexRequest(ready=ready_only)
            return list((await self._stub.RepositoryIndex(request, **self._call_options(timeout))).models)

    async def stream(
        self,
        model: str,
        inputs: AsyncIterable[Mapping[str, npt.NDArray[Any]]] | Iterable[Mapping[str, npt.NDArray[Any]]],
        *,
        ordered: bool = True,
        errors: Literal["raise", "return"] = "raise",
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        max_in_flight: int = 64,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> AsyncIterator[StreamResult]:
        """The asyncio twin of Client.stream, over an async or a plain iterable of inputs."""
        call = self._stub.ModelStreamInfer(**self._call_options(timeout))
        slots = asyncio.Semaphore(max_in_flight)

        async def write_all() -> None:
            index = 0
            async for item in _as_async(inputs):
                await slots.acquire()
                request = _calls.build_infer_request(
                    model, item, version=version, outputs=outputs, request_id=_calls.stream_request_id(index)
                )
                await call.write(request)
                index += 1
            await call.done_writing()

        writer = asyncio.get_running_loop().create_task(write_all())
        reorder = _calls.Reorder() if ordered else None
        try:
            with _calls.mapped_errors():
                async for response in call:
                    slots.release()
                    result = _calls.decode_stream_response(response)
                    for ready in reorder.push(result) if reorder is not None else [result]:
                        if ready.error is not None and errors == "raise":
                            raise ready.error
                        yield ready
                await writer  # a failure while building or writing requests surfaces here
        finally:
            writer.cancel()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer


async def _as_async(items: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
