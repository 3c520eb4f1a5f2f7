"""Method handlers built from service descriptors, with request parsing that cannot fail silently.

grpc's generated registration parses requests before any of our code runs, so an undecodable
message would surface as UNKNOWN. Here parsing yields an `Undecodable` marker instead, carrying the
error the handler raises (INVALID_ARGUMENT naming the message type); streams see the marker in line.
Every method leaves through the one error boundary, status.guarded.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from ..core.admission import Admission
from ..core.errors import InvalidRequest, LimitExceeded, TorchwireError
from ..core.limits import Gate, setting_name
from .status import guarded


class Undecodable:
    """Stands in for a request that is not a valid message of the expected type, or is too large."""

    def __init__(self, error: TorchwireError) -> None:
        self.error = error


def _parser(cls: type[Message], max_bytes: int) -> Callable[[bytes], Message | Undecodable]:
    name = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> Message | Undecodable:
        if len(data) > max_bytes:
            return Undecodable(
                LimitExceeded(
                    f"{name} of {len(data)} bytes is over the limit of {max_bytes} set by "
                    f"{setting_name('max_message_bytes')}"
                )
            )
        try:
            return cls.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            return Undecodable(InvalidRequest(f"request is not a valid {name} message: {exc}"))

    return parse


def _refuse_undecodable(request: Any) -> None:
    if isinstance(request, Undecodable):
        raise request.error


def _guard_unary(behavior: Any, gate: Gate | None, admission: Admission | None) -> Any:
    @functools.wraps(behavior)
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if admission is not None:
            admission.admit()
        _refuse_undecodable(request)
        if gate is None:
            return await behavior(request, context)
        gate.enter()
        try:
            return await behavior(request, context)
        finally:
            gate.exit()

    return handler


def _guard_unary_stream(behavior: Any) -> Any:
    # Servicers answer a server stream either as an async generator (ours) or as a coroutine that
    # calls context.write (grpc_health's Watch); grpc.aio accepts both, and so must the guard.
    if inspect.isasyncgenfunction(behavior):

        @functools.wraps(behavior)
        async def generate(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            _refuse_undecodable(request)
            async for response in behavior(request, context):
                yield response

        return generate

    @functools.wraps(behavior)
    async def write(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        _refuse_undecodable(request)
        await behavior(request, context)

    return write


def _guard_stream_stream(behavior: Any, admission: Admission | None) -> Any:
    if admission is None:
        return behavior

    @functools.wraps(behavior)
    async def serve(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        admission.admit()
        async for response in behavior(request_iterator, context):
            yield response

    return serve


def _method_handler(
    method: MethodDescriptor, servicer: Any, max_bytes: int, gate: Gate | None, admission: Admission | None
) -> grpc.RpcMethodHandler[Any, Any]:
    parse = _parser(message_factory.GetMessageClass(method.input_type), max_bytes)
    serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
    behavior = getattr(servicer, method.name)
    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler(
            guarded(_guard_stream_stream(behavior, admission)), parse, serialize
        )
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(guarded(behavior), parse, serialize)
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(guarded(_guard_unary_stream(behavior)), parse, serialize)
    return grpc.unary_unary_rpc_method_handler(
        guarded(_guard_unary(behavior, gate, admission)), parse, serialize
    )


def service_handler(
    service: ServiceDescriptor,
    servicer: Any,
    *,
    max_bytes: int,
    gate: Gate | None = None,
    admission: Admission | None = None,
) -> grpc.GenericRpcHandler[Any, Any]:
    """Every method of `service`, served by the same-named method of `servicer`; unary calls count
    against `gate` (concurrent RPCs) when given; new unary calls and bidirectional streams are
    refused once `admission` closes."""
    handlers = {
        method.name: _method_handler(method, servicer, max_bytes, gate, admission)
        for method in service.methods
    }
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
