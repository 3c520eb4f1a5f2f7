"""One /metrics for every worker: the supervisor scrapes each worker's own endpoint and merges them.

prometheus_client's multiprocess mode does not fit: torchwire's metrics are not metric objects updated
per request but rendered at scrape time from the statistics (observability/metrics.py), which that mode
cannot see. So the supervisor merges the rendered text. Counters, histograms and the queue gauges are
summed over workers, as one server would count them; what describes one process (its state of each
model, CPU, memory) keeps a `worker` label.
"""

from __future__ import annotations

import concurrent.futures
import logging
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger("torchwire.workers")

SCRAPE_TIMEOUT_S = 10.0
PER_WORKER = ("torchwire_model_state", "torchwire_process_")


def _per_worker(name: str) -> bool:
    return name.startswith(PER_WORKER)


def merge(scrapes: list[tuple[int, str]]) -> list[Metric]:
    """Merge each worker's exposition text, given as (worker index, text), into metric families."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, text in scrapes:
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            values = sums.setdefault(family.name, {})
            for sample in family.samples:
                labels = dict(sample.labels)
                if _per_worker(family.name):
                    labels["worker"] = str(index)
                key = (sample.name, tuple(sorted(labels.items())))
                values[key] = values.get(key, 0.0) + sample.value
    for name, merged in families.items():
        for (sample_name, pairs), value in sums[name].items():
            merged.add_sample(sample_name, dict(pairs), value)
    return list(families.values())


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as answer:
        text: str = answer.read().decode("utf-8")
        return text


class WorkersCollector(Collector):
    """Collects from the workers `endpoints()` names, as (index, metrics port), at each scrape."""

    def __init__(self, endpoints: Callable[[], list[tuple[int, int]]]) -> None:
        self._endpoints = endpoints
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="torchwire-scrape")

    def collect(self) -> Iterator[Metric]:
        endpoints = self._endpoints()
        futures = [(index, self._pool.submit(scrape, port)) for index, port in endpoints]
        scrapes: list[tuple[int, str]] = []
        for index, future in futures:
            try:
                scrapes.append((index, future.result()))
            except OSError as exc:  # a worker being replaced: its counts died with it
                log.warning("metrics of worker %d left out: %s", index, exc)
        yield from merge(scrapes)


class MergedMetricsServer:
    def __init__(self, host: str, port: int, endpoints: Callable[[], list[tuple[int, int]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(WorkersCollector(endpoints))
        self._server: Any
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._server.server_port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
