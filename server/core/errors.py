"""Typed domain errors. None of them knows gRPC: rpc/status.py maps each to a status code, once.
Each names its `reason`, the bounded label metrics count a failed inference request under.

TorchwireError
 ├─ ModelNotFound        no such model, or no such version of it
 ├─ ModelUnavailable     the model exists but is not ready (failed to load, loading, unloading)
 ├─ InvalidRequest       the request does not fit the model's inputs, outputs or parameters
 ├─ QueueFull            the model's queue is at its limit
 ├─ LimitExceeded        a server-wide limit (message size, concurrent RPCs, streams) is reached
 ├─ DeadlineExpired      the request's deadline or timeout passed before it ran
 ├─ ModelExecutionError  the model raised, or returned outputs that do not fit its config
 ├─ Unsupported          a protocol feature torchwire does not offer
 ├─ NotAllowed           an operation the server's configuration forbids (e.g. load without explicit mode)
 ├─ ConfigError          a config.pbtxt or model file that cannot be served (its reason is reported)
 └─ Unauthenticated      a call without a valid bearer token
"""

from __future__ import annotations

from typing import ClassVar


class TorchwireError(Exception):
    """Base of every error a caller may see; its message is safe to send to the client."""

    reason: ClassVar[str] = "internal"


class ModelNotFound(TorchwireError):
    pass


class ModelUnavailable(TorchwireError):
    reason = "unavailable"


class InvalidRequest(TorchwireError):
    reason = "invalid_input"


class QueueFull(TorchwireError):
    reason = "rejected"


class LimitExceeded(TorchwireError):
    reason = "rejected"


class DeadlineExpired(TorchwireError):
    reason = "timeout"


class ModelExecutionError(TorchwireError):
    reason = "model_error"


class Unsupported(TorchwireError):
    reason = "invalid_input"


class NotAllowed(TorchwireError):
    pass


class ConfigError(TorchwireError):
    pass


class Unauthenticated(TorchwireError):
    pass


class ShuttingDown(TorchwireError):
    """A new call while the server stops: UNAVAILABLE, which clients and meshes retry elsewhere."""

    reason = "unavailable"


# Every label a failed request can carry: the errors' reasons, a cancelled call, anything else.
FAILURE_REASONS = tuple(
    dict.fromkeys([*(error.reason for error in TorchwireError.__subclasses__()), "cancelled", "internal"])
)
