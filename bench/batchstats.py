"""Mean batch size from Triton's ModelStatistics RPC: rows per forward pass over one level.

inference_count counts rows and execution_count forward passes, so their deltas across a level
give the batch size the server actually formed. A server without ModelStatistics (UNIMPLEMENTED)
has no answer: the benchmark reports n/a and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

from .rpcerrors import status_of


@dataclass(frozen=True, slots=True)
class Counts:
    inferences: int  # rows computed
    executions: int  # forward passes


def mean_batch_size(before: Counts | None, after: Counts | None) -> float | None:
    if before is None or after is None or after.executions <= before.executions:
        return None
    return (after.inferences - before.inferences) / (after.executions - before.executions)


class StatisticsProbe:
    """Reads one model's counters; after an UNIMPLEMENTED answer it stops asking."""

    def __init__(self, target: str, model: str) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._model = model
        self.unavailable: str | None = None  # why there are no counts, once known

    def __enter__(self) -> StatisticsProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def snapshot(self) -> Counts | None:
        if self.unavailable is not None:
            return None
        try:
            response = self._stub.ModelStatistics(pb.ModelStatisticsRequest(name=self._model), timeout=5.0)
        except grpc.RpcError as exc:
            code, _ = status_of(exc)
            if code is grpc.StatusCode.UNIMPLEMENTED:
                self.unavailable = "the server does not implement ModelStatistics"
            return None  # a transient failure costs this level its batch size, not the run
        stats = [s for s in response.model_stats if s.name == self._model]
        if not stats:
            return None
        # Several served versions: the request named no version, so the counts of all add up.
        return Counts(sum(s.inference_count for s in stats), sum(s.execution_count for s in stats))
