"""`torchwire bench` end to end (a short real run), the bare server, and the load generator's edges."""

from __future__ import annotations

import concurrent.futures
import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from torchwire.client import Client
from torchwire.client._calls import ModelMetadata, TensorMetadata
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.server.bench import processes, workload
from torchwire.server.bench.batchstats import Counts, mean_batch_size
from torchwire.server.bench.loadgen import LoadError, WorkerPool, split

SIMPLE = ModelMetadata(
    "simple",
    ("1",),
    "pytorch_libtorch",
    (TensorMetadata("INPUT0", "INT32", (-1, 16)), TensorMetadata("INPUT1", "INT32", (-1, 16))),
    (TensorMetadata("OUTPUT0", "INT32", (-1, 16)), TensorMetadata("OUTPUT1", "INT32", (-1, 16))),
)


def test_short_run_writes_sane_results(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torchwire.server", "bench", "--model", "mlp"]
    command += ["--concurrency", "1,4", "--duration", "1", "--warmup", "0.3", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr

    (json_path,) = tmp_path.glob("mlp-*.json")
    run = json.loads(json_path.read_text())
    assert [level["concurrency"] for level in run["levels"]] == [1, 4]
    for level in run["levels"]:
        for name in ("torchwire", "bare"):  # a checkout has benchmarks/: the bare server ran
            measured = level[name]
            assert measured["throughput"] > 0 and measured["completed"] > 0
            assert measured["p50_ms"] <= measured["p90_ms"] <= measured["p99_ms"]
            assert measured["errors"] == {}
        batch = level["torchwire"]["mean_batch_size"]
        assert batch is not None and batch >= 1
        assert level["torchwire"]["server_cpu_us"] > 0  # read from /proc for the spawned server
        assert level["inprocess"]["rows_per_s"] > 0 and level["inprocess"]["batch"] >= 1
        assert level["ratios"]["vs_bare"] > 0 and level["ratios"]["vs_inprocess"] > 0

    with json_path.with_suffix(".csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["concurrency"]) for row in rows] == [1, 4]
    assert all(float(row["throughput"]) > 0 and float(row["vs_bare"]) > 0 for row in rows)
    assert json_path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tw/bare" in done.stdout  # the table was printed


@pytest.fixture(scope="module")
def bare_target() -> Iterator[str]:
    script = processes.bare_server_script()
    assert script is not None, "benchmarks/bare_server.py belongs to a checkout"
    with processes.bare_server(script, workload.build(SIMPLE, 8, 1).output_specs()) as target:
        yield target


def test_bare_server_answers_zeros_of_the_right_shape(bare_target: str) -> None:
    rows = np.arange(48, dtype=np.int32).reshape(3, 16)
    with Client(bare_target, timeout=10) as client:
        outputs = client.predict("simple", {"INPUT0": rows, "INPUT1": rows})
    assert sorted(outputs) == ["OUTPUT0", "OUTPUT1"]
    for array in outputs.values():
        assert array.dtype == np.int32 and array.shape == (3, 16)
        assert not array.any()


def test_load_generator_validates_and_counts(bare_target: str) -> None:
    load = workload.build(SIMPLE, 8, 2)
    with WorkerPool(2) as pool:
        for streaming in (False, True):
            pool.connect("bare", bare_target, load.request, load.expected_outputs(), streaming)
            pool.start("bare", 3, time.monotonic() + 0.1, 0.1, 0.3)
            sample = pool.collect()
            assert sample.errors == {} and sample.problem is None
            assert sample.latencies_ns.size > 0 and sample.latencies_ns.min() > 0
        # Expecting a shape the server does not send: sampled responses are flagged, not counted.
        wrong = [{**o, "shape": [2, 17]} for o in load.expected_outputs()]
        pool.connect("wrong", bare_target, load.request, wrong, False)
        pool.start("wrong", 1, time.monotonic() + 0.1, 0.0, 0.3)
        sample = pool.collect()
        assert sample.errors.get("INVALID_RESPONSE", 0) >= 1
        assert sample.problem is not None and "[2, 17]" in sample.problem


def _unary_only_server() -> tuple[grpc.Server, str]:
    """Answers ModelInfer only, so ModelStreamInfer is UNIMPLEMENTED, as on an older server."""

    def infer(request: bytes, context: Any) -> bytes:
        return pb.ModelInferResponse().SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def test_streaming_unimplemented_is_a_load_error() -> None:
    server, target = _unary_only_server()
    load = workload.build(SIMPLE, 8, 1)
    try:
        with WorkerPool(1) as pool:
            pool.connect("old", target, load.request, load.expected_outputs(), True)
            pool.start("old", 2, time.monotonic() + 0.1, 0.0, 0.5)
            with pytest.raises(LoadError) as caught:
                pool.collect()
    finally:
        server.stop(0)
    assert caught.value.code == "UNIMPLEMENTED"


def test_workload_and_split() -> None:
    load = workload.build(SIMPLE, 8, 3)
    request = pb.ModelInferRequest.FromString(load.request)
    assert [list(t.shape) for t in request.inputs] == [[3, 16], [3, 16]]
    assert [len(raw) for raw in request.raw_input_contents] == [3 * 16 * 4] * 2
    assert load.output_specs() == ["OUTPUT0:INT32:-1,16", "OUTPUT1:INT32:-1,16"]
    with pytest.raises(ValueError, match="max_batch_size"):
        workload.build(SIMPLE, 8, 9)
    assert split(10, 3) == [4, 3, 3] and split(1, 2) == [1, 0]
    assert mean_batch_size(Counts(10, 5), Counts(74, 13)) == 8.0
    assert mean_batch_size(Counts(10, 5), Counts(10, 5)) is None
