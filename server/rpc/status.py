"""The one boundary where domain errors become gRPC statuses.

Every method of every service goes through `guarded` (handlers.py wraps them all, auth.py its
refusals): a TorchwireError leaves as its status and its own message; anything else is a bug,
logged here once with its traceback and answered INTERNAL with a fixed message.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, NoReturn

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
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
}

INTERNAL_MESSAGE: Final = "internal server error (logged on the server)"

Context = grpc.aio.ServicerContext[Any, Any]


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller sees for `exc`; unexpected errors keep their details private."""
    if isinstance(exc, errors.TorchwireError):
        return STATUS.get(type(exc), grpc.StatusCode.INTERNAL), str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def answer(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """`status_of`, for an error that ends here: an unexpected one is logged (the only place that does)."""
    if not isinstance(exc, errors.TorchwireError):
        log.exception("unexpected error while serving a request", exc_info=exc)
    return status_of(exc)


async def _abort(context: Context, exc: Exception) -> NoReturn:
    code, message = answer(exc)
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # grpc.aio's abort always raises


def guarded(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """`behavior` (any of grpc.aio's four method shapes, or a coroutine that calls context.write),
    with every exception leaving as its mapped status."""
    if inspect.isasyncgenfunction(behavior):

        @functools.wraps(behavior)
        async def generate(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc)

        return generate

    call: Callable[[Any, Context], Awaitable[Any]] = behavior

    @functools.wraps(behavior)
    async def respond(request: Any, context: Context) -> Any:
        try:
            return await call(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    return respond
