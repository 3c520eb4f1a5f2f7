"""Shows and saves a soak: a line per interval as it runs, a summary, JSON (everything), CSV (intervals)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rich.console import Console

from .soakresults import MIB, Interval, SoakRun, Summary


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:,.1f} MiB"


def _errors(errors: dict[str, int]) -> str:
    if not errors:
        return "0"
    return ", ".join(f"{code} {count:,}" for code, count in sorted(errors.items()))


def interval_line(interval: Interval) -> str:
    seconds = interval.seconds or 1.0
    tag = "warmup" if interval.warmup else ""
    return (
        f"{interval.end_s:>7.0f} s {tag:<6} {_num(interval.throughput):>7} req/s "
        f"(unary {_num(interval.unary_ok / seconds)}, streams {_num(interval.stream_ok / seconds)})  "
        f"p50 {_num(interval.p50_ms, 2)} ms  p99 {_num(interval.p99_ms, 2)} ms  "
        f"errors {_errors(interval.errors)}  rss {_mib(interval.rss_bytes)}"
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
        f"  errors      {_errors(summary.errors)}",
        f"  throughput  min {_num(summary.throughput_min)} / median {_num(summary.throughput_median)} / "
        f"max {_num(summary.throughput_max)} req/s over {len(measured)} intervals after warmup",
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


def write_json(run: SoakRun, path: Path) -> None:
    path.write_text(json.dumps(run.to_dict(), indent=2) + "\n")


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


def write_csv(run: SoakRun, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for interval in run.intervals:
            row: dict[str, object] = {
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
            # Empty cells for n/a, which spreadsheets and pandas read as missing.
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
