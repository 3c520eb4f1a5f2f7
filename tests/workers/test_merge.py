"""What `--workers N` adds up across workers, without a server: statistics answers and /metrics text."""

from __future__ import annotations

from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.server.workers.metrics import merge
from torchwire.server.workers.statistics import merge_statistics


def _statistics(name: str, count: int, batches: dict[int, int]) -> pb.ModelStatisticsResponse:
    response = pb.ModelStatisticsResponse()
    model = response.model_stats.add(name=name, version="1", inference_count=count, last_inference=count)
    model.inference_stats.success.count = count
    model.inference_stats.success.ns = 1000 * count
    for size, runs in batches.items():
        model.batch_stats.add(batch_size=size).compute_infer.count = runs
    return response


def test_statistics_of_workers_add_up_version_by_version_and_batch_size_by_batch_size() -> None:
    into = _statistics("a", 3, {4: 1, 1: 2})
    merge_statistics(into, _statistics("a", 5, {2: 1, 4: 2}))
    merge_statistics(into, _statistics("b", 7, {1: 7}))
    a, b = into.model_stats
    assert (a.name, a.inference_count, a.last_inference) == ("a", 8, 5)
    assert (a.inference_stats.success.count, a.inference_stats.success.ns) == (8, 8000)
    assert [(s.batch_size, s.compute_infer.count) for s in a.batch_stats] == [(1, 2), (2, 1), (4, 3)]
    assert (b.name, b.inference_count, [s.batch_size for s in b.batch_stats]) == ("b", 7, [1])


def test_metrics_of_workers_sum_counts_and_label_what_describes_one_process() -> None:
    def text(success: int, rss: int) -> str:
        return (
            "# TYPE torchwire_request_success counter\n"
            f'torchwire_request_success_total{{model="m",version="1"}} {success}\n'
            "# TYPE torchwire_model_state gauge\n"
            f'torchwire_model_state{{model="m",version="1",state="READY"}} 1\n'
            "# TYPE torchwire_process_resident_memory_bytes gauge\n"
            f"torchwire_process_resident_memory_bytes {rss}\n"
        )

    merged = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in merge([(0, text(3, 100)), (1, text(4, 200))])
        for s in family.samples
    }
    ready = (("model", "m"), ("state", "READY"), ("version", "1"))
    assert merged == {
        ("torchwire_request_success_total", (("model", "m"), ("version", "1"))): 7.0,
        ("torchwire_model_state", (*ready, ("worker", "0"))): 1.0,
        ("torchwire_model_state", (*ready, ("worker", "1"))): 1.0,
        ("torchwire_process_resident_memory_bytes", (("worker", "0"),)): 100.0,
        ("torchwire_process_resident_memory_bytes", (("worker", "1"),)): 200.0,
    }
