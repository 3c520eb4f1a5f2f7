"""The README's code runs as pasted: every Python block, the grpcurl and curl commands and the config.pbtxt,
against a real server. The README calls `make serve`'s server at localhost:8001 (gRPC) and
localhost:8000 (HTTP); here those addresses are replaced by a server's on free ports, and
`.venv/bin/grpcurl` by this environment's grpcurl."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from support.serving import RunningServer, running_server
from torchwire.client import Client
from torchwire.models import REPOSITORY

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
ADDRESS = "localhost:8001"
HTTP_ADDRESS = "localhost:8000"
GRPCURL = Path(sys.executable).parent / "grpcurl"


def blocks(language: str) -> list[str]:
    """The text of each fenced block opened with ```language (an empty language: a bare fence)."""
    found: list[str] = []
    lines: list[str] | None = None
    opened = ""
    for line in README.splitlines(keepends=True):
        if line.startswith("```"):
            if lines is None:
                lines, opened = [], line[3:].strip()
            else:
                if opened == language:
                    found.append("".join(lines))
                lines = None
        elif lines is not None:
            lines.append(line)
    return found


def section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    return README[start : README.index("\n#", start + len(title) + 2)]


# What each Python block prints, in README order: a new block needs its line here.
PRINTS = [
    "StatusCode.INVALID_ARGUMENT input 'INPUT__0'",  # the sync client
    "[[ 1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16]]",  # the asyncio client
    "[[11], [6]] [[2], [1]]\n[[b'HELLO WORLD'], [b'H\\xc3\\xa9LLO']]",  # strings (the text model)
    "99 99 ",  # the stream: index, request id, digit
    "",  # many replicas: clients built, no call made
    "[[ 0  2  4  6  8 10 12 14 16 18 20 22 24 26 28 30]]\n32",  # tritonclient
    "[[ 0  2  4  6  8 10 12 14 16 18 20 22 24 26 28 30]]\npytorch_libtorch",  # tritonclient.http
    "[[ 0  2  4  6  8 10 12 14 16 18 20 22 24 26 28 30]]",  # tracing: a call with a traceparent
]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """The bundled repository, with HTTP on as `make serve`'s."""
    with running_server(http_port=-1) as running:
        yield running


def test_every_python_block_is_listed() -> None:
    assert len(blocks("python")) == len(PRINTS)


@pytest.mark.parametrize("index", range(len(PRINTS)))
def test_python_block_runs_as_pasted(server: RunningServer, index: int, tmp_path: Path) -> None:
    code = blocks("python")[index]
    calls_the_server = ADDRESS in code or HTTP_ADDRESS in code
    script = tmp_path / "block.py"
    script.write_text(code.replace(ADDRESS, server.target).replace(HTTP_ADDRESS, server.http_target))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, f"block {index}:\n{code}\n{result.stderr[-3000:]}"
    if PRINTS[index]:
        assert calls_the_server
        assert PRINTS[index] in result.stdout, result.stdout
    else:
        assert result.stdout == ""


def test_grpcurl_commands_run_as_pasted(server: RunningServer) -> None:
    (commands,) = [b for b in blocks("sh") if "grpcurl -plaintext" in b]
    assert commands.count(".venv/bin/grpcurl -plaintext ") == 5, "each command names grpcurl by its path"
    pasted = commands.replace(ADDRESS, server.target).replace(".venv/bin/grpcurl", str(GRPCURL))
    result = subprocess.run(
        ["bash", "-e", "-c", pasted], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "inference.GRPCInferenceService\n" in out  # list
    assert "rpc ModelInfer ( .inference.ModelInferRequest )" in out  # describe
    assert '"status": "SERVING"' in out  # health
    assert '"name": "simple"' in out and '"platform": "pytorch_libtorch"' in out  # metadata
    total = base64.b64encode(np.arange(1, 17, dtype="<i4").tobytes()).decode()
    assert f'"raw_output_contents": [\n    "{total}",' in out  # inference: OUTPUT0 = INPUT0 + INPUT1


def test_curl_commands_run_as_pasted(server: RunningServer) -> None:
    """The HTTP section's curl block, each command's answer checked against its comment."""
    curl = shutil.which("curl")
    assert curl is not None, "the README's HTTP examples use curl: install it (apt-get install curl)"
    (commands,) = [b for b in blocks("sh") if "curl -i localhost:8000/v2/health/live" in b]
    assert commands.count("curl ") == 9
    pasted = commands.replace(HTTP_ADDRESS, server.http_target).replace("curl ", f"{curl} -sS ")
    result = subprocess.run(
        ["bash", "-e", "-c", pasted], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("HTTP/1.1 200 OK") == 3  # live, ready, the model's ready
    assert '{"live":true}' in out and out.count('{"ready":true}') == 2
    assert '"extensions":["model_configuration","model_repository"' in out  # server metadata
    assert '{"name":"simple","versions":["1"],"platform":"pytorch_libtorch"' in out  # model metadata
    assert '"max_batch_size":8' in out  # the config
    assert '{"model_stats":[{"name":"simple","version":"1"' in out  # statistics
    assert '{"name":"simple","version":"1","state":"READY","reason":""}' in out  # the index
    # The inference, as the comment under the block shows it: OUTPUT0 = INPUT0 + INPUT1.
    assert '"data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]' in out
    assert '"data":[-1,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14]' in out


def test_the_config_example_serves(tmp_path: Path) -> None:
    (config,) = [b for b in blocks("") if b.startswith('name: "simple"')]
    shutil.copytree(REPOSITORY / "simple" / "1", tmp_path / "simple" / "1")
    (tmp_path / "simple" / "config.pbtxt").write_text(config)
    assert "data_type: TYPE_INT32" in section("## Model repository")
    with running_server(tmp_path) as server, Client(server.target, timeout=30) as client:
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        out = client.predict("simple", {"INPUT0": a, "INPUT1": a})
        np.testing.assert_array_equal(out["OUTPUT0"], a + a)
        assert client.config("simple").max_batch_size == 8
