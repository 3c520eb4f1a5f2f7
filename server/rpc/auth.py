"""Bearer-token authentication for every RPC, compared in constant time; tokens are never logged.

Health stays open by default (Kubernetes probes carry no token); reflection follows a setting.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from ..core.errors import Unauthenticated
from .health import HEALTH_SERVICE
from .status import guarded

REFLECTION_PREFIX = "/grpc.reflection."
DENIED = "missing or invalid bearer token (send metadata `authorization: Bearer <token>`)"


def read_tokens(path: Path) -> list[bytes]:
    tokens = [line.strip() for line in path.read_text().splitlines()]
    found = [t.encode() for t in tokens if t and not t.startswith("#")]
    if not found:
        raise ValueError(f"auth_token_file {path} holds no token")
    return found


@guarded
async def _deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    raise Unauthenticated(DENIED)


def _denying(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_deny, **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_deny, **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_deny, **codec)
    return grpc.stream_stream_rpc_method_handler(_deny, **codec)


class TokenAuth(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in the stubs
    def __init__(self, tokens: list[bytes], *, protect_health: bool, protect_reflection: bool) -> None:
        self._tokens = tokens
        self._open: tuple[str, ...] = ()
        if not protect_health:
            self._open += (f"/{HEALTH_SERVICE}/",)
        if not protect_reflection:
            self._open += (REFLECTION_PREFIX,)

    def _valid(self, metadata: Any) -> bool:
        given = b""
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                given = value[len("Bearer ") :].encode()
        valid = False
        for token in self._tokens:  # no early exit: the time taken does not depend on which matched
            valid |= hmac.compare_digest(given, token)
        return valid and bool(given)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if (
            handler is None
            or details.method.startswith(self._open)
            or self._valid(details.invocation_metadata)
        ):
            return handler
        return _denying(handler)
