"""Triton's perf_analyzer as the load generator: the tool the batching targets were measured with.

perf_analyzer is a C++ client, so at a given concurrency it leaves more of a shared machine's CPU
to the server than the Python load generator does, and the two can rank servers differently. It
runs against torchwire and the bare server alike (the bare server answers its metadata and
statistics calls from a description of the model that torchwire gives, see `describe`).

Each level is one perf_analyzer run: it repeats measurement windows of `--duration` seconds until
three agree within 25% (at most 10), and reports the last three. Its CSV gives throughput and
latency percentiles; its standard output gives the request count and mean latency.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

from .results import Measured

STABILITY_PERCENT = 25  # windows this close count as stable: a shared machine drifts more than 10%
MAX_TRIALS = 10
_REQUESTS = re.compile(r"Request count: (\d+)")
_MEAN_US = re.compile(r"Avg latency: (\d+) usec")  # the client's; the server's says "request latency"


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer could not measure a level; the message carries its own words."""


@dataclass(frozen=True, slots=True)
class Load:
    """What one level asks of perf_analyzer."""

    concurrency: int
    batch: int
    duration_s: float
    streaming: bool
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # perf_analyzer's --shape


def describe(target: str, model: str, path: Path) -> str:
    """Write what the bare server needs to answer perf_analyzer for `model`; returns its version."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=10.0)
        config = stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=10.0)
    version = latest_version(metadata.versions)
    answers = {"metadata": metadata, "config": config}
    path.write_text(
        json.dumps(
            {"model": model, "version": version}
            | {key: base64.b64encode(answer.SerializeToString()).decode() for key, answer in answers.items()}
        )
    )
    return version


def latest_version(versions: Sequence[str]) -> str:
    """The version perf_analyzer is told to load (`-x`): the newest one served."""
    return versions[-1] if versions else "1"


def command(binary: str, target: str, model: str, version: str, load: Load, csv_path: Path) -> list[str]:
    args = [
        binary,
        "-m", model,
        "-x", version,
        "-i", "grpc",
        "-u", target,
        "-b", str(load.batch),
        "--concurrency-range", str(load.concurrency),
        "--measurement-interval", str(max(1, round(load.duration_s * 1000))),
        "--stability-percentage", str(STABILITY_PERCENT),
        "--max-trials", str(MAX_TRIALS),
        "-f", str(csv_path),
    ]  # fmt: skip
    for name, dims in load.shapes.items():
        args += ["--shape", f"{name}:{','.join(map(str, dims))}"]
    return args + (["--streaming"] if load.streaming else [])


def run_level(binary: str, target: str, model: str, version: str, load: Load) -> Measured:
    """One perf_analyzer run under `load`; Measured without batch size or CPU (the caller adds them)."""
    with tempfile.TemporaryDirectory(prefix="torchwire-pa-") as folder:
        csv_path = Path(folder) / "level.csv"
        timeout = (MAX_TRIALS + 2) * load.duration_s + 120
        try:
            done = subprocess.run(
                command(binary, target, model, version, load, csv_path),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PerfAnalyzerError(f"perf_analyzer did not finish within {timeout:.0f} s") from exc
        if done.returncode != 0 or not csv_path.is_file():
            words = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise PerfAnalyzerError(f"perf_analyzer exited {done.returncode}: {' / '.join(words)}")
        return parse(csv_path.read_text(), done.stdout, load)


def parse(csv_text: str, stdout: str, load: Load) -> Measured:
    rows = list(csv.DictReader(csv_text.splitlines()))
    if not rows:
        raise PerfAnalyzerError("perf_analyzer wrote no measurement")
    row = rows[-1]
    counts = _REQUESTS.findall(stdout)
    means = _MEAN_US.findall(stdout)

    def ms(column: str) -> float:
        return round(float(row[column]) / 1000, 4)  # perf_analyzer reports microseconds

    return Measured(
        concurrency=load.concurrency,
        throughput=round(float(row["Inferences/Second"]) / load.batch, 1),  # requests, as ours
        completed=int(counts[-1]) if counts else 0,
        p50_ms=ms("p50 latency"),
        p90_ms=ms("p90 latency"),
        p99_ms=ms("p99 latency"),
        mean_ms=round(int(means[-1]) / 1000, 4) if means else None,
        errors={},  # perf_analyzer stops at the first failed request: a failure raises instead
        mean_batch_size=None,
    )
