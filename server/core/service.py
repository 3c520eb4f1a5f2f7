"""The transport-neutral core: every v2 operation on protobuf messages, with no gRPC in sight.

rpc/ adapts it to gRPC; anything else (a REST or streaming adapter) would adapt the same core.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from importlib import metadata

from google.protobuf import json_format

from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import model_config_pb2 as mc

from ..batching import Completed
from ..observability.snapshot import Snapshot, VersionSnapshot
from ..observability.statistics import Duration, ModelStatistics
from .codec import decode_request, encode_response
from .errors import FAILURE_REASONS, InvalidRequest, NotAllowed, TorchwireError, Unsupported
from .limits import Limits
from .registry import Registry, State

SERVER_NAME = "torchwire"
# Triton's extension names for what this server implements (perf_analyzer reads the list).
EXTENSIONS = ("model_configuration", "model_repository", "schedule_policy", "statistics", "streaming")


def _version() -> str:
    try:
        return metadata.version("torchwire")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class InferenceCore:
    def __init__(self, registry: Registry, *, explicit: bool = False, limits: Limits | None = None) -> None:
        self.registry = registry
        self.limits = limits or Limits()
        self._explicit = explicit
        self.unknown_model_requests = 0  # no model to count them under (their names are not labels)
        self._server_metadata = pb.ServerMetadataResponse(
            name=SERVER_NAME, version=_version(), extensions=list(EXTENSIONS)
        )

    def server_live(self) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def server_ready(self) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.registry.ready())

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return self._server_metadata

    def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        # Like Triton: an unknown model is simply not ready; only a malformed request is an error.
        try:
            self.registry.lookup(request.name, request.version)
        except TorchwireError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        served = self.registry.lookup(request.name, request.version)
        spec = served.spec
        entry_versions = [str(v) for v in sorted(self.registry.entry(request.name).served)]
        response = pb.ModelMetadataResponse(
            name=spec.name, versions=entry_versions, platform=spec.config.platform
        )
        for t in spec.inputs:
            response.inputs.add(name=t.name, datatype=t.datatype, shape=spec.wire_shape(t))
        for t in spec.outputs:
            response.outputs.add(name=t.name, datatype=t.datatype, shape=spec.wire_shape(t))
        return response

    def model_config(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        served = self.registry.lookup(request.name, request.version)
        return pb.ModelConfigResponse(config=served.spec.config)

    def repository_index(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for entry in self.registry.entries():
            rows = sorted(entry.states.items()) or [(0, (entry.state, entry.reason))]
            for version, (state, reason) in rows:
                if request.ready and state is not State.READY:
                    continue
                response.models.add(
                    name=entry.name, version=str(version) if version else "", state=state.value, reason=reason
                )
        return response

    def _require_explicit(self, operation: str) -> None:
        if not self._explicit:
            raise NotAllowed(
                f"{operation} needs --model-control-mode explicit (this server's models are fixed or polled)"
            )

    async def load_model(self, request: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        self._require_explicit("RepositoryModelLoad")
        override = None
        for key, value in request.parameters.items():
            if key == "config":
                override = _config_override(
                    value.string_param or value.bytes_param.decode("utf-8", "replace")
                )
            elif key.startswith("file:"):
                raise Unsupported(f"parameter '{key}': model files in load requests are not supported")
        await self.registry.load(request.model_name, override)
        return pb.RepositoryModelLoadResponse()

    async def unload_model(
        self, request: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse:
        self._require_explicit("RepositoryModelUnload")
        await self.registry.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def infer(
        self, request: pb.ModelInferRequest, on_timing: Callable[[Completed], None] | None = None
    ) -> pb.ModelInferResponse:
        """Decode, queue, run and encode one request; `on_timing` sees when it queued and computed."""
        try:
            served = self.registry.lookup(request.model_name, request.model_version)
        except TorchwireError:
            self.unknown_model_requests += 1
            raise
        start = time.monotonic_ns()
        failure: str | None = "internal"
        try:
            decoded = decode_request(request, served.spec, self.limits)
            completed = await served.scheduler.submit(
                decoded.inputs, decoded.rows, priority=decoded.priority, timeout_s=decoded.timeout_s
            )
            response = encode_response(
                request, served.spec, served.version, completed.outputs, decoded.outputs, self.limits
            )
            failure = None
            if on_timing is not None:
                on_timing(completed)
            return response
        except asyncio.CancelledError:
            failure = "cancelled"
            raise
        except TorchwireError as exc:
            failure = exc.reason
            raise
        finally:
            served.stats.record_request(time.monotonic_ns() - start, failure)

    def snapshot(self) -> Snapshot:
        """A copy of what metrics render; call it on the event loop (the only writer of the counters)."""
        versions: list[VersionSnapshot] = []
        states: list[tuple[str, str, str]] = []
        failures: dict[str, int] = {}
        for entry in self.registry.entries():
            failures[entry.name] = entry.load_failures
            for version, (state, _) in sorted(entry.states.items()):
                states.append((entry.name, str(version), state.value))
            for version, served in sorted(entry.served.items()):
                scheduler = served.scheduler
                versions.append(
                    VersionSnapshot(
                        entry.name,
                        str(version),
                        copy.deepcopy(served.stats),
                        scheduler.queued,
                        scheduler.in_flight,
                    )
                )
        return Snapshot(
            versions,
            states,
            failures,
            self.unknown_model_requests,
            tuple(state.value for state in State),
            FAILURE_REASONS,
        )

    def model_statistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        """Triton's statistics: every served version, or those of one model (and one version)."""
        if request.name:
            entries = [self.registry.entry(request.name)]
            if request.version:
                self.registry.lookup(request.name, request.version)
        else:
            entries = self.registry.entries()
        response = pb.ModelStatisticsResponse()
        for entry in entries:
            for version, served in sorted(entry.served.items()):
                if request.version and str(version) != request.version:
                    continue
                statistics_message(
                    response.model_stats.add(name=entry.name, version=str(version)), served.stats
                )
        return response


def _duration(message: pb.StatisticDuration, duration: Duration) -> None:
    message.count, message.ns = duration.count, duration.ns


def statistics_message(message: pb.ModelStatistics, stats: ModelStatistics) -> None:
    message.last_inference = stats.last_inference_ms
    message.inference_count = stats.inference_count
    message.execution_count = stats.execution_count
    inference = message.inference_stats
    for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        _duration(getattr(inference, name), getattr(stats, name))
    for size, batch in sorted(stats.batches.items()):
        entry = message.batch_stats.add(batch_size=size)
        _duration(entry.compute_input, batch.compute_input)
        _duration(entry.compute_infer, batch.compute_infer)
        _duration(entry.compute_output, batch.compute_output)


def _config_override(text: str) -> mc.ModelConfig:
    """Triton's load parameter `config`: a ModelConfig in JSON that replaces config.pbtxt for this load."""
    try:
        return json_format.Parse(text, mc.ModelConfig())
    except json_format.ParseError as exc:
        raise InvalidRequest(f"parameter 'config' is not a ModelConfig in JSON: {exc}") from exc
