"""The PNG: throughput and p99 latency against concurrency, torchwire beside the bare server."""

from __future__ import annotations

from pathlib import Path

from .results import Run


def write_png(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit to import
    import matplotlib.pyplot as plt

    levels = run.levels
    concurrency = [level.concurrency for level in levels]
    figure, (throughput, p99) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    throughput.plot(concurrency, [lv.torchwire.throughput for lv in levels], "o-", label="torchwire")
    p99.plot(concurrency, [lv.torchwire.p99_ms for lv in levels], "o-", label="torchwire")
    bare = [lv for lv in levels if lv.bare is not None]
    if bare:
        bare_concurrency = [lv.concurrency for lv in bare]
        throughput.plot(
            bare_concurrency, [lv.bare.throughput for lv in bare if lv.bare], "s--", label="bare grpc"
        )
        p99.plot(bare_concurrency, [lv.bare.p99_ms for lv in bare if lv.bare], "s--", label="bare grpc")
    for axis, label in ((throughput, "throughput (infer/s)"), (p99, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(concurrency, [str(c) for c in concurrency])
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend()
    mode = "streaming" if run.settings.get("streaming") else "unary"
    figure.suptitle(f"{run.model}, {mode}, batch {run.settings.get('batch')} per request")
    figure.savefig(path, dpi=110)
    plt.close(figure)
