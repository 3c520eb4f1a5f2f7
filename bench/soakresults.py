"""What a soak found: one record per interval, and the summary that decides pass or fail."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .loadgen import SoakSlice
from .output import Recorded

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Interval:
    """One reporting interval; times are seconds from the soak's first request."""

    index: int
    start_s: float
    end_s: float
    warmup: bool
    unary_ok: int
    stream_ok: int
    errors: dict[str, int]  # by status code name
    p50_ms: float | None
    p99_ms: float | None
    rss_bytes: int | None  # the server's resident memory at end_s; None: n/a (not our process)

    @classmethod
    def of(
        cls, index: int, start_s: float, end_s: float, warmup: bool, piece: SoakSlice, rss: int | None
    ) -> Interval:
        p50 = p99 = None
        if piece.latencies_ns.size:
            p50, p99 = (round(float(v), 3) for v in np.percentile(piece.latencies_ns / 1e6, [50, 99]))
        return cls(
            index=index,
            start_s=round(start_s, 3),
            end_s=round(end_s, 3),
            warmup=warmup,
            unary_ok=piece.unary_ok,
            stream_ok=piece.stream_ok,
            errors=dict(piece.errors),
            p50_ms=p50,
            p99_ms=p99,
            rss_bytes=rss,
        )

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s

    @property
    def ok(self) -> int:
        return self.unary_ok + self.stream_ok

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "throughput": round(self.throughput, 1)}


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int  # answered, OK or not, warmup included
    ok: int
    errors: dict[str, int]  # warmup included: any error fails the soak
    measured_requests: int  # after warmup
    throughput_min: float | None  # successful requests/s over the intervals after warmup
    throughput_median: float | None
    throughput_max: float | None
    rss_start_bytes: int | None  # before the first request
    rss_warmup_end_bytes: int | None
    rss_end_bytes: int | None
    rss_peak_bytes: int | None  # the largest sample
    rss_growth_pct: float | None  # from the end of warmup to the end
    rss_slope_mib_per_min: float | None  # least-squares trend of the samples after warmup
    passed: bool

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(slots=True)
class SoakRun(Recorded):
    rss_start_bytes: int | None = None
    intervals: list[Interval] = field(default_factory=list)
    problem: str | None = None  # the first invalid response or failed load loop, described
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> Summary:
        measured = [i for i in self.intervals if not i.warmup]
        rates = [i.throughput for i in measured]
        errors: dict[str, int] = {}
        for interval in self.intervals:
            for code, count in interval.errors.items():
                errors[code] = errors.get(code, 0) + count
        ok = sum(i.ok for i in self.intervals)
        warmed = [i for i in self.intervals if i.warmup]
        baseline = warmed[-1].rss_bytes if warmed else self.rss_start_bytes
        end = self.intervals[-1].rss_bytes if measured else None
        samples = [s for s in [self.rss_start_bytes, *(i.rss_bytes for i in self.intervals)] if s is not None]
        return Summary(
            requests=ok + sum(errors.values()),
            ok=ok,
            errors=errors,
            measured_requests=sum(i.ok + i.error_count for i in measured),
            throughput_min=_rounded(min(rates)) if rates else None,
            throughput_median=_rounded(float(np.median(rates))) if rates else None,
            throughput_max=_rounded(max(rates)) if rates else None,
            rss_start_bytes=self.rss_start_bytes,
            rss_warmup_end_bytes=baseline,
            rss_end_bytes=end,
            rss_peak_bytes=max(samples) if samples else None,
            rss_growth_pct=(
                round(100.0 * (end - baseline) / baseline, 2) if end is not None and baseline else None
            ),
            rss_slope_mib_per_min=_slope(measured, baseline),
            passed=not errors and ok > 0 and self.problem is None and not self.interrupted,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.header(),
            "summary": asdict(self.summary()),
            "intervals": [i.to_dict() for i in self.intervals],
            "problem": self.problem,
            "interrupted": self.interrupted,
            "notes": self.notes,
        }


def _rounded(value: float) -> float:
    return round(value, 1)


def _slope(measured: list[Interval], baseline: int | None) -> float | None:
    """MiB per minute, fitted to the RSS at the end of warmup and at the end of each later interval."""
    points = [(i.end_s, i.rss_bytes) for i in measured if i.rss_bytes is not None]
    if baseline is not None and measured:
        points.insert(0, (measured[0].start_s, baseline))
    if len(points) < 3:
        return None
    seconds, rss = np.array(points, dtype=np.float64).T
    per_second = float(np.polyfit(seconds, rss, 1)[0])
    return round(per_second * 60.0 / MIB, 3)
