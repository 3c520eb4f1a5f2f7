"""What a benchmark run found: per-level figures for each target, the ceilings, and their ratios."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .ceilings import InProcess
from .loadgen import Sample
from .output import Recorded


@dataclass(frozen=True, slots=True)
class Measured:
    """One target at one concurrency level."""

    concurrency: int
    throughput: float  # successful inferences (requests) per second
    completed: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    errors: dict[str, int]
    mean_batch_size: float | None  # rows per forward pass, from ModelStatistics; None: n/a
    problem: str | None = None  # the first invalid response, if any
    server_cpu_us: float | None = None  # server process CPU per successful request (spawned servers)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def rounded_batch(mean_batch_size: float | None) -> float | None:
    return None if mean_batch_size is None else round(mean_batch_size, 3)


def summarize(sample: Sample, mean_batch_size: float | None) -> Measured:
    latencies_ms = sample.latencies_ns / 1e6
    p50 = p90 = p99 = mean = None  # no successful request: no latency to report
    if latencies_ms.size:
        p50, p90, p99 = (round(float(v), 4) for v in np.percentile(latencies_ms, [50, 90, 99]))
        mean = round(float(latencies_ms.mean()), 4)
    return Measured(
        concurrency=sample.concurrency,
        throughput=round(latencies_ms.size / sample.duration_s, 1),
        completed=int(latencies_ms.size),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=mean,
        errors=dict(sample.errors),
        mean_batch_size=rounded_batch(mean_batch_size),
        problem=sample.problem,
    )


@dataclass(frozen=True, slots=True)
class Level:
    concurrency: int
    torchwire: Measured
    bare_flavors: dict[str, Measured]  # the bare server by flavor ("sync", "aio"); empty: not measured
    inprocess: InProcess | None
    inprocess_batch_from: str | None  # "server": the batch it formed; "request": statistics were n/a
    rows_per_request: int

    @property
    def bare_flavor(self) -> str | None:
        """The faster bare flavor at this level: the ceiling is the best a bare server did."""
        if not self.bare_flavors:
            return None
        return max(self.bare_flavors, key=lambda flavor: self.bare_flavors[flavor].throughput)

    @property
    def bare(self) -> Measured | None:
        flavor = self.bare_flavor
        return None if flavor is None else self.bare_flavors[flavor]

    @property
    def vs_bare(self) -> float | None:
        """torchwire throughput / the bare server's, at the same concurrency."""
        if self.bare is None or self.bare.throughput <= 0:
            return None
        return self.torchwire.throughput / self.bare.throughput

    @property
    def vs_inprocess(self) -> float | None:
        """torchwire rows/s / the model's own rows/s at the batch size the server formed."""
        if self.inprocess is None or not self.inprocess.reliable or self.inprocess.rows_per_s <= 0:
            return None
        return self.torchwire.throughput * self.rows_per_request / self.inprocess.rows_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "torchwire": asdict(self.torchwire),
            "bare": asdict(self.bare) if self.bare else None,
            "bare_flavor": self.bare_flavor,
            "bare_flavors": {flavor: asdict(m) for flavor, m in self.bare_flavors.items()},
            "inprocess": asdict(self.inprocess) if self.inprocess else None,
            "inprocess_batch_from": self.inprocess_batch_from,
            "ratios": {"vs_bare": self.vs_bare, "vs_inprocess": self.vs_inprocess},
        }


@dataclass(slots=True)
class Run(Recorded):
    levels: list[Level] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.header(),
            "levels": [level.to_dict() for level in self.levels],
            "notes": self.notes,
        }


def flag_impossible(levels: list[Level], notes: list[str]) -> list[Level]:
    """A server cannot beat its own model: a ceiling below what torchwire did was measured on a busy
    machine. Such a level's ceiling is marked unreliable (no tw/model ratio), with a loud note."""
    flagged = []
    for level in levels:
        ratio, ceiling = level.vs_inprocess, level.inprocess
        if ratio is not None and ceiling is not None and ratio > 1:
            notes.append(
                f"UNRELIABLE in-process ceiling at concurrency {level.concurrency}: "
                f"{ceiling.rows_per_s:,.0f} rows/s at batch {ceiling.batch}, below the "
                f"{ratio * ceiling.rows_per_s:,.0f} rows/s torchwire itself did: the machine was busy "
                "while it was measured; tw/model left out"
            )
            level = replace(level, inprocess=replace(ceiling, reliable=False))
        flagged.append(level)
    return flagged
