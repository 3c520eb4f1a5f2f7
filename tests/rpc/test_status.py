"""The one error boundary, through a real grpc.aio server on an ephemeral port: every method shape
leaves with its mapped status; an unexpected error is answered generically and logged exactly once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from torchwire.server.core.errors import ModelNotFound, QueueFull
from torchwire.server.core.limits import Gate
from torchwire.server.rpc.handlers import service_handler
from torchwire.server.rpc.status import INTERNAL_MESSAGE

SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]


class Broken:
    """grpc.health.v1.Health whose Check fails as its request's service name says."""

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        if request.service == "missing":
            raise ModelNotFound("model 'missing' is not in the repository")
        if request.service == "bug":
            raise RuntimeError("a secret detail")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        raise QueueFull("model 'm' queue is full")


async def serve(gate: Gate | None = None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service_handler(SERVICE, Broken(), max_bytes=1024, gate=gate),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_every_shape_leaves_with_its_status_and_a_bug_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, port = await serve()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            ok = await stub.Check(health_pb2.HealthCheckRequest(service="fine"), timeout=30)
            assert ok.status == health_pb2.HealthCheckResponse.SERVING

            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.Check(health_pb2.HealthCheckRequest(service="missing"), timeout=30)
            assert missing.value.code() is grpc.StatusCode.NOT_FOUND
            assert missing.value.details() == "model 'missing' is not in the repository"

            with (
                caplog.at_level(logging.ERROR, logger="torchwire.rpc"),
                pytest.raises(grpc.aio.AioRpcError) as bug,
            ):
                await stub.Check(health_pb2.HealthCheckRequest(service="bug"), timeout=30)
            assert bug.value.code() is grpc.StatusCode.INTERNAL
            assert bug.value.details() == INTERNAL_MESSAGE
            logged = [r for r in caplog.records if r.name == "torchwire.rpc"]
            assert len(logged) == 1
            assert logged[0].exc_info is not None and str(logged[0].exc_info[1]) == "a secret detail"

            watch = stub.Watch(health_pb2.HealthCheckRequest(service="fine"), timeout=30)
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await watch.read()
            assert full.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert full.value.details() == "model 'm' queue is full"

            undecodable = channel.unary_unary("/grpc.health.v1.Health/Check")
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await undecodable(b"\xff\xff\xff", timeout=30)
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert bad.value.details().startswith("request is not a valid grpc.health.v1.HealthCheckRequest")
            with pytest.raises(grpc.aio.AioRpcError) as big:
                await undecodable(b"\x0a\x80\x08" + b"x" * 1024, timeout=30)
            assert big.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "over the limit of 1024 set by --max-message-bytes" in (big.value.details() or "")
    finally:
        await server.stop(None)


async def test_a_full_gate_answers_resource_exhausted_naming_its_setting() -> None:
    gate = Gate(1, "max_concurrent_rpcs", "inference RPCs")
    gate.enter()  # the one slot is taken
    server, port = await serve(gate)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Check(health_pb2.HealthCheckRequest(service="fine"), timeout=30)
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == (
                "1 inference RPCs in progress, the limit set by "
                "--max-concurrent-rpcs (TORCHWIRE_MAX_CONCURRENT_RPCS)"
            )
    finally:
        await server.stop(None)
