"""Method handlers built from service descriptors, with request parsing that cannot fail silently.

grpc's generated registration parses requests before any of our code runs, so an undecodable
message would surface as UNKNOWN. Here parsing yields an `Undecodable` marker instead, and the
handler answers it with INVALID_ARGUMENT naming the message type; streams see the marker in line.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message


class Undecodable:
    """Stands in for a request whose bytes are not a valid message of the expected type."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.message = f"request is not a valid {type_name} message: {error}"


def _parser(cls: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    def parse(data: bytes) -> Message | Undecodable:
        try:
            return cls.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            return Undecodable(cls.DESCRIPTOR.full_name, exc)

    return parse


def _guard_unary(behavior: Any) -> Any:
    @functools.wraps(behavior)
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return handler


def _guard_unary_stream(behavior: Any) -> Any:
    @functools.wraps(behavior)
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async for response in behavior(request, context):
            yield response

    return handler


def _method_handler(method: MethodDescriptor, servicer: Any) -> grpc.RpcMethodHandler:
    parse = _parser(message_factory.GetMessageClass(method.input_type))
    serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
    behavior = getattr(servicer, method.name)
    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, parse, serialize)
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, parse, serialize)
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(_guard_unary_stream(behavior), parse, serialize)
    return grpc.unary_unary_rpc_method_handler(_guard_unary(behavior), parse, serialize)


def service_handler(service: ServiceDescriptor, servicer: Any) -> grpc.GenericRpcHandler:
    """Every method of `service`, served by the same-named method of `servicer`."""
    handlers = {method.name: _method_handler(method, servicer) for method in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
