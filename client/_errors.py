"""The client's exceptions.

InferenceError            any failed call: carries the gRPC status code and the server's message
 └─ (code tells the cause: NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE, DEADLINE_EXCEEDED, ...)
"""

from __future__ import annotations

import grpc


class InferenceError(Exception):
    """A call the server (or the channel) answered with a non-OK status."""

    def __init__(self, code: grpc.StatusCode, message: str, *, request_id: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
