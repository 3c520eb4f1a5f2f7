"""Where a lone request's time goes inside torchwire: per-stage medians, measured in a real server.

Starts `torchwire serve` (the bundled models) in a child process with timers wrapped around the
stages of the request path, drives it with one caller (`torchwire bench`'s load generator, batch-1
ModelInfer) for --duration seconds, stops it, and prints the median of each stage:

- decode: the request checked against the config and turned into numpy views;
- hand-off: from the scheduler's submit to the instance thread starting the forward pass;
- forward: the forward pass on the instance thread (tensor in, checked numpy out);
- hand-back: from the forward pass's end to the event loop resuming the request;
- encode: the response built;
- in server: decode start to encode end.

One caller only: stages are matched by order, which holds while one request is in flight. The
client-side p50 minus the bare server's is what torchwire adds; the stages say where.

    .venv/bin/python benchmarks/stages.py --model cnn --duration 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from bundled import BARE_OUTPUTS, INPUTS, OUTPUTS, request  # this folder's: run as a script

from torchwire.bench import processes
from torchwire.bench.loadgen import WorkerPool

STAGES = ("decode", "hand-off", "forward", "hand-back", "encode", "in server")


def serve_with_timers(out: Path, argv: list[str]) -> None:
    """The child: torchwire serve with each stage timed; writes the samples to `out` on exit."""
    from torchwire.server.cli import main as serve
    from torchwire.server.core import service
    from torchwire.server.runtime import instances

    samples: dict[str, list[int]] = {stage: [] for stage in STAGES}
    marks: dict[str, int] = {}

    def timed(name: str, function: Callable[..., Any], first: str | None = None) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter_ns()
            result = function(*args, **kwargs)
            end = time.perf_counter_ns()
            samples[name].append(end - start)
            marks[f"{name}_start"], marks[f"{name}_end"] = start, end
            if name == "encode":
                samples["in server"].append(end - marks.get("decode_start", start))
            return result

        return wrapper

    service.decode_request = timed("decode", service.decode_request)
    service.encode_response = timed("encode", service.encode_response)
    submit = instances.Instances.submit

    def submitted(self: Any, work: Any) -> Any:
        marks["submitted"] = time.perf_counter_ns()
        future = submit(self, work)

        def resumed(_: Any) -> None:
            samples["hand-back"].append(time.perf_counter_ns() - marks.get("forward_end", 0))

        future.add_done_callback(resumed)
        return future

    instances.Instances.submit = submitted  # type: ignore[method-assign]
    init = instances.Instances.__init__

    def started(self: Any, task: Callable[[Any], Any], **options: Any) -> None:
        def forward(work: Any) -> Any:
            begin = time.perf_counter_ns()
            if "submitted" in marks:  # warmup passes are not submitted
                samples["hand-off"].append(begin - marks["submitted"])
            result = task(work)
            marks["forward_end"] = time.perf_counter_ns()
            samples["forward"].append(marks["forward_end"] - begin)
            return result

        init(self, forward, **options)

    instances.Instances.__init__ = started  # type: ignore[method-assign]
    sys.argv = ["torchwire", "serve", *argv]
    try:
        serve()
    finally:
        out.write_text(json.dumps(samples))


@contextlib.contextmanager
def server(out: Path) -> Iterator[str]:
    port = processes.free_port()
    command = [sys.executable, __file__, "--serve", str(out), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--http-port", "0", "--metrics-port", "-1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        target = f"127.0.0.1:{port}"
        processes.wait_serving(target, 120, proc)
        yield target
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            processes.stop(proc)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve_with_timers(Path(sys.argv[2]), sys.argv[3:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="cnn", choices=sorted(INPUTS))
    parser.add_argument("--duration", type=float, default=10.0)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "stages.json"
        with server(out) as target, WorkerPool(1) as pool:
            pool.connect("torchwire", target, request(options.model), OUTPUTS, False)
            pool.start("torchwire", 1, time.monotonic() + 0.2, 2.0, options.duration)
            sample = pool.collect()
        samples = json.loads(out.read_text())
        with processes.bare_server(BARE_OUTPUTS, aio=True) as bare, WorkerPool(1) as pool:
            pool.connect("bare", bare, request(options.model), OUTPUTS, False)
            pool.start("bare", 1, time.monotonic() + 0.2, 2.0, options.duration)
            bare_sample = pool.collect()
    client_p50 = float(np.median(sample.latencies_ns)) / 1e3
    bare_p50 = float(np.median(bare_sample.latencies_ns)) / 1e3
    rate = len(sample.latencies_ns) / options.duration
    print(f"{options.model}, one caller: {rate:,.0f} requests/s, client p50 {client_p50:,.0f} µs")
    print(f"bare grpc.aio server, same caller: client p50 {bare_p50:,.0f} µs (gRPC, client and transport)")
    print("| stage | requests | p50 µs | mean µs |\n|---|---:|---:|---:|")
    for stage in STAGES:  # hand-off, forward and hand-back: only the requests not run on the loop
        values = samples[stage][len(samples[stage]) // 5 :] or [0]  # the warmup's fifth left out
        median, mean = statistics.median(values) / 1e3, statistics.fmean(values) / 1e3
        print(f"| {stage} | {len(samples[stage]):,} | {median:,.0f} | {mean:,.0f} |")
    hot, paced = in_process(options.model, client_p50 / 1e6)
    print(
        f"the same forward pass in-process: {hot:,.0f} µs back to back, "
        f"{paced:,.0f} µs one every {client_p50:,.0f} µs"
    )


def in_process(model: str, gap_s: float, calls: int = 300) -> tuple[float, float]:
    """Median µs of the model's batch-1 forward pass called back to back, then once per `gap_s`."""
    import torch

    module = torch.jit.load(str(Path(__file__).parents[1] / "models" / model / "1" / "model.pt")).eval()
    data = torch.from_numpy(np.random.default_rng(0).random((1, *INPUTS[model]), dtype=np.float32))
    medians = []
    for gap in (0.0, gap_s):
        times = []
        for _ in range(calls):
            start = time.perf_counter_ns()
            with torch.inference_mode():
                module(data)
            times.append(time.perf_counter_ns() - start)
            if gap:
                time.sleep(gap)
        medians.append(statistics.median(times[calls // 5 :]) / 1e3)
    return medians[0], medians[1]


if __name__ == "__main__":
    os.environ.setdefault("TORCHWIRE_METRICS_PORT", "-1")
    main()
