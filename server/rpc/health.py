"""grpc.health.v1 on the serving port, for Kubernetes' native grpc probes.

Service names (documented in the README):
- "liveness":  SERVING as long as the process serves gRPC, draining included: a liveness probe that
  failed during a drain would make Kubernetes kill the pod before its requests are answered.
- "readiness", "" and "inference.GRPCInferenceService": SERVING once the repository has loaded and
  at least one model is ready; NOT_SERVING before that and while draining.
"""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

from torchwire.client._proto import grpc_service_pb2 as pb

LIVENESS = "liveness"
READINESS = "readiness"
INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
READINESS_NAMES = (READINESS, "", INFERENCE_SERVICE)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # not in its stubs

    async def start(self) -> None:
        await self.servicer.set(LIVENESS, SERVING)
        await self.set_ready(False)

    async def set_ready(self, ready: bool) -> None:
        for name in READINESS_NAMES:
            await self.servicer.set(name, SERVING if ready else NOT_SERVING)

    async def drain(self) -> None:
        """Readiness says NOT_SERVING for good; liveness stays SERVING until the listener closes."""
        await self.set_ready(False)
