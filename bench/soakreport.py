"""Shows and saves a soak: a line per interval as it runs, a summary, JSON (everything), CSV (intervals)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .output import error_counts, num, write_csv, write_json
from .soakresults import MIB, Interval, SoakRun, Summary


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:,.1f} MiB"


def interval_line(interval: Interval) -> str:
    seconds = interval.seconds or 1.0
    tag = "warmup" if interval.warmup else ""
    return (
        f"{interval.end_s:>7.0f} s {tag:<6} {num(interval.throughput):>7} req/s "
        f"(unary {num(interval.unary_ok / seconds)}, streams {num(interval.stream_ok / seconds)})  "
        f"p50 {num(interval.p50_ms, 2)} ms  p99 {num(interval.p99_ms, 2)} ms  "
        f"errors {error_counts(interval.errors)}  rss {_mib(interval.rss_bytes)}"
    )


def summary_lines(run: SoakRun, summary: Summary) -> list[str]:
    measured = [i for i in run.intervals if not i.warmup]
    growth = "n/a" if summary.rss_growth_pct is None else f"{summary.rss_growth_pct:+.2f}%"
    slope = "n/a" if summary.rss_slope_mib_per_min is None else f"{summary.rss_slope_mib_per_min:+.3f}"
    verdict = "PASS" if summary.passed else "FAIL"
    if run.interrupted:
        verdict += " (interrupted)"
    return [
        f"torchwire soak: {run.model}, {verdict}",
        f"  requests    {summary.requests:,} ({summary.measured_requests:,} after warmup)",
        f"  errors      {error_counts(summary.errors)}",
        f"  throughput  min {num(summary.throughput_min)} / median {num(summary.throughput_median)} / "
        f"max {num(summary.throughput_max)} req/s over {len(measured)} intervals after warmup",
        f"  server RSS  {_mib(summary.rss_warmup_end_bytes)} at end of warmup -> "
        f"{_mib(summary.rss_end_bytes)} at end: {growth} "
        f"(start {_mib(summary.rss_start_bytes)}, peak {_mib(summary.rss_peak_bytes)}, "
        f"trend {slope} MiB/min)",
    ]


def show(run: SoakRun, console: Console) -> None:
    summary = run.summary()
    for line in summary_lines(run, summary):
        console.print(line, soft_wrap=True, highlight=False)
    if run.problem:
        console.print(f"  problem: {run.problem}", style="red", soft_wrap=True)
    for note in run.notes:
        console.print(f"note: {note}", soft_wrap=True)


CSV_COLUMNS = (
    "index",
    "start_s",
    "end_s",
    "warmup",
    "throughput",
    "unary_ok",
    "stream_ok",
    "errors",
    "errors_by_code",
    "p50_ms",
    "p99_ms",
    "rss_bytes",
)


def _row(interval: Interval) -> dict[str, object]:
    return {
        "index": interval.index,
        "start_s": interval.start_s,
        "end_s": interval.end_s,
        "warmup": int(interval.warmup),
        "throughput": round(interval.throughput, 1),
        "unary_ok": interval.unary_ok,
        "stream_ok": interval.stream_ok,
        "errors": interval.error_count,
        "errors_by_code": ";".join(f"{c}={n}" for c, n in sorted(interval.errors.items())),
        "p50_ms": interval.p50_ms,
        "p99_ms": interval.p99_ms,
        "rss_bytes": interval.rss_bytes,
    }


def write(run: SoakRun, json_path: Path, csv_path: Path) -> None:
    """Everything as JSON; one CSV row an interval."""
    write_json(run.to_dict(), json_path)
    write_csv((_row(interval) for interval in run.intervals), CSV_COLUMNS, csv_path)
