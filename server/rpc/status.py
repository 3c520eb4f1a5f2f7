"""The one boundary where domain errors become gRPC statuses."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import grpc
import grpc.aio

from ..core import errors

log = logging.getLogger("torchwire.rpc")

STATUS: Final[dict[type[errors.TorchwireError], grpc.StatusCode]] = {
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ModelUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ModelExecutionError: grpc.StatusCode.INTERNAL,
    errors.Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    errors.NotAllowed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ConfigError: grpc.StatusCode.UNAVAILABLE,
}

INTERNAL_MESSAGE: Final = "internal server error (logged on the server)"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller sees; unexpected errors are logged once and stay private."""
    if isinstance(exc, errors.TorchwireError):
        return STATUS.get(type(exc), grpc.StatusCode.INTERNAL), str(exc)
    log.exception("unexpected error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]


def mapped(handler: Handler[R]) -> Handler[R]:
    """Wrap a unary servicer method so every exception leaves as its mapped status."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)

    return wrapper
