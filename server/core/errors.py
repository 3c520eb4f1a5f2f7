"""Typed domain errors. None of them knows gRPC: rpc/status.py maps each to a status code, once.

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
 └─ ConfigError          a config.pbtxt or model file that cannot be served (its reason is reported)
"""

from __future__ import annotations


class TorchwireError(Exception):
    """Base of every error a caller may see; its message is safe to send to the client."""


class ModelNotFound(TorchwireError):
    pass


class ModelUnavailable(TorchwireError):
    pass


class InvalidRequest(TorchwireError):
    pass


class QueueFull(TorchwireError):
    pass


class LimitExceeded(TorchwireError):
    pass


class DeadlineExpired(TorchwireError):
    pass


class ModelExecutionError(TorchwireError):
    pass


class Unsupported(TorchwireError):
    pass


class NotAllowed(TorchwireError):
    pass


class ConfigError(TorchwireError):
    pass
