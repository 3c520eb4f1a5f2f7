"""The I/O-free core both clients share: build requests, decode responses, map gRPC errors."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypedDict

import grpc
import numpy as np
import numpy.typing as npt

from . import _codec
from ._errors import InferenceError
from ._proto import grpc_service_pb2 as pb

DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024


class _UseClientDefault:
    """Marks a per-call setting left to the client's default (None means "no deadline")."""

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT: Final = _UseClientDefault()
Timeout = float | None | _UseClientDefault


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a variable dimension (the batch dimension included)


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


def channel_options(
    max_message_bytes: int,
    extra: Sequence[tuple[str, Any]] = (),
    *,
    retries: int = 5,
    round_robin: bool = False,
    health_check: bool = True,
    keepalive_s: float | None = None,
) -> list[tuple[str, Any]]:
    """Message size limits, retries, optional round_robin (health-checked) and keepalive; `extra` wins."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 1 if retries > 1 else 0),
        (
            "grpc.service_config",
            service_config(round_robin=round_robin, health_check=health_check, max_attempts=retries),
        ),
    ]
    if keepalive_s is not None:
        options += [
            ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
    return options + list(extra)


def resolve_timeout(timeout: Timeout, default: float | None) -> float | None:
    return default if isinstance(timeout, _UseClientDefault) else timeout


def build_infer_request(
    model: str,
    inputs: Mapping[str, npt.NDArray[Any]],
    *,
    version: str | None = None,
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    priority: int = 0,
    queue_timeout: float | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest; `priority` and `queue_timeout` (seconds) become Triton's `priority` and
    `timeout` (µs) parameters, which the server's queue policy applies."""
    request = pb.ModelInferRequest(model_name=model, model_version=version or "", id=request_id)
    if priority:
        request.parameters["priority"].int64_param = priority
    if queue_timeout is not None:
        request.parameters["timeout"].int64_param = max(1, round(queue_timeout * 1e6))
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = _codec.datatype_of(array)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(_codec.to_raw(array, datatype))
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def decode_output(response: pb.ModelInferResponse, index: int) -> npt.NDArray[Any]:
    tensor = response.outputs[index]
    if index < len(response.raw_output_contents):
        array = _codec.from_raw(
            tensor.datatype, tensor.shape, response.raw_output_contents[index], tensor.name
        )
    else:
        array = _codec.from_contents(tensor.datatype, tensor.shape, tensor.contents, tensor.name)
    return _codec.bf16_to_float32(array) if tensor.datatype == "BF16" else array


def decode_infer_response(response: pb.ModelInferResponse) -> dict[str, npt.NDArray[Any]]:
    """Outputs by name, as numpy arrays viewing the response's bytes (BF16 widened to float32)."""
    return {tensor.name: decode_output(response, i) for i, tensor in enumerate(response.outputs)}


def _tensor_metadata(
    tensors: Sequence[pb.ModelMetadataResponse.TensorMetadata],
) -> tuple[TensorMetadata, ...]:
    return tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in tensors)


def model_metadata(response: pb.ModelMetadataResponse) -> ModelMetadata:
    return ModelMetadata(
        name=response.name,
        versions=tuple(response.versions),
        platform=response.platform,
        inputs=_tensor_metadata(response.inputs),
        outputs=_tensor_metadata(response.outputs),
    )


def server_metadata(response: pb.ServerMetadataResponse) -> ServerMetadata:
    return ServerMetadata(response.name, response.version, tuple(response.extensions))


@dataclass(frozen=True, slots=True)
class StreamResult:
    """One answer on a stream: the outputs, or (with errors="return") the error, of one request."""

    index: int  # position of the request in the input iterable
    request_id: str
    outputs: dict[str, npt.NDArray[Any]] | None
    error: InferenceError | None

    def unwrap(self) -> dict[str, npt.NDArray[Any]]:
        """The outputs, or the request's error raised."""
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


def stream_request_id(index: int) -> str:
    return str(index)


def decode_stream_response(response: pb.ModelStreamInferResponse) -> StreamResult:
    answer = response.infer_response
    index = int(answer.id) if answer.id.isascii() and answer.id.isdigit() and len(answer.id) < 19 else -1
    if response.error_message:
        name = answer.parameters["status_code"].string_param if "status_code" in answer.parameters else ""
        code = getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)
        error = InferenceError(code, response.error_message, request_id=answer.id)
        return StreamResult(index, answer.id, None, error)
    try:
        outputs = decode_infer_response(answer)
    except _codec.CodecError as exc:
        error = InferenceError(grpc.StatusCode.INTERNAL, f"undecodable response: {exc}", request_id=answer.id)
        return StreamResult(index, answer.id, None, error)
    return StreamResult(index, answer.id, outputs, None)


class Reorder:
    """Releases stream results in input order, holding early ones until their turn."""

    def __init__(self) -> None:
        self._next = 0
        self._held: dict[int, StreamResult] = {}

    def push(self, result: StreamResult) -> list[StreamResult]:
        self._held[result.index] = result
        ready: list[StreamResult] = []
        while self._next in self._held:
            ready.append(self._held.pop(self._next))
            self._next += 1
        return ready


def service_config(*, round_robin: bool, health_check: bool = True, max_attempts: int = 5) -> str:
    """gRPC service config: retries, and with round_robin, client-side health checking.

    Every inference RPC is retried on UNAVAILABLE and CANCELLED (inference is idempotent). A server
    that shuts down cancels the calls its transport received but had not yet handed to a handler, so
    CANCELLED from a server means "never ran", as Istio's default retry policy assumes. A caller's own
    cancellation is never retried. gRPC allows 2 to 5 attempts; `max_attempts` below 2 turns retries
    off.

    With round_robin and health_check the channel watches each address's grpc.health.v1 status
    (service "", which torchwire ties to readiness) and picks only SERVING ones, so a draining replica
    stops getting calls before it closes. A server without the health service counts as SERVING.
    """
    config: dict[str, Any] = {}
    if max_attempts >= 2:
        retry = {
            "maxAttempts": min(max_attempts, 5),
            "initialBackoff": "0.05s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
        }
        config["methodConfig"] = [
            {"name": [{"service": "inference.GRPCInferenceService"}], "retryPolicy": retry}
        ]
    if round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        if health_check:
            config["healthCheckConfig"] = {"serviceName": ""}
    return json.dumps(config)


def channel_target(target: str | Sequence[str]) -> str:
    """One gRPC target; a list of "ip:port" becomes an ipv4:/ipv6: address list gRPC balances over."""
    if isinstance(target, str):
        return target
    addresses = list(target)
    if not addresses:
        raise ValueError("empty target list")
    if len(addresses) == 1:
        return addresses[0]
    scheme = "ipv6" if all(a.startswith("[") for a in addresses) else "ipv4"
    return f"{scheme}:" + ",".join(addresses)


@dataclass(frozen=True, slots=True)
class ChannelPlan:
    """Everything both clients need to open their channel, worked out once without I/O."""

    target: str
    options: list[tuple[str, Any]]
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...] | None


class ChannelOptions(TypedDict, total=False):
    """How Client and AsyncClient reach their servers: their keyword arguments besides `timeout`.

    max_message_bytes  largest message sent or received (64 MiB)
    credentials        any grpc.ChannelCredentials; or tls_ca (+ tls_cert and tls_key for mutual
                       TLS) as PEM file paths
    token              sent as `authorization: Bearer <token>` on every call
    retries            attempts in all for a call answered UNAVAILABLE or CANCELLED (5; 1 turns
                       retries off)
    round_robin        spread calls over every address of the target
    health_check       with round_robin, skip addresses whose grpc.health.v1 status is not SERVING
                       (True; turn off for servers that require the token for health)
    keepalive_s        ping idle connections this often, to keep streams alive through proxies
    options            extra grpc channel options; they win over the ones above
    """

    max_message_bytes: int
    credentials: grpc.ChannelCredentials | None
    tls_ca: str | Path | None
    tls_cert: str | Path | None
    tls_key: str | Path | None
    token: str | None
    retries: int
    round_robin: bool
    health_check: bool
    keepalive_s: float | None
    options: Sequence[tuple[str, Any]]


def plan_channel(
    target: str | Sequence[str],
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    credentials: grpc.ChannelCredentials | None = None,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    token: str | None = None,
    retries: int = 5,
    round_robin: bool = False,
    health_check: bool = True,
    keepalive_s: float | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> ChannelPlan:
    if credentials is None and (tls_ca or tls_cert or tls_key):
        credentials = tls_credentials(tls_ca, tls_cert, tls_key)
    return ChannelPlan(
        channel_target(target),
        channel_options(
            max_message_bytes,
            options,
            retries=retries,
            round_robin=round_robin,
            health_check=health_check,
            keepalive_s=keepalive_s,
        ),
        credentials,
        auth_metadata(token),
    )


def tls_credentials(
    ca: str | Path | None, cert: str | Path | None, key: str | Path | None
) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files: a CA to trust, and a certificate + key for mutual TLS."""
    if (cert is None) != (key is None):
        raise ValueError("mutual TLS needs both tls_cert and tls_key")

    def read(path: str | Path | None) -> bytes | None:
        return Path(path).read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


_OWN_SIZE_LIMIT = ("CLIENT: Sent message larger than max", "CLIENT: Received message larger than max")


def closed_client() -> InferenceError:
    """What a call on a closed client raises (grpc itself raises a bare ValueError)."""
    return InferenceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "the client is closed: make calls inside its `with` block, or create a new client",
    )


@contextlib.contextmanager
def mapped_errors(request_id: str = "") -> Iterator[None]:
    """Turn gRPC and codec failures into InferenceError, keeping the original as the cause."""
    try:
        yield
    except grpc.RpcError as exc:
        code, details = grpc.StatusCode.UNKNOWN, None
        if isinstance(exc, grpc.aio.AioRpcError | grpc.Call):
            code, details = exc.code(), exc.details()
        message = details or str(exc)
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and any(own in message for own in _OWN_SIZE_LIMIT):
            # gRPC names no setting; the server's own message names its flag, so this names ours.
            message += "; the client's limit: raise it with Client(..., max_message_bytes=N)"
        raise InferenceError(code, message, request_id=request_id) from exc
    except _codec.CodecError as exc:
        raise InferenceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), request_id=request_id) from exc
