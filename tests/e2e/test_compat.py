"""The client installs and works without torch, under protobuf 5.x and 7.x (the main env has 6.x)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from support.serving import RunningServer

ROOT = Path(__file__).resolve().parents[2]
PROTOBUF_MAJORS = {"5": "protobuf>=5.26,<6", "7": "protobuf>=7,<8"}

CLIENT_SCRIPT = """
import sys, importlib.abc

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not available here")
        return None

sys.meta_path.insert(0, NoTorch())
import numpy as np
import google.protobuf
from torchwire.client import Client
with Client(sys.argv[1], timeout=60) as client:
    a = np.arange(16, dtype=np.int32)[None]
    out = client.predict("simple", {"INPUT0": a, "INPUT1": a})
    assert out["OUTPUT0"].tolist() == [[2 * i for i in range(16)]], out
    assert client.metadata("digits").inputs[0].shape == (-1, 64)
assert "torch" not in sys.modules
print("protobuf", google.protobuf.__version__, "ok")
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        timeout=600,
    )
    (built,) = out.glob("torchwire-*.whl")
    return built


def test_wheel_carries_client_server_and_example_models(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in ("digits", "simple", "mlp", "cnn", "text"):
        assert f"torchwire/models/{model}/config.pbtxt" in names
        assert f"torchwire/models/{model}/1/model.pt" in names
    for model in ("mlp_aoti", "mlp_export", "cnn_aoti", "cnn_export"):
        assert f"torchwire/models/{model}/1/model.pt2" in names
    assert "torchwire/client/py.typed" in names
    assert "torchwire/client/_proto/grpc_service_pb2.pyi" in names
    assert not any(n.startswith(("client/", "server/", "models/")) for n in names), "bare top-level package"


def test_client_without_torch_in_this_env(bundled: RunningServer) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, bundled.target], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


@pytest.mark.parametrize("major", sorted(PROTOBUF_MAJORS))
def test_client_under_protobuf_major(bundled: RunningServer, wheel: Path, tmp_path: Path, major: str) -> None:
    env_dir = tmp_path / f"pb{major}"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, PROTOBUF_MAJORS[major], "grpcio", "numpy"], check=True, timeout=900)
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True, timeout=300)
    result = subprocess.run(
        [str(python), "-W", "error::UserWarning", "-c", CLIENT_SCRIPT, bundled.target],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"protobuf {major}." in result.stdout
