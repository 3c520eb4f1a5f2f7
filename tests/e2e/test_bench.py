"""`torchwire bench` end to end (a short real run), the bare server, and the load generator's edges."""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
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
import tritonclient.grpc

from support.modelgen import WidthFive, single_io_config, write_model
from support.serving import running_server
from torchwire.bench import perfanalyzer, processes, workload
from torchwire.bench.batchstats import Counts, mean_batch_size
from torchwire.bench.ceilings import InProcess
from torchwire.bench.loadgen import LoadError, WorkerPool, split
from torchwire.bench.results import Level, Measured, flag_impossible
from torchwire.client import Client
from torchwire.client._calls import ModelMetadata, TensorMetadata
from torchwire.client._proto import grpc_service_pb2 as pb

SIMPLE = ModelMetadata(
    "simple",
    ("1",),
    "pytorch_libtorch",
    (TensorMetadata("INPUT0", "INT32", (-1, 16)), TensorMetadata("INPUT1", "INT32", (-1, 16))),
    (TensorMetadata("OUTPUT0", "INT32", (-1, 16)), TensorMetadata("OUTPUT1", "INT32", (-1, 16))),
)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["bench", "--model", "mlp", "--concurrency", "0"],
            "torchwire bench: --concurrency levels must be >= 1",
        ),
        (["soak", "--model", "mlp", "--duration", "-1"], "torchwire soak: --duration must be > 0"),
        (
            ["bench", "--model", "mlp", "--shape", "INPUT__0:zero"],
            "torchwire bench: --shape 'INPUT__0:zero': expected NAME:D1,D2,... with every size >= 1",
        ),
    ],
)
def test_bad_options_exit_2_naming_the_option(arguments: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "torchwire.server", *arguments], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stdout


def test_short_run_writes_sane_results(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torchwire.server", "bench", "--model", "mlp"]
    command += ["--concurrency", "1,4", "--duration", "1", "--warmup", "0.3", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr

    (json_path,) = tmp_path.glob("mlp-*.json")
    run = json.loads(json_path.read_text())
    assert [level["concurrency"] for level in run["levels"]] == [1, 4]
    for level in run["levels"]:
        for name in ("torchwire", "bare"):  # the bare server is part of the package: it always runs
            measured = level[name]
            assert measured["throughput"] > 0 and measured["completed"] > 0
            assert measured["p50_ms"] <= measured["p90_ms"] <= measured["p99_ms"]
            assert measured["errors"] == {}
        batch = level["torchwire"]["mean_batch_size"]
        assert batch is not None and batch >= 1
        assert level["torchwire"]["server_cpu_us"] > 0  # read from /proc for the spawned server
        assert level["inprocess"]["rows_per_s"] > 0 and level["inprocess"]["batch"] >= 1
        assert level["ratios"]["vs_bare"] > 0
        # A server cannot beat its own model: a ratio above 1 is left out and said loudly instead.
        ratio = level["ratios"]["vs_inprocess"]
        if ratio is None:
            assert level["inprocess"]["reliable"] is False
            assert any(
                f"UNRELIABLE in-process ceiling at concurrency {level['concurrency']}:" in n
                for n in run["notes"]
            )
        else:
            assert 0 < ratio <= 1 and level["inprocess"]["reliable"] is True
        # Both bare flavors ran; the ceiling is the faster of the two at each level.
        flavors = level["bare_flavors"]
        assert sorted(flavors) == ["aio", "sync"]
        assert all(m["throughput"] > 0 and m["errors"] == {} for m in flavors.values())
        faster = max(flavors, key=lambda flavor: flavors[flavor]["throughput"])
        assert level["bare_flavor"] == faster and level["bare"] == flavors[faster]

    with json_path.with_suffix(".csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["concurrency"]) for row in rows] == [1, 4]
    assert all(float(row["throughput"]) > 0 and float(row["vs_bare"]) > 0 for row in rows)
    assert json_path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tw/bare" in done.stdout  # the table was printed


@pytest.fixture(scope="module", params=["sync", "aio"])
def bare_target(request: pytest.FixtureRequest) -> Iterator[str]:
    outputs = workload.build(SIMPLE, 8, 1).output_specs()
    with processes.bare_server(outputs, aio=request.param == "aio", streams=2) as target:
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
        wrong = [dataclasses.replace(o, shape=(2, 17)) for o in load.expected_outputs()]
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


VARIABLE = ModelMetadata(
    "variable",
    ("1",),
    "pytorch_libtorch",
    (TensorMetadata("INPUT__0", "FP32", (-1, -1, 4)),),
    (TensorMetadata("OUTPUT__0", "FP32", (-1, -1, 4)),),
)


def test_shapes_size_variable_dims_and_must_fit_the_model() -> None:
    def shapes(load: workload.Workload) -> list[list[int]]:
        return [list(t.shape) for t in pb.ModelInferRequest.FromString(load.request).inputs]

    assert shapes(workload.build(VARIABLE, 8, 2)) == [[2, 1, 4]]  # variable dims: 1 unless given
    load = workload.build(VARIABLE, 8, 2, {"INPUT__0": (5, 4)})
    assert shapes(load) == [[2, 5, 4]] and load.inputs["INPUT__0"].shape == (2, 5, 4)
    assert workload.parse_shape("INPUT__0:5,4") == ("INPUT__0", (5, 4))
    for given, message in [
        ({"INPUT__0": (5, 3)}, r"--shape INPUT__0:5,3 does not fit the model's \[-1, 4\]"),
        ({"INPUT__0": (5,)}, "does not fit"),
        ({"OTHER": (1,)}, "--shape names OTHER: model 'variable' takes INPUT__0"),
    ]:
        with pytest.raises(ValueError, match=message):
            workload.build(VARIABLE, 8, 2, given)
    for text in ("INPUT__0", "INPUT__0:", ":5", "INPUT__0:0", "INPUT__0:5,x"):
        with pytest.raises(ValueError, match="expected NAME:D1,D2"):
            workload.parse_shape(text)


def test_bench_takes_shapes_for_variable_dims(tmp_path: Path) -> None:
    """A model with a variable dimension that fails unless rows are 5 wide (warmed up at 5):
    benchmarked with --shape INPUT__0:5, every request succeeds, so every one carried that shape."""
    repo = tmp_path / "repo"
    warmup = (
        'model_warmup [{ name: "five" batch_size: 1 inputs { key: "INPUT__0" '
        "value: { data_type: TYPE_FP32 dims: [5] zero_data: true } } }]"
    )
    config = single_io_config("five", "FP32", [-1], 8, f"dynamic_batching {{ }}\n{warmup}")
    write_model(repo, "five", WidthFive(), config)
    command = [sys.executable, "-m", "torchwire.server", "bench", "--model", "five", "--shape", "INPUT__0:5"]
    command += ["--concurrency", "2", "--duration", "0.5", "--warmup", "0.2", "--model-repository", str(repo)]
    done = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    (json_path,) = tmp_path.glob("five-*.json")
    run = json.loads(json_path.read_text())
    assert run["settings"]["shapes"] == {"INPUT__0": [5]}
    (level,) = run["levels"]
    assert level["torchwire"]["completed"] > 0 and level["torchwire"]["errors"] == {}


def test_bare_server_answers_what_perf_analyzer_asks(tmp_path: Path) -> None:
    """perf_analyzer reads metadata, config and statistics before and around its load; tritonclient
    makes the same calls. The bare server answers them as torchwire described the model."""
    description = tmp_path / "describe.json"
    with running_server() as tw:
        version = perfanalyzer.describe(tw.target, "simple", description)
        with Client(tw.target, timeout=10) as client:
            expected_config = client.config("simple")
    assert version == "1"
    outputs = workload.build(SIMPLE, 8, 1).output_specs()
    for aio in (False, True):
        with processes.bare_server(outputs, describe=description, aio=aio) as target:
            triton = tritonclient.grpc.InferenceServerClient(target)
            try:
                assert triton.is_server_live() and triton.is_server_ready()
                assert triton.is_model_ready("simple")
                assert triton.get_server_metadata().name == "bare"
                metadata = triton.get_model_metadata("simple")
                assert metadata.name == "simple" and list(metadata.versions) == ["1"]
                assert [i.name for i in metadata.inputs] == ["INPUT0", "INPUT1"]
                config = triton.get_model_config("simple").config  # tritonclient's own message class
                assert config.SerializeToString() == expected_config.SerializeToString()
                rows = np.ones((2, 16), dtype=np.int32)
                inputs = [tritonclient.grpc.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
                for tensor in inputs:
                    tensor.set_data_from_numpy(rows)
                for _ in range(3):
                    result = triton.infer("simple", inputs)
                    assert result.get_response().model_version == "1"  # named, as a real server does
                    assert not result.as_numpy("OUTPUT0").any()
                (stats,) = triton.get_inference_statistics("simple").model_stats
                assert (stats.name, stats.version) == ("simple", "1")
                assert stats.inference_count >= 3 and stats.execution_count == stats.inference_count
            finally:
                triton.close()


def test_perf_analyzer_output_is_read_per_request() -> None:
    """The CSV and summary lines as perf_analyzer 2.41 writes them (captured from a real run)."""
    csv_text = (
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
        "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
        "p50 latency,p90 latency,p95 latency,p99 latency\n"
        "4,1588.13,2,981,1220,19,279,13,0,2546,2806,2901,3222\n"
    )
    stdout = (
        "Request concurrency: 4\n  Client: \n    Request count: 5718\n"
        "    Throughput: 1588.13 infer/sec\n    Avg latency: 2514 usec (standard deviation 300 usec)\n"
        "  Server: \n    Avg request latency: 2000 usec (overhead 1 usec)\n"
    )
    load = perfanalyzer.Load(concurrency=4, batch=2, duration_s=1.0, streaming=False)
    measured = perfanalyzer.parse(csv_text, stdout, load)
    assert measured.throughput == pytest.approx(794.1, abs=0.1)  # inferences are rows: 2 a request
    assert (measured.p50_ms, measured.p90_ms, measured.p99_ms) == (2.546, 2.806, 3.222)
    assert measured.mean_ms == 2.514 and measured.completed == 5718
    command = perfanalyzer.command("pa", "127.0.0.1:1", "simple", "1", load, Path("out.csv"))
    assert command[command.index("--concurrency-range") + 1] == "4"
    assert command[command.index("-b") + 1] == "2" and "--streaming" not in command
    assert "--shape" not in command
    shaped = perfanalyzer.Load(4, 2, 1.0, False, {"INPUT0": (16,), "INPUT1": (2, 8)})
    command = perfanalyzer.command("pa", "127.0.0.1:1", "simple", "1", shaped, Path("out.csv"))
    given = [command[i + 1] for i, arg in enumerate(command) if arg == "--shape"]
    assert given == ["INPUT0:16", "INPUT1:2,8"]
    with pytest.raises(perfanalyzer.PerfAnalyzerError, match="no measurement"):
        perfanalyzer.parse(csv_text.splitlines()[0], stdout, load)


def test_a_ceiling_below_the_server_is_flagged_not_reported() -> None:
    def level(concurrency: int, throughput: float) -> Level:
        measured = Measured(concurrency, throughput, 100, 1.0, 1.0, 1.0, 1.0, {}, 4.0)
        return Level(concurrency, measured, {}, InProcess(4, 2_000.0, 1), "server", rows_per_request=1)

    notes: list[str] = []
    fine, impossible = flag_impossible([level(1, 500.0), level(16, 3_000.0)], notes)
    assert fine.vs_inprocess == 0.25 and fine.inprocess is not None and fine.inprocess.reliable
    assert impossible.vs_inprocess is None and impossible.inprocess is not None
    assert not impossible.inprocess.reliable
    assert notes == [
        "UNRELIABLE in-process ceiling at concurrency 16: 2,000 rows/s at batch 4, below the 3,000 rows/s "
        "torchwire itself did: the machine was busy while it was measured; tw/model left out"
    ]
