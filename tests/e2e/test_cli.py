"""`torchwire serve` as a real process: flags, TORCHWIRE_* variables, logs, and a clean SIGTERM."""

from __future__ import annotations

import importlib.metadata
import json
import re
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from support.modelgen import Scale, single_io_config, write_model
from support.serving import TORCHWIRE, ServeProcess, running_server, serve_process
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


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_serve_logs_address_and_models_then_stops_on_sigterm(event_loop: str) -> None:
    with serve_process(event_loop=event_loop) as server:
        line = server.wait_for(r"listening on 127\.0\.0\.1:(\d+) .*event loop (\w+)")
        assert int(line.group(1)) == server.port
        assert line.group(2) == event_loop
        server.wait_for(r"model digits version 1: READY")
        server.wait_for(r"server ready")
        with Client(server.target, timeout=30) as client:
            assert client.ready("digits") is True
            a = np.arange(16, dtype=np.int32).reshape(1, 16)
            out = client.predict("simple", {"INPUT0": a, "INPUT1": a})
            np.testing.assert_array_equal(out["OUTPUT0"], a + a)
        assert server.stop() == 0


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for field in Settings.__dataclass_fields__:
        assert f"`TORCHWIRE_{field.upper()}`" in readme, field


def test_json_logs_are_one_object_per_line() -> None:
    with serve_process(log_format="json", metrics_port="0") as server:
        server.wait_for(r'"message": "server ready"')
        record = json.loads(server.lines["stderr"][0])
        assert record["level"] == "INFO" and record["logger"] == "torchwire"
        assert record["message"].startswith("listening on 127.0.0.1:")
        assert server.stop() == 0
    assert all(json.loads(line) for line in server.lines["stderr"])


def _refused_start(server: ServeProcess) -> str:
    """A server that cannot start exits 1 at once with one clear line and nothing else; that line."""
    assert server.wait(timeout=120) == 1
    lines = server.text().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(("setting", "what"), [("metrics_port", "metrics"), ("http_port", "HTTP")])
def test_a_busy_metrics_or_http_port_is_one_clear_line(tmp_path: Path, setting: str, what: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with serve_process(model_repository=str(tmp_path), **{setting: str(port)}) as process:
            line = _refused_start(process)
    flag, variable = "--" + setting.replace("_", "-"), "TORCHWIRE_" + setting.upper()
    assert line == (
        f"torchwire: cannot listen on 127.0.0.1:{port} for {what} (Address already in use): choose "
        f"another port with {flag} or {variable} (0 turns {what} off, -1 picks a free one)"
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
    with serve_process(model_repository=str(tmp_path)) as server:
        server.wait_for(
            rf"server NOT ready: the repository {re.escape(str(tmp_path))} has no models \(each model is "
            r"a folder with a config\.pbtxt and a version folder such as 1/model\.pt, or an exported "
            r"1/model\.pt2\)",
        )
        with Client(server.target, timeout=30) as client:
            assert client.ready() is False
            assert client.repository_index() == []
        assert server.stop() == 0


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
    with serve_process(log_format="json", access_log_sample="1", metrics_port="0") as server:
        server.wait_for("server ready")
        with Client(server.target, timeout=30) as client:
            client.predict("digits", {"INPUT__0": np.zeros((1, 64), np.float32)}, request_id="r-1")
            with pytest.raises(InferenceError):
                client.predict("digits", {"INPUT__0": np.zeros((1, 63), np.float32)}, version="1")
        records = [
            json.loads(server.wait_for(r'^\{.*"logger": "torchwire\.access".*\}$').group(0)) for _ in range(2)
        ]
        assert server.stop() == 0
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
