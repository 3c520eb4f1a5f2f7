"""Closing a server to new calls before it stops, for every transport alike."""

from __future__ import annotations

import time

from .errors import ShuttingDown


class Admission:
    """Whether new calls are taken, on every port. Once closed (the server is stopping), each new call
    is refused with ShuttingDown (gRPC UNAVAILABLE, HTTP 503): "try another replica".

    Why refuse rather than let grpc stop: calls gRPC had received but not yet handed to the
    application when `server.stop()` runs are cancelled (CANCELLED, which most clients do not
    retry). Closing first, and stopping only once the calls received before have come through
    and been refused, leaves no call of those to cancel."""

    def __init__(self) -> None:
        self.closed = False
        self.refused = 0
        self.last_refusal = 0.0  # time.monotonic() of the last refusal

    def close(self) -> None:
        self.closed = True
        self.last_refusal = time.monotonic()

    def admit(self) -> None:
        """Raise ShuttingDown once closed, counting the refusal."""
        if self.closed:
            self.refused += 1
            self.last_refusal = time.monotonic()
            raise ShuttingDown("the server is shutting down: send the call to another replica")
