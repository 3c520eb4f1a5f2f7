"""The core of one worker among several: what changes or counts the whole server reaches every worker.

A load or unload arriving at any worker runs on every worker before it is answered; statistics asked of
any worker add up every worker's. Peers are called on their internal endpoints, which act locally only,
so a fan-out never fans out again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc
from torchwire.client._proto import model_config_pb2 as mc

from ..core.errors import ModelUnavailable
from ..core.limits import Limits
from ..core.registry import Registry
from ..core.service import InferenceCore
from .statistics import merge_statistics

log = logging.getLogger("torchwire.workers")

# A load runs warmup on every worker; a slow machine may take minutes. Statistics are cheap.
CHANGE_TIMEOUT_S = 600.0
STATISTICS_TIMEOUT_S = 10.0
# A peer being replaced is back within seconds; the channel must not sit in a long reconnect backoff.
PEER_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

R = TypeVar("R")


class Peers:
    """Channels to the other workers' internal endpoints, opened lazily on the running loop."""

    def __init__(self, sockets: tuple[Path, ...]) -> None:
        self._sockets = sockets
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[tuple[Path, Any]] = []

    def _all(self) -> list[tuple[Path, Any]]:
        if not self._stubs and self._sockets:
            self._channels = [
                grpc.aio.insecure_channel(f"unix:{path}", PEER_CHANNEL_OPTIONS) for path in self._sockets
            ]
            self._stubs = [
                (path, pb_grpc.GRPCInferenceServiceStub(channel))
                for path, channel in zip(self._sockets, self._channels, strict=True)
            ]
        return self._stubs

    async def call(
        self, method: str, request: Any, *, timeout: float, wait_for_ready: bool
    ) -> list[tuple[Path, Any]]:
        """`method` on every peer at once: (socket, response or the grpc.aio.AioRpcError) per peer."""
        peers = self._all()
        answers = await asyncio.gather(
            *(_ask(stub, method, request, timeout, wait_for_ready) for _, stub in peers)
        )
        return [(path, answer) for (path, _), answer in zip(peers, answers, strict=True)]

    async def call_one(self, path: Path, method: str, request: Any, *, timeout: float) -> Any:
        """`method` on the peer at `path`: its response, or the grpc.aio.AioRpcError."""
        (stub,) = [stub for at, stub in self._all() if at == path]
        return await _ask(stub, method, request, timeout, wait_for_ready=False)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)


async def _ask(stub: Any, method: str, request: Any, timeout: float, wait_for_ready: bool) -> Any:
    try:
        return await getattr(stub, method)(request, timeout=timeout, wait_for_ready=wait_for_ready)
    except grpc.aio.AioRpcError as exc:
        return exc


class ClusterCore(InferenceCore):
    def __init__(
        self, registry: Registry, peers: Peers, *, explicit: bool = False, limits: Limits | None = None
    ) -> None:
        super().__init__(registry, explicit=explicit, limits=limits)
        self.peers = peers

    async def load_model(self, request: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        self._require_explicit("RepositoryModelLoad")
        return await self._everywhere(super().load_model, "RepositoryModelLoad", request)

    async def unload_model(
        self, request: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse:
        self._require_explicit("RepositoryModelUnload")
        return await self._everywhere(super().unload_model, "RepositoryModelUnload", request)

    async def _everywhere(self, local: Callable[[Any], Awaitable[R]], method: str, request: Any) -> R:
        # Every worker, this one included, at once; answered when all are done. A peer that is being
        # replaced is waited for (wait_for_ready), so the change reaches its replacement too.
        peers = asyncio.ensure_future(
            self.peers.call(method, request, timeout=CHANGE_TIMEOUT_S, wait_for_ready=True)
        )
        try:
            mine = await local(request)  # its error is the one every worker met: it names it best
        finally:
            theirs = await peers  # Peers.call returns errors, never raises them
        for path, answer in theirs:
            if isinstance(answer, grpc.aio.AioRpcError):
                raise ModelUnavailable(
                    f"{method} succeeded on this worker but not on the one at {path.name}: {answer.details()}"
                )
        return mine

    async def served_elsewhere(self) -> dict[str, mc.ModelConfig | None] | None:
        """The models another worker serves now, each with the config it serves it with (None where
        that one could not be read: config.pbtxt then), for a replacement to load (None: no worker
        answered). In explicit mode the loads and unloads since the start, and the configs given in
        load requests, are known only to the living workers."""
        request = pb.RepositoryIndexRequest(ready=True)
        for path, answer in await self.peers.call(
            "RepositoryIndex", request, timeout=STATISTICS_TIMEOUT_S, wait_for_ready=False
        ):
            if isinstance(answer, grpc.aio.AioRpcError):
                continue
            configs: dict[str, mc.ModelConfig | None] = {}
            for name in sorted({model.name for model in answer.models}):
                config = await self.peers.call_one(
                    path, "ModelConfig", pb.ModelConfigRequest(name=name), timeout=STATISTICS_TIMEOUT_S
                )
                configs[name] = None if isinstance(config, grpc.aio.AioRpcError) else config.config
            return configs
        return None

    async def model_statistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        response = await super().model_statistics(request)
        for path, answer in await self.peers.call(
            "ModelStatistics", request, timeout=STATISTICS_TIMEOUT_S, wait_for_ready=False
        ):
            if isinstance(answer, grpc.aio.AioRpcError):
                # A worker being replaced has no statistics to give (a dead worker's counts die with it).
                log.warning("statistics of the worker at %s left out: %s", path.name, answer.details())
                continue
            merge_statistics(response, answer)
        return response
