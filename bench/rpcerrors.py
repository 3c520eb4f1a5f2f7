"""The status of a failed call, read the same way wherever the bench catches one."""

from __future__ import annotations

from typing import Any

import grpc


def status_of(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str | None]:
    """Its code and details; UNKNOWN (and no details) for an RpcError that carries no status."""
    # grpc raises errors that are both RpcError and Call; its stubs declare no class can be both.
    call: Any = exc
    if isinstance(call, grpc.Call):
        return call.code(), call.details()
    return grpc.StatusCode.UNKNOWN, None
