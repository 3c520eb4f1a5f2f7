"""`torchwire serve --workers N` against one worker: throughput, latency, CPU per request, RSS per worker.

Starts `torchwire serve --workers N` on a free 127.0.0.1 port for each N in --workers, alternating
them --rounds times, and drives each with --processes load generator processes that keep
--concurrency requests in flight in all over --connections connections in all (a connection of its
own per channel: SO_REUSEPORT spreads connections, not calls). Server CPU is read from /proc for
the supervisor and every worker; RSS per worker from the merged /metrics.

    .venv/bin/python benchmarks/workers.py --model mlp --workers 1,2 --concurrency 64 --connections 8
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import grpc.aio
from bundled import request  # this folder's: run as a script

INFER = "/inference.GRPCInferenceService/ModelInfer"
TICKS = os.sysconf("SC_CLK_TCK")


async def _drive(
    target: str, payload: bytes, connections: int, concurrency: int, seconds: float
) -> list[float]:
    channels = [
        grpc.aio.insecure_channel(target, [("grpc.use_local_subchannel_pool", 1)]) for _ in range(connections)
    ]
    calls = [channel.unary_unary(INFER) for channel in channels]
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def loop(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
        while time.monotonic() < end:
            start = time.perf_counter()
            await call(payload, timeout=60)
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(loop(calls[i % connections]) for i in range(concurrency)))
    for channel in channels:
        await channel.close()
    return latencies


def generator(args: tuple[str, bytes, int, int, float], results: multiprocessing.Queue[list[float]]) -> None:
    results.put(asyncio.run(_drive(*args)))


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def serve(workers: int, model: str) -> tuple[subprocess.Popen[str], str, int, list[int]]:
    torchwire = Path(sys.executable).parent / "torchwire"
    env = {**os.environ, "TORCHWIRE_HOST": "127.0.0.1", "TORCHWIRE_PORT": "0", "TORCHWIRE_METRICS_PORT": "-1"}
    process = subprocess.Popen(
        [str(torchwire), "serve", "--workers", str(workers), "--log-level", "INFO"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    done = f"all {workers} workers loaded" if workers > 1 else "server ready"
    for line in process.stderr:
        lines.append(line)
        if done in line:
            break
    log = "".join(lines)
    port = re.findall(r"listening on 127\.0\.0\.1:(\d+)", log)[-1]
    metrics = int(re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log)[0])
    pids = [process.pid] + [int(p) for p in re.findall(r"worker \d+ \(pid (\d+)\) listening", log)]
    return process, f"127.0.0.1:{port}", metrics, pids


def rss(metrics_port: int) -> list[float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return [
        float(v) / 2**20
        for v in re.findall(r"^torchwire_process_resident_memory_bytes\S* (\S+)$", text, re.M)
    ]


def measure(options: argparse.Namespace, workers: int) -> dict[str, float | list[float]]:
    process, target, metrics_port, pids = serve(workers, options.model)
    try:
        payload = request(options.model)
        per = options.concurrency // options.processes
        connections = max(1, options.connections // options.processes)
        context = multiprocessing.get_context("spawn")
        warm = [(target, payload, connections, per, options.warmup)]
        results: multiprocessing.Queue[list[float]] = context.Queue()
        for args in warm * options.processes:
            context.Process(target=generator, args=(args, results)).start()
        for _ in range(options.processes):
            results.get()
        cpu_before, wall_before = cpu_seconds(pids), time.monotonic()
        runs = [(target, payload, connections, per, options.duration)] * options.processes
        for args in runs:
            context.Process(target=generator, args=(args, results)).start()
        latencies = [x for _ in range(options.processes) for x in results.get()]
        cpu, wall = cpu_seconds(pids) - cpu_before, time.monotonic() - wall_before
        memory = rss(metrics_port)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    count = len(latencies)
    return {
        "infer_per_s": count / options.duration,
        "p50_ms": statistics.median(latencies) * 1000,
        "server_cpu_ms_per_request": cpu / count * 1000,
        "server_cpu_cores": cpu / wall,
        "rss_mib_per_worker": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    for round_ in range(options.rounds):
        for workers in [int(w) for w in options.workers.split(",")]:
            result = measure(options, workers)
            print(
                f"round {round_} workers {workers}: "
                + ", ".join(
                    f"{k} {[round(x) for x in v] if isinstance(v, list) else round(v, 3)}"
                    for k, v in result.items()
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
