"""The one boundary where domain errors become HTTP statuses, answered in the v2 REST error format.

The statuses follow the standard gRPC-to-HTTP mapping (as grpc-gateway publishes it) of the codes
rpc/status.py gives the same errors, so an error means the same thing on both ports. Only a body over
the size limit is told apart: 413, where gRPC says RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import json
import logging
from typing import Final

from aiohttp import web

from .. import errors

log = logging.getLogger("torchwire.http")


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
}

INTERNAL_MESSAGE: Final = "internal server error (logged on the server)"


def error_response(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=json.dumps({"error": message}).encode(), content_type="application/json"
    )


def code_of(exc: BaseException) -> int:
    return STATUS.get(type(exc), 500) if isinstance(exc, errors.TorchwireError) else 500


def status_of(exc: BaseException) -> tuple[int, str]:
    """The status and message a caller sees; unexpected errors are logged once and stay private."""
    if isinstance(exc, errors.TorchwireError):
        return code_of(exc), str(exc)
    log.exception("unexpected error while serving an HTTP request", exc_info=exc)
    return 500, INTERNAL_MESSAGE
