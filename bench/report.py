"""Shows and saves a run: a rich table on the terminal, JSON (everything) and CSV (one row a level)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .output import error_counts, num, stamped, write_csv, write_json
from .plot import write_png
from .results import Level, Measured, Run


def _ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def level_line(label: str, measured: Measured) -> str:
    """One finished level, printed as the sweep goes."""
    return (
        f"{label:>9}  c={measured.concurrency:<4} {num(measured.throughput):>8} infer/s  "
        f"p50 {num(measured.p50_ms, 2)} ms  p90 {num(measured.p90_ms, 2)} ms  "
        f"p99 {num(measured.p99_ms, 2)} ms  batch {num(measured.mean_batch_size, 1)}  "
        f"errors {error_counts(measured.errors)}"
        + (f"  server cpu {measured.server_cpu_us:.0f} µs/req" if measured.server_cpu_us is not None else "")
    )


def table(run: Run) -> Table:
    title = f"torchwire bench: {run.model} ({'streaming' if run.settings.get('streaming') else 'unary'})"
    out = Table(title=title, title_justify="left")
    for name in (
        "conc",
        "infer/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "batch",
        "errors",
        "bare",
        "bare/s",
        "bare p50",
        "bare p99",
        "tw/bare",
        "model rows/s @b",
        "tw/model",
    ):
        out.add_column(name, justify="right")
    for level in run.levels:
        tw, bare, inproc = level.torchwire, level.bare, level.inprocess
        out.add_row(
            str(level.concurrency),
            num(tw.throughput),
            num(tw.p50_ms, 2),
            num(tw.p90_ms, 2),
            num(tw.p99_ms, 2),
            num(tw.mean_batch_size, 1),
            error_counts(tw.errors),
            level.bare_flavor or "n/a",
            num(bare.throughput) if bare else "n/a",
            num(bare.p50_ms, 2) if bare else "n/a",
            num(bare.p99_ms, 2) if bare else "n/a",
            _ratio(level.vs_bare),
            f"{num(inproc.rows_per_s)} @{inproc.batch}" if inproc else "n/a",
            _ratio(level.vs_inprocess) if inproc is None or inproc.reliable else "unreliable",
        )
    return out


def show(run: Run, console: Console) -> None:
    console.print(table(run))
    for note in run.notes:
        console.print(f"note: {note}")


CSV_COLUMNS = (
    "model",
    "concurrency",
    "throughput",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "mean_batch_size",
    "errors",
    "bare_flavor",
    "bare_throughput",
    "bare_p50_ms",
    "bare_p90_ms",
    "bare_p99_ms",
    "inprocess_batch",
    "inprocess_rows_per_s",
    "inprocess_threads",
    "vs_bare",
    "vs_inprocess",
)


def _row(run: Run, level: Level) -> dict[str, object]:
    tw, bare, inproc = level.torchwire, level.bare, level.inprocess
    return {
        "model": run.model,
        "concurrency": level.concurrency,
        "throughput": tw.throughput,
        "p50_ms": tw.p50_ms,
        "p90_ms": tw.p90_ms,
        "p99_ms": tw.p99_ms,
        "mean_ms": tw.mean_ms,
        "mean_batch_size": tw.mean_batch_size,
        "errors": tw.error_count,
        "bare_flavor": level.bare_flavor,
        "bare_throughput": bare.throughput if bare else None,
        "bare_p50_ms": bare.p50_ms if bare else None,
        "bare_p90_ms": bare.p90_ms if bare else None,
        "bare_p99_ms": bare.p99_ms if bare else None,
        "inprocess_batch": inproc.batch if inproc else None,
        "inprocess_rows_per_s": inproc.rows_per_s if inproc else None,
        "inprocess_threads": inproc.threads if inproc else None,
        "vs_bare": level.vs_bare,
        "vs_inprocess": level.vs_inprocess,
    }


def write(run: Run, json_path: Path, csv_path: Path) -> None:
    """Everything as JSON; one CSV row a level."""
    write_json(run.to_dict(), json_path)
    write_csv((_row(run, level) for level in run.levels), CSV_COLUMNS, csv_path)


def write_files(run: Run, out: Path) -> list[Path]:
    """The run as JSON, CSV and a PNG plot beside each other in `out`; their paths."""
    stem = stamped(out, run.model)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".csv"), stem.with_suffix(".png")]
    write(run, paths[0], paths[1])
    write_png(run, paths[2])
    return paths
