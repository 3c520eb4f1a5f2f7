"""A repository with broken models serves the rest and reports each broken one with its reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.modelgen import Identity, single_io_config, write_model
from support.serving import RunningServer, running_server
from torchwire.client import Client, InferenceError


@pytest.fixture(scope="module")
def broken_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo: Path = tmp_path_factory.mktemp("broken")
    write_model(repo, "good", Identity(), single_io_config("good", "FP32", [3], 4))
    write_model(repo, "badconfig", None, 'name: "badconfig"\nmax_batch_size: "many"\n')
    write_model(repo, "nofile", None, single_io_config("nofile", "FP32", [3], 4))
    corrupt = write_model(repo, "corrupt", None, single_io_config("corrupt", "FP32", [3], 4))
    (corrupt / "1" / "model.pt").write_bytes(b"this is not a zip archive")
    write_model(repo, "stringy", None, single_io_config("stringy", "STRING", [1], 4))
    (repo / "noconfig" / "1").mkdir(parents=True)
    write_model(
        repo, "wirenames", Identity(), single_io_config("wirenames", "FP32", [3], 4).replace("TYPE_", "")
    )
    for name, saved in (("pickled", Identity()), ("weights", torch.nn.Linear(3, 3).state_dict())):
        folder = write_model(repo, name, None, single_io_config(name, "FP32", [3], 4))
        torch.save(saved, folder / "1" / "model.pt")
    return repo


@pytest.fixture(scope="module")
def broken(broken_repo: Path) -> Iterator[RunningServer]:
    with running_server(broken_repo, readiness="any") as server:  # relaxed: ready while one model serves
        yield server


def test_broken_models_are_reported_with_reasons(broken: RunningServer, broken_repo: Path) -> None:
    with Client(broken.target, timeout=30) as client:
        index = {m.name: m for m in client.repository_index()}
        assert index["good"].state == "READY"
        expectations = {
            "badconfig": ["config.pbtxt", "max_batch_size"],
            "nofile": ["model.pt", "not found"],
            "corrupt": ["model.pt", "TorchScript"],
            "stringy": ["data_type", "TYPE_STRING"],
            "noconfig": ["config.pbtxt", "not found"],
        }
        for name in ("pickled", "weights"):
            assert index[name].reason == (
                f"{broken_repo / name / '1' / 'model.pt'}: not TorchScript: it was saved with torch.save (a "
                "pickled module or state_dict); save TorchScript with "
                "torch.jit.save(torch.jit.script(model), path) (or torch.jit.trace)"
            )
        assert index["wirenames"].reason == (
            f'{broken_repo / "wirenames" / "config.pbtxt"}: 4:39 : \'input [ {{ name: "INPUT__0" data_type: '
            'FP32 dims: [3] } ]\': Enum type "inference.DataType" has no value named FP32. (did you mean '
            "TYPE_FP32?)"
        )
        for name, words in expectations.items():
            assert index[name].state == "UNAVAILABLE", name
            for word in words:
                assert word in index[name].reason, (name, word, index[name].reason)
        assert [m.name for m in client.repository_index(ready_only=True)] == ["good"]
        assert client.ready("corrupt") is False
        with pytest.raises(InferenceError) as caught:
            client.predict("corrupt", {"INPUT__0": np.zeros((1, 3), np.float32)})
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        assert "corrupt" in caught.value.message
        out = client.predict("good", {"INPUT__0": np.ones((2, 3), np.float32)})
        np.testing.assert_array_equal(out["OUTPUT__0"], np.ones((2, 3), np.float32))
        assert client.ready() is True


def _health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status
        return status


def test_health_is_serving_once_loaded(broken: RunningServer) -> None:
    for service in ("", "liveness", "readiness", "inference.GRPCInferenceService"):
        assert _health(broken.target, service) == health_pb2.HealthCheckResponse.SERVING, service


def test_by_default_one_broken_model_makes_the_server_not_ready(broken_repo: Path) -> None:
    with running_server(broken_repo) as server:
        assert _health(server.target, "liveness") == health_pb2.HealthCheckResponse.SERVING
        assert _health(server.target, "readiness") == health_pb2.HealthCheckResponse.NOT_SERVING
        with Client(server.target, timeout=30) as client:
            assert client.ready() is False
            assert client.ready("good") is True  # the good model still serves
            out = client.predict("good", {"INPUT__0": np.ones((1, 3), np.float32)})
            assert out["OUTPUT__0"].shape == (1, 3)


def test_no_loadable_model_means_not_ready(tmp_path: Path) -> None:
    write_model(tmp_path, "nofile", None, single_io_config("nofile", "FP32", [3], 4))
    with running_server(tmp_path) as server:
        assert _health(server.target, "liveness") == health_pb2.HealthCheckResponse.SERVING
        assert _health(server.target, "readiness") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _health(server.target, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        with Client(server.target, timeout=30) as client:
            assert client.live() is True
            assert client.ready() is False
