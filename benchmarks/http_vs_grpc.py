"""Requests per second through the HTTP/REST port against the gRPC port of one `torchwire serve`.

    .venv/bin/python benchmarks/http_vs_grpc.py [--seconds 2] [--concurrency 16] [--rounds 7]

The server runs as its own process (uvloop, metrics off, one torch thread); this process drives it
with `--concurrency` requests in flight on one asyncio loop: grpc.aio for gRPC, an aiohttp client
session (keep-alive) for HTTP. The kinds alternate round by round, so each ratio's halves are
seconds apart, and each ratio is the median of its per-round ratios. Measured: readiness
(ServerReady against GET /v2/health/ready) and inference of the `simple` model (1x16 INT32
inputs), gRPC raw bytes against HTTP JSON and HTTP binary tensors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import grpc.aio
import numpy as np
import uvloop

from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def rate(
    call: Callable[[], Awaitable[None]], concurrency: int, seconds: float, pid: int
) -> tuple[float, float]:
    """Requests per second, and the server's CPU microseconds per request."""
    done = 0
    cpu = cpu_seconds(pid)
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await call()
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.monotonic() - start), (cpu_seconds(pid) - cpu) * 1e6 / done


async def measure(
    grpc_port: int, http_port: int, seconds: float, concurrency: int, rounds: int, pid: int
) -> None:
    a = np.arange(16, dtype="<i4").reshape(1, 16)
    infer = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        infer.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        infer.raw_input_contents.append(a.tobytes())
    json_body = json.dumps(
        {
            "inputs": [
                {"name": n, "shape": [1, 16], "datatype": "INT32", "data": a.ravel().tolist()}
                for n in ("INPUT0", "INPUT1")
            ]
        }
    ).encode()
    header = json.dumps(
        {
            "inputs": [
                {"name": n, "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}}
                for n in ("INPUT0", "INPUT1")
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary_body = header + a.tobytes() * 2
    base = f"http://127.0.0.1:{http_port}"
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def grpc_ready() -> None:
            await stub.ServerReady(pb.ServerReadyRequest())

        async def http_ready() -> None:
            async with session.get(base + "/v2/health/ready") as reply:
                assert reply.status == 200
                await reply.read()

        async def grpc_infer() -> None:
            await stub.ModelInfer(infer)

        async def http_json() -> None:
            async with session.post(base + "/v2/models/simple/infer", data=json_body) as reply:
                assert reply.status == 200
                await reply.read()

        async def http_binary() -> None:
            headers = {"Inference-Header-Content-Length": str(len(header))}
            async with session.post(
                base + "/v2/models/simple/infer", data=binary_body, headers=headers
            ) as reply:
                assert reply.status == 200
                await reply.read()

        kinds = {
            "ready  gRPC": grpc_ready,
            "ready  HTTP": http_ready,
            "infer  gRPC": grpc_infer,
            "infer  HTTP JSON": http_json,
            "infer  HTTP binary": http_binary,
        }
        for call in kinds.values():  # warm up every path (connections, caches)
            await rate(call, concurrency, 0.5, pid)
        results: dict[str, list[float]] = {name: [] for name in kinds}
        costs: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(rounds):
            for name, call in kinds.items():
                per_second, cpu_us = await rate(call, concurrency, seconds, pid)
                results[name].append(per_second)
                costs[name].append(cpu_us)
    # The machine is shared: rates swing between rounds, so each ratio is taken within its round
    # (halves seconds apart) and the median over rounds is reported. The server's CPU time per request
    # depends far less on what else runs.
    print(f"concurrency {concurrency}, {rounds} rounds of {seconds:g} s per kind; medians over rounds")
    print(f"  {'':<20} {'req/s':>9} {'of gRPC':>8} {'server CPU us/req':>18} {'of gRPC':>8}")
    for name, rates in results.items():
        base = "ready  gRPC" if name.startswith("ready") else "infer  gRPC"
        ratios = [r / g for r, g in zip(rates, results[base], strict=True)]
        cost_ratios = [c / g for c, g in zip(costs[name], costs[base], strict=True)]
        print(
            f"  {name:<20} {statistics.median(rates):9.0f} {statistics.median(ratios):8.2f} "
            f"{statistics.median(costs[name]):18.0f} {statistics.median(cost_ratios):8.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    grpc_port, http_port = free_port(), free_port()
    command = [sys.executable, "-m", "torchwire.server", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", "0"]
    command += ["--torch-threads", "1"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "server ready" in line:
                break
        else:
            raise SystemExit("the server did not start")
        uvloop.run(measure(grpc_port, http_port, args.seconds, args.concurrency, args.rounds, server.pid))
    finally:
        server.terminate()
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
