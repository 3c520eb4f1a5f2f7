"""The one boundary where domain errors become HTTP statuses, answered in the v2 REST error format.

The table gives each `core.errors` class the status the standard gRPC-to-HTTP mapping (as
grpc-gateway publishes it) gives the code rpc/status.py maps it to, so an error means the same thing
on both ports. Only a body over the size limit is told apart: 413, where gRPC says RESOURCE_EXHAUSTED.
What a caller may read of an error, and that an unexpected one is logged once, is rpc/status.py's
rule, used here as it is.
"""

from __future__ import annotations

import json
from typing import Final

from aiohttp import web

from ..core import errors
from ..rpc import status as rpc_status


class BodyTooLarge(errors.LimitExceeded):
    """A request body over max_message_bytes (HTTP has a status of its own for it)."""


STATUS: Final[dict[type[errors.TorchwireError], int]] = {
    BodyTooLarge: 413,
    errors.ModelNotFound: 404,
    errors.ModelUnavailable: 503,
    errors.InvalidRequest: 400,
    errors.QueueFull: 429,
    errors.LimitExceeded: 429,
    errors.DeadlineExpired: 504,
    errors.ModelExecutionError: 500,
    errors.Unsupported: 501,
    errors.NotAllowed: 400,
    errors.ConfigError: 503,
    errors.Unauthenticated: 401,
    errors.ShuttingDown: 503,
}


def code_of(exc: BaseException) -> int:
    return STATUS.get(type(exc), 500) if isinstance(exc, errors.TorchwireError) else 500


def json_error(status: int, message: str) -> web.Response:
    """An error as the v2 REST API answers it: the status, and `{"error": message}`."""
    return web.Response(
        status=status, body=json.dumps({"error": message}).encode(), content_type="application/json"
    )


def error_response(exc: BaseException) -> web.Response:
    """The answer to a request that raised `exc`."""
    _, message = rpc_status.answer(exc)  # logs an unexpected error, once, and keeps it private
    response = json_error(code_of(exc), message)
    if isinstance(exc, errors.Unauthenticated):
        response.headers["WWW-Authenticate"] = "Bearer"
    return response
