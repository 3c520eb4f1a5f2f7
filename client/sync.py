"""The blocking client: I/O only, over the shared pure core in _calls."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Unpack

import grpc
import numpy.typing as npt

from . import _calls
from ._calls import USE_CLIENT_DEFAULT, ModelMetadata, ServerMetadata, StreamResult, Timeout
from ._proto import grpc_service_pb2 as pb
from ._proto import grpc_service_pb2_grpc as pb_grpc
from ._proto import model_config_pb2 as config_pb


class Client:
    """A blocking client for one torchwire (or any Open Inference Protocol v2) server.

    `target` is a gRPC target ("host:port", or "dns:///name:port" with round_robin=True to spread
    calls over every address the name resolves to) or a list of "ip:port" addresses. `timeout` is
    the default deadline of each call. The other keyword arguments (TLS, token, retries, round_robin,
    health_check, keepalive_s, options) are listed in `ChannelOptions`. Calls answered UNAVAILABLE or
    CANCELLED are retried with exponential backoff (inference is idempotent).
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
            grpc.secure_channel(plan.target, plan.credentials, plan.options)
            if plan.credentials is not None
            else grpc.insecure_channel(plan.target, plan.options)
        )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._timeout = timeout
        self._closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    def _call_options(self, timeout: Timeout) -> dict[str, Any]:
        if self._closed:
            raise _calls.closed_client()
        return {"timeout": _calls.resolve_timeout(timeout, self._timeout), "metadata": self._metadata}

    def predict(
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
            response = self._stub.ModelInfer(request, **self._call_options(timeout))
            return _calls.decode_infer_response(response)

    def live(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> bool:
        with _calls.mapped_errors():
            return self._stub.ServerLive(pb.ServerLiveRequest(), **self._call_options(timeout)).live

    def ready(
        self, model: str | None = None, *, version: str | None = None, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> bool:
        """Whether the server (no model named) or one model version is ready for inference."""
        with _calls.mapped_errors():
            if model is None:
                return self._stub.ServerReady(pb.ServerReadyRequest(), **self._call_options(timeout)).ready
            request = pb.ModelReadyRequest(name=model, version=version or "")
            return self._stub.ModelReady(request, **self._call_options(timeout)).ready

    def server_metadata(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> ServerMetadata:
        with _calls.mapped_errors():
            response = self._stub.ServerMetadata(pb.ServerMetadataRequest(), **self._call_options(timeout))
            return _calls.server_metadata(response)

    def metadata(
        self, model: str, *, version: str | None = None, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> ModelMetadata:
        with _calls.mapped_errors():
            request = pb.ModelMetadataRequest(name=model, version=version or "")
            return _calls.model_metadata(self._stub.ModelMetadata(request, **self._call_options(timeout)))

    def config(
        self, model: str, *, version: str | None = None, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> config_pb.ModelConfig:
        with _calls.mapped_errors():
            request = pb.ModelConfigRequest(name=model, version=version or "")
            return self._stub.ModelConfig(request, **self._call_options(timeout)).config

    def repository_index(
        self, *, ready_only: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        with _calls.mapped_errors():
            request = pb.RepositoryIndexRequest(ready=ready_only)
            return list(self._stub.RepositoryIndex(request, **self._call_options(timeout)).models)

    def stream(
        self,
        model: str,
        inputs: Iterable[Mapping[str, npt.NDArray[Any]]],
        *,
        ordered: bool = True,
        errors: Literal["raise", "return"] = "raise",
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        max_in_flight: int = 64,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> Iterator[StreamResult]:
        """Send every item of `inputs` on one ModelStreamInfer stream, up to `max_in_flight` at once.

        Yields a StreamResult per request: in input order when `ordered`, else as each completes.
        A failed request raises its InferenceError and ends the stream (`errors="raise"`), or is
        yielded with `.error` set while the stream goes on (`errors="return"`).
        """
        slots = threading.Semaphore(max_in_flight)
        closed = threading.Event()

        def requests() -> Iterator[Any]:
            for index, item in enumerate(inputs):
                while not slots.acquire(timeout=0.1):
                    if closed.is_set():
                        return
                if closed.is_set():
                    return
                yield _calls.build_infer_request(
                    model, item, version=version, outputs=outputs, request_id=_calls.stream_request_id(index)
                )

        reorder = _calls.Reorder() if ordered else None
        call = self._stub.ModelStreamInfer(requests(), **self._call_options(timeout))
        try:
            with _calls.mapped_errors():
                for response in call:
                    slots.release()
                    result = _calls.decode_stream_response(response)
                    for ready in reorder.push(result) if reorder is not None else [result]:
                        if ready.error is not None and errors == "raise":
                            raise ready.error
                        yield ready
        finally:
            closed.set()
            call.cancel()  # type: ignore[no-untyped-call]
