"""What a metrics scrape reads: a copy of the counters, taken by whoever owns them (the core).

Observability is fed: it defines this shape and renders it, and never imports the core.
"""

from __future__ import annotations

from dataclasses import dataclass

from .statistics import ModelStatistics


@dataclass(frozen=True, slots=True)
class VersionSnapshot:
    model: str
    version: str
    stats: ModelStatistics
    queued: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    versions: list[VersionSnapshot]
    states: list[tuple[str, str, str]]  # model, version, state
    load_failures: dict[str, int]
    unknown_model_requests: int
    state_names: tuple[str, ...]  # every state a model version can be in (each gets a 0/1 sample)
    failure_reasons: tuple[str, ...]  # every reason a failed request can be counted under
