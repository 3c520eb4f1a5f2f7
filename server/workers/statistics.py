"""Adding up the ModelStatistics answers of several workers into one, as one server would count."""

from __future__ import annotations

from torchwire.client._proto import grpc_service_pb2 as pb

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


def _add(into: pb.StatisticDuration, other: pb.StatisticDuration) -> None:
    into.count += other.count
    into.ns += other.ns


def _add_model(into: pb.ModelStatistics, other: pb.ModelStatistics) -> None:
    into.last_inference = max(into.last_inference, other.last_inference)
    into.inference_count += other.inference_count
    into.execution_count += other.execution_count
    for name in DURATIONS:
        _add(getattr(into.inference_stats, name), getattr(other.inference_stats, name))
    batches = {batch.batch_size: batch for batch in into.batch_stats}
    for batch in other.batch_stats:
        target = batches.get(batch.batch_size)
        if target is None:
            target = batches[batch.batch_size] = into.batch_stats.add(batch_size=batch.batch_size)
        for name in BATCH_DURATIONS:
            _add(getattr(target, name), getattr(batch, name))
    into.batch_stats.sort(key=lambda batch: batch.batch_size)


def merge_statistics(into: pb.ModelStatisticsResponse, other: pb.ModelStatisticsResponse) -> None:
    """Add `other`'s counts to `into`, model version by model version (versions only one has are added)."""
    models = {(model.name, model.version): model for model in into.model_stats}
    for model in other.model_stats:
        target = models.get((model.name, model.version))
        if target is None:
            target = models[(model.name, model.version)] = into.model_stats.add(
                name=model.name, version=model.version
            )
        _add_model(target, model)
