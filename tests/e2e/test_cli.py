"""`torchwire serve` as a real process: flags, TORCHWIRE_* variables, logs, and a clean SIGTERM."""

from __future__ import annotations

import importlib.metadata
import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from support.modelgen import Scale, single_io_config, write_model
from support.serving import TORCHWIRE, running_server, serve_process, wait_for_line
from torchwire.bench.commands import BENCH_EXTRA
from torchwire.client import Client, InferenceError
from torchwire.server import settings as settings_module
from torchwire.server.settings import Settings


def test_help_documents_every_setting_and_its_variable() -> None:
    result = subprocess.run([str(TORCHWIRE), "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for field in Settings.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in text, field
        assert "TORCHWIRE_" + field.upper() in text, field


def test_flags_beat_variables_beat_defaults(tmp_path: Path) -> None:
    env = {"TORCHWIRE_PORT": "9100", "TORCHWIRE_REFLECTION": "false", "TORCHWIRE_TORCH_THREADS": "3"}
    settings = settings_module.parse(["--port", "9200"], env)
    assert settings.port == 9200 and settings.reflection is False and settings.torch_threads == 3
    assert settings_module.parse([], {}).port == 8001
    assert settings_module.parse(["--model-repository", str(tmp_path)], {}).model_repository == tmp_path
    with pytest.raises(ValueError, match="TORCHWIRE_PORT"):
        settings_module.parse([], {"TORCHWIRE_PORT": "eighty"})
    with pytest.raises(ValueError, match="port"):
        settings_module.parse(["--port", "70000"], {})


# `torchwire` as installed by `pip install torchwire[server]` (the container image): without the
# bench extra's packages, which an import finder refuses as if they were not installed.
WITHOUT_BENCH_EXTRA = [
    sys.executable,
    "-c",
    f"""
import sys
class WithoutBenchExtra:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BENCH_EXTRA!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, WithoutBenchExtra())
from torchwire.server.cli import main
sys.exit(main(sys.argv[1:]))
""",
]


def test_serve_needs_only_the_server_extra_and_bench_says_what_it_needs() -> None:
    _serves_then_stops_on_sigterm(WITHOUT_BENCH_EXTRA, "uvloop")
    bench = subprocess.run(
        [*WITHOUT_BENCH_EXTRA, "bench", "--model", "mlp"], capture_output=True, text=True, timeout=120
    )
    assert bench.returncode == 1, bench.stderr
    assert "needs the bench extra (rich is missing): pip install 'torchwire[bench]'" in bench.stderr


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_serve_logs_address_and_models_then_stops_on_sigterm(event_loop: str) -> None:
    _serves_then_stops_on_sigterm((str(TORCHWIRE),), event_loop)


def _serves_then_stops_on_sigterm(command: Sequence[str], event_loop: str) -> None:
    with serve_process(command, event_loop=event_loop) as process:
        line = wait_for_line(process, r"listening on 127\.0\.0\.1:(\d+) .*event loop (\w+)", 120)
        port = int(line.group(1))
        assert line.group(2) == event_loop
        wait_for_line(process, r"model digits version 1: READY", 120)
        wait_for_line(process, r"server ready", 120)
        with Client(f"127.0.0.1:{port}", timeout=30) as client:
            assert client.ready("digits") is True
            a = np.arange(16, dtype=np.int32).reshape(1, 16)
            out = client.predict("simple", {"INPUT0": a, "INPUT1": a})
            np.testing.assert_array_equal(out["OUTPUT0"], a + a)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for field in Settings.__dataclass_fields__:
        assert f"`TORCHWIRE_{field.upper()}`" in readme, field


def test_json_logs_are_one_object_per_line() -> None:
    with serve_process(log_format="json", metrics_port="0") as process:
        assert process.stderr is not None
        line = process.stderr.readline()
        record = json.loads(line)
        assert record["level"] == "INFO" and record["logger"] == "torchwire"
        assert record["message"].startswith("listening on 127.0.0.1:")
        wait_for_line(process, r'"message": "server ready"', 120)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def _refused_start(process: subprocess.Popen[str]) -> str:
    """A server that cannot start exits 1 at once with one clear line and nothing else; that line."""
    assert process.wait(timeout=120) == 1
    assert process.stderr is not None
    lines = process.stderr.read().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_busy_metrics_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with serve_process(model_repository=str(tmp_path), metrics_port=str(port)) as process:
            line = _refused_start(process)
    assert line == (
        f"torchwire: cannot listen on 127.0.0.1:{port} for metrics (Address already in use): choose "
        "another port with --metrics-port or TORCHWIRE_METRICS_PORT (0 turns metrics off, -1 picks a "
        "free one)"
    )


def test_a_second_server_on_a_busy_grpc_port_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    write_model(tmp_path / "first", "scaled", Scale(1.0), single_io_config("scaled", "FP32", [4], 8))
    with running_server(tmp_path / "first") as first:
        with serve_process(model_repository=str(tmp_path), port=str(first.port)) as second:
            line = _refused_start(second)
        assert line == (
            f"torchwire: cannot listen on 127.0.0.1:{first.port} for gRPC (Address already in use): "
            "choose another port with --port or TORCHWIRE_PORT (0 picks a free one)"
        )
        # Every new connection still reaches the first server.
        for _ in range(10):
            with Client(first.target, timeout=30) as client:
                assert [m.name for m in client.repository_index()] == ["scaled"]


def test_an_empty_repository_says_it_has_no_models(tmp_path: Path) -> None:
    with serve_process(model_repository=str(tmp_path)) as process:
        port = int(wait_for_line(process, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        wait_for_line(
            process,
            rf"server NOT ready: the repository {re.escape(str(tmp_path))} has no models \(each model is "
            r"a folder with a config\.pbtxt and a version folder such as 1/model\.pt, or an exported "
            r"1/model\.pt2\)",
        )
        with Client(f"127.0.0.1:{port}", timeout=30) as client:
            assert client.ready() is False
            assert client.repository_index() == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_version_and_the_options_bench_and_soak_share_with_serve() -> None:
    def run(*args: str) -> str:
        result = subprocess.run([str(TORCHWIRE), *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return " ".join(result.stdout.split())

    assert run("--version") == f"torchwire {importlib.metadata.version('torchwire')}"
    serve_help = run("serve", "--help")
    assert "default ()" not in serve_help
    assert "--load-model LOAD_MODEL model to load at start in explicit mode" in serve_help
    assert "[env TORCHWIRE_LOAD_MODEL; default none]" in serve_help
    for command in ("bench", "soak"):
        assert (
            "--model-repository REPOSITORY, --repository REPOSITORY model repository, as for "
            "`torchwire serve`" in run(command, "--help")
        )
    assert "--duration DURATION seconds after warmup [60]" in run("soak", "--help")


def test_json_access_logs_carry_each_value_as_a_field() -> None:
    with serve_process(log_format="json", access_log_sample="1", metrics_port="0") as process:
        port = int(wait_for_line(process, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        wait_for_line(process, "server ready")
        with Client(f"127.0.0.1:{port}", timeout=30) as client:
            client.predict("digits", {"INPUT__0": np.zeros((1, 64), np.float32)}, request_id="r-1")
            with pytest.raises(InferenceError):
                client.predict("digits", {"INPUT__0": np.zeros((1, 63), np.float32)}, version="1")
        records = [
            json.loads(wait_for_line(process, r'^\{.*"logger": "torchwire\.access".*\}$').group(0))
            for _ in range(2)
        ]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    for record in records:
        assert record["duration_ms"] > 0 and record["peer"].startswith("ipv4:127.0.0.1:")
        del record["time"], record["duration_ms"], record["peer"], record["message"]
    assert records == [
        {
            "level": "INFO",
            "logger": "torchwire.access",
            "method": "ModelInfer",
            "model": "digits",
            "version": "1",
            "status": "OK",
            "request_id": "r-1",
        },
        {
            "level": "INFO",
            "logger": "torchwire.access",
            "method": "ModelInfer",
            "model": "digits",
            "version": "1",
            "status": "INVALID_ARGUMENT",
            "request_id": "",
        },
    ]
