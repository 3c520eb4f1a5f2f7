"""`torchwire soak` end to end: a short real soak passes; a target whose model goes away fails it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from support.serving import RunningServer, running_server, wait_until
from torchwire.bench.options import check_loopback
from torchwire.bench.soak import boundaries
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

SOAK = [sys.executable, "-m", "torchwire.server", "soak"]


def _only_result(out: Path) -> dict[str, Any]:
    (path,) = out.glob("soak-digits-*.json")
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def test_short_soak_against_a_spawned_server_passes(tmp_path: Path) -> None:
    command = [*SOAK, "--model", "digits", "--duration", "6", "--warmup", "1", "--interval", "1"]
    command += ["--concurrency", "8", "--stream-share", "0.25", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout

    result = _only_result(tmp_path)
    assert result["settings"]["unary"] == 6 and result["settings"]["stream_slots"] == [1, 1]
    intervals = result["intervals"]
    assert [i["warmup"] for i in intervals] == [True] + [False] * 6
    for interval in intervals:
        assert interval["errors"] == {}
        assert interval["unary_ok"] > 0 and interval["stream_ok"] > 0  # both kinds ran all along
        assert interval["throughput"] > 0 and interval["rss_bytes"] > 0
    summary = result["summary"]
    assert summary["passed"] and summary["errors"] == {}
    assert summary["requests"] == sum(i["unary_ok"] + i["stream_ok"] for i in intervals)
    assert 0 < summary["throughput_min"] <= summary["throughput_median"] <= summary["throughput_max"]
    for key in ("rss_start_bytes", "rss_warmup_end_bytes", "rss_end_bytes", "rss_peak_bytes"):
        assert summary[key] > 0
    assert summary["rss_warmup_end_bytes"] == intervals[0]["rss_bytes"]
    assert summary["rss_end_bytes"] == intervals[-1]["rss_bytes"]
    assert summary["rss_growth_pct"] is not None and summary["rss_slope_mib_per_min"] is not None

    (csv_path,) = tmp_path.glob("soak-digits-*.csv")
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(intervals) and all(int(row["rss_bytes"]) > 0 for row in rows)


@pytest.fixture(scope="module")
def explicit() -> Iterator[RunningServer]:
    """The bundled models with only `digits` loaded, which a test may unload."""
    with running_server(model_control_mode="explicit", load_model=("digits",)) as server:
        yield server


def _successes(channel: grpc.Channel) -> int:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits"), timeout=10)
    return sum(stats.inference_stats.success.count for stats in reply.model_stats)


def test_failing_target_counts_errors_and_exits_non_zero(explicit: RunningServer, tmp_path: Path) -> None:
    # The soak checks the model up front, like bench: a name the server does not have sends nothing.
    done = subprocess.run(
        [*SOAK, "--model", "no-such-model", "--target", explicit.target, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "no-such-model" in done.stdout, done.stdout + done.stderr

    # A model that goes away mid-soak: every later request fails, is counted, and fails the run.
    command = [*SOAK, "--model", "digits", "--target", explicit.target, "--duration", "4"]
    command += ["--warmup", "0", "--interval", "1", "--concurrency", "4", "--out", str(tmp_path)]
    with grpc.insecure_channel(explicit.target) as channel:
        soak = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until(lambda: _successes(channel) > 0, "the soak's load arrives", timeout=60)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="digits"), timeout=60)
            output, _ = soak.communicate(timeout=120)
        finally:
            soak.kill()
            soak.wait()
    assert soak.returncode == 1, output
    assert "FAIL" in output

    result = _only_result(tmp_path)
    summary = result["summary"]
    assert not summary["passed"]
    assert summary["errors"].get("UNAVAILABLE", 0) > 0  # unary calls to the unloaded model
    assert summary["errors"].get("STREAM_ERROR", 0) > 0  # stream responses carrying error_message
    assert summary["ok"] > 0 and summary["requests"] == summary["ok"] + sum(summary["errors"].values())
    assert all(i["rss_bytes"] is None for i in result["intervals"])  # --target: not our process


def test_plan_and_loopback_checks() -> None:
    assert boundaries(1, 3, 1) == [1, 2, 3, 4]
    assert boundaries(30, 600, 10)[:4] == [10, 20, 30, 40] and boundaries(30, 600, 10)[-1] == 630
    assert boundaries(2.5, 2, 2) == [2, 2.5, 4, 4.5]  # warmup's end is always a boundary
    for target in ("127.0.0.1:8001", "localhost:1", "[::1]:8001", "127.1.2.3:9"):
        check_loopback(target)
    for target in ("10.0.0.5:8001", "example.com:443", "dns:///x:1", "127.0.0.1"):
        with pytest.raises(ValueError, match=r"loopback|HOST:PORT"):
            check_loopback(target)
