"""Triton's metric names (`nv_inference_*`), rendered from the same snapshot as torchwire's metrics,
so the Grafana dashboards built on Triton work unchanged against torchwire.

Written here in the Prometheus text format 0.0.4 as Triton writes it: counters keep their bare names
(`nv_inference_count`, no `_total` suffix), which prometheus_client cannot do (it appends `_total`
to every counter, and OpenMetrics requires it). Durations are cumulative counters in microseconds,
as Triton counts them; each is the matching ModelStatistics duration divided by 1,000.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .snapshot import Snapshot, VersionSnapshot
from .statistics import ModelStatistics

# Triton's `reason` labels; the snapshot names the one each torchwire failure reason counts under.
REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

# Triton's durations: (name, help, the ModelStatistics duration it sums, in whole microseconds).
DURATIONS = (
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds", "success"),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds", "queue"),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        "compute_input",
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        "compute_infer",
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative compute output duration in microseconds",
        "compute_output",
    ),
)


def _microseconds(duration: str) -> Callable[[ModelStatistics], int]:
    return lambda s: int(getattr(s, duration).ns) // 1000


# (name, help, value read from a version's statistics): Triton's per-model counters.
COUNTERS: tuple[tuple[str, str, Callable[[ModelStatistics], int]], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (a batch of n counts n)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (batches)",
        lambda s: s.execution_count,
    ),
    *((name, doc, _microseconds(duration)) for name, doc, duration in DURATIONS),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(name: str, doc: str, kind: str, rows: Iterable[tuple[dict[str, str], int]]) -> list[str]:
    lines = [f"# HELP {name} {doc}\n", f"# TYPE {name} {kind}\n"]
    for labels, number in rows:
        text = ",".join(f'{key}="{_label(value)}"' for key, value in sorted(labels.items()))  # as Triton
        lines.append(f"{name}{{{text}}} {number}\n")
    return lines


def _labels(v: VersionSnapshot) -> dict[str, str]:
    return {"model": v.model, "version": v.version}


def failures_by_reason(stats: ModelStatistics, triton_reasons: dict[str, str]) -> dict[str, int]:
    counts = dict.fromkeys(REASONS, 0)
    for reason, count in stats.failures.items():
        counts[triton_reasons.get(reason, "OTHER")] += count
    return counts


def render_triton(snapshot: Snapshot) -> str:
    """Triton's inference metrics for every served model version, in the text format."""
    versions = snapshot.versions
    lines: list[str] = []
    name, doc, read = COUNTERS[0]
    lines += _family(name, doc, "counter", ((_labels(v), read(v.stats)) for v in versions))
    lines += _family(
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
        "counter",
        (
            ({**_labels(v), "reason": reason}, count)
            for v in versions
            for reason, count in failures_by_reason(v.stats, snapshot.failure_reasons).items()
        ),
    )
    for name, doc, read in COUNTERS[1:]:
        lines += _family(name, doc, "counter", ((_labels(v), read(v.stats)) for v in versions))
    lines += _family(
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model.",
        "gauge",
        ((_labels(v), v.queued) for v in versions),
    )
    return "".join(lines)
