"""`torchwire serve` as a real process: flags, TORCHWIRE_* variables, logs, and a clean SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from torchwire.client import Client
from torchwire.server import settings as settings_module
from torchwire.server.bench.commands import BENCH_EXTRA
from torchwire.server.settings import Settings

TORCHWIRE = Path(sys.executable).parent / "torchwire"


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


def _wait_for_line(process: subprocess.Popen[str], pattern: str, timeout: float) -> re.Match[str]:
    """Read the server's log until a line matches; fail with what it said if it never does."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


@contextlib.contextmanager
def _serve(command: Sequence[str] = (str(TORCHWIRE),), **variables: str) -> Iterator[subprocess.Popen[str]]:
    """`torchwire serve` on a free 127.0.0.1 port with these TORCHWIRE_* variables; killed if the
    test leaves it running, even when it fails."""
    env = {
        **os.environ,
        "TORCHWIRE_HOST": "127.0.0.1",
        "TORCHWIRE_PORT": "0",
        "TORCHWIRE_HTTP_PORT": "-1",  # free ports: a fixed one may be taken on a shared machine
        "TORCHWIRE_METRICS_PORT": "-1",
        "TORCHWIRE_TORCH_THREADS": "1",
    }
    env |= {f"TORCHWIRE_{name.upper()}": value for name, value in variables.items()}
    process = subprocess.Popen(
        [*command, "serve"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


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
    with _serve(command, event_loop=event_loop) as process:
        line = _wait_for_line(process, r"listening on 127\.0\.0\.1:(\d+) .*event loop (\w+)", 120)
        port = int(line.group(1))
        assert line.group(2) == event_loop
        _wait_for_line(process, r"model digits version 1: READY", 120)
        _wait_for_line(process, r"server ready", 120)
        with Client(f"127.0.0.1:{port}", timeout=30) as client:
            assert client.ready("digits") is True
            a = np.arange(16, dtype=np.int32).reshape(1, 16)
            out = client.predict("simple", {"INPUT0": a, "INPUT1": a})
            np.testing.assert_array_equal(out["OUTPUT0"], a + a)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for field in Settings.__dataclass_fields__:
        assert f"`TORCHWIRE_{field.upper()}`" in readme, field


def test_json_logs_are_one_object_per_line() -> None:
    with _serve(metrics_port="0", log_format="json") as process:
        assert process.stderr is not None
        line = process.stderr.readline()
        record = json.loads(line)
        assert record["level"] == "INFO" and record["logger"] == "torchwire"
        assert record["message"].startswith("listening on 127.0.0.1:")
        _wait_for_line(process, r'"message": "server ready"', 120)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
