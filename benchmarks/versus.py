"""torchwire against what a user would pick instead, side by side in one run: KServe's Python model
server and MLServer (each optional, each in a venv of its own) and the two bare servers (sync grpc
and grpc.aio, answering zeros, no model).

Every server is started here on a free 127.0.0.1 port and driven by `torchwire bench`'s own load
generator (the same processes, the same pre-serialized request, batch-1, unary ModelInfer), one
window per server per round, the order rotated each round so that no server always runs first.
Prints each server's median over the rounds: requests/s, p50 and p99, and the server's CPU per
request from /proc (torchwire and KServe; the bare servers are a ceiling, not a contender).

    benchmarks/contender_venv.sh kserve     # prints the KServe venv's python (optional)
    benchmarks/contender_venv.sh mlserver   # prints the MLServer venv's python (optional)
    .venv/bin/python benchmarks/versus.py --model cnn --concurrency 1,64 \
        --kserve-python benchmarks/kserve/.venv/bin/python \
        --mlserver-python benchmarks/mlserver/.venv/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from bundled import BARE_OUTPUTS, INPUTS, OUTPUTS, request  # this folder's: run as a script

from torchwire.bench import processes
from torchwire.bench.loadgen import WorkerPool
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "models"


@dataclass(frozen=True, slots=True)
class Server:
    target: str
    pid: int | None  # None: not measured for CPU (the bare servers)


@dataclass
class Cell:
    throughput: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


def wait_ready(target: str, model: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with grpc.insecure_channel(target) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                if stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=2).ready:
                    return
        except grpc.RpcError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise processes.StartError(f"{target}: model {model} not ready (exit code {proc.poll()})")
        time.sleep(0.3)


@contextlib.contextmanager
def contender(server: str, python: str, model: str, *more: str) -> Iterator[Server]:
    """KServe or MLServer serving `model` from the bundled repository, started with `python` (a venv
    with that server: benchmarks/contender_venv.sh) on free ports; always stopped."""
    grpc_port, http_port = processes.free_port(), processes.free_port()
    command = [python, str(HERE / server / "server.py"), "--model", model, "--repository", str(MODELS)]
    if server == "kserve":  # KServe's own flag names
        command += ["--grpc_port", str(grpc_port), "--http_port", str(http_port)]
    else:
        command += ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    proc = subprocess.Popen([*command, *more], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        target = f"127.0.0.1:{grpc_port}"
        wait_ready(target, model, 120, proc)
        yield Server(target, proc.pid)
    finally:
        processes.stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="mlp", choices=sorted(INPUTS))
    parser.add_argument("--concurrency", default="1,64", help="comma-separated levels")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per window")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each window")
    parser.add_argument("--workers", type=int, default=1, help="load generator processes")
    parser.add_argument("--kserve-python", help="a python with kserve (contender_venv.sh kserve)")
    parser.add_argument("--mlserver-python", help="a python with mlserver (contender_venv.sh mlserver)")
    parser.add_argument("--torch-threads", type=int, help="passed to torchwire serve")
    options = parser.parse_args()

    cells: dict[tuple[int, str], Cell] = {}
    with contextlib.ExitStack() as stack:
        spawned = stack.enter_context(
            processes.torchwire_process(None, torch_threads=options.torch_threads, timeout=120)
        )
        servers = {"torchwire": Server(spawned.target, spawned.pid)}
        if options.kserve_python:
            servers["kserve"] = stack.enter_context(contender("kserve", options.kserve_python, options.model))
        if options.mlserver_python:  # its two settings: adaptive batching helps under load, costs alone
            for name, more in (("mlserver", ()), ("mlserver batching", ("--batching",))):
                servers[name] = stack.enter_context(
                    contender("mlserver", options.mlserver_python, options.model, *more)
                )
        for name, aio in (("bare sync", False), ("bare aio", True)):
            bare = stack.enter_context(processes.bare_server(BARE_OUTPUTS, aio=aio))
            servers[name] = Server(bare, None)
        pool = stack.enter_context(WorkerPool(options.workers))
        for name, server in servers.items():
            pool.connect(name, server.target, request(options.model), OUTPUTS, streaming=False)
        names = list(servers)
        for concurrency in map(int, options.concurrency.split(",")):
            for round_ in range(options.rounds):
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    measure(pool, servers[name], name, concurrency, options, cells)
    print(f"\n{options.model}: medians of {options.rounds} rounds of {options.duration:g} s")
    print("| server | conc. | infer/s | p50 ms | p99 ms | server CPU µs/req | of bare |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for concurrency in map(int, options.concurrency.split(",")):
        bare = max(statistics.median(cells[(concurrency, n)].throughput) for n in ("bare sync", "bare aio"))
        for name in servers:
            cell = cells[(concurrency, name)]
            rate = statistics.median(cell.throughput)
            cpu = f"{statistics.median(cell.cpu_us):,.0f}" if cell.cpu_us else ""
            print(
                f"| {name} | {concurrency} | {rate:,.0f} | {statistics.median(cell.p50_ms):.2f} | "
                f"{statistics.median(cell.p99_ms):.2f} | {cpu} | {rate / bare:.2f} |"
            )


def measure(
    pool: WorkerPool,
    server: Server,
    name: str,
    concurrency: int,
    options: argparse.Namespace,
    cells: dict[tuple[int, str], Cell],
) -> None:
    cpu_before = processes.cpu_seconds(server.pid) if server.pid else None
    pool.start(name, concurrency, time.monotonic() + 0.2, options.warmup, options.duration)
    sample = pool.collect()
    cpu_after = processes.cpu_seconds(server.pid) if server.pid else None
    if sample.errors:
        sys.exit(f"{name}: errors {sample.errors} {sample.problem or ''}")
    completed = len(sample.latencies_ns)
    rate = completed / options.duration
    cell = cells.setdefault((concurrency, name), Cell())
    cell.throughput.append(rate)
    cell.p50_ms.append(float(np.percentile(sample.latencies_ns, 50)) / 1e6)
    cell.p99_ms.append(float(np.percentile(sample.latencies_ns, 99)) / 1e6)
    if cpu_before is not None and cpu_after is not None and rate:
        # CPU was read around warmup and window alike: divide by the requests of both, at the window's rate.
        spanned = rate * (options.warmup + options.duration + 0.2)
        cell.cpu_us.append((cpu_after - cpu_before) / spanned * 1e6)
    print(f"c={concurrency} {name}: {rate:,.0f}/s p50 {cell.p50_ms[-1]:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
