"""OPTIMIZE_FOR_INFERENCE: a model optimized at load answers as the plain one does, through gRPC."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from support.modelgen import ConvNet, tensor_config, write_model
from support.serving import running_server
from torchwire.client import Client
from torchwire.server.repository import load_spec
from torchwire.server.runtime.torchscript import load_module


def _config(name: str, optimize: str | None) -> str:
    parameter = (
        f'parameters {{ key: "OPTIMIZE_FOR_INFERENCE" value: {{ string_value: "{optimize}" }} }}\n'
        if optimize is not None
        else ""
    )
    return (
        f'name: "{name}"\nmax_batch_size: 8\n'
        f"input [ {tensor_config('INPUT__0', 'FP32', [3, 8, 8])} ]\n"
        f"output [ {tensor_config('OUTPUT__0', 'FP32', [8])} ]\n"
        f"dynamic_batching {{ }}\n{parameter}"
    )


SETTINGS = {"plain": None, "optimized": "true", "declined": "FALSE", "unsure": "maybe"}


def test_optimized_model_answers_as_the_plain_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name, optimize in SETTINGS.items():
        write_model(tmp_path, name, ConvNet(), _config(name, optimize))
    caplog.set_level(logging.INFO, logger="torchwire.registry")
    with running_server(tmp_path, readiness="any") as server, Client(server.target, timeout=60) as client:
        images = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
        plain = client.predict("plain", {"INPUT__0": images})["OUTPUT__0"]
        optimized = client.predict("optimized", {"INPUT__0": images})["OUTPUT__0"]
        assert plain.shape == (5, 8) and float(np.abs(plain).max()) > 0.1
        np.testing.assert_allclose(optimized, plain, rtol=1e-4, atol=1e-5)
        index = {m.name: m for m in client.repository_index()}
    assert index["declined"].state == "READY"
    assert index["unsure"].state == "UNAVAILABLE"
    assert "'OPTIMIZE_FOR_INFERENCE' must be \"true\" or \"false\", got 'maybe'" in index["unsure"].reason
    lines = [record.getMessage() for record in caplog.records]
    ready = {line.split()[1]: line for line in lines if " ready (" in line}  # "model NAME version ..."
    assert ready["optimized"].endswith("; optimized for inference)")
    assert "optimized for" not in ready["plain"] and "optimized for" not in ready["declined"]


def test_load_module_freezes_only_when_asked(tmp_path: Path) -> None:
    """What the server and the bench's in-process ceiling both load: the optimized module has its
    weights frozen into the graph (no parameters left), the plain one keeps them."""
    for name in ("plain", "optimized"):
        write_model(tmp_path, name, ConvNet(), _config(name, SETTINGS[name]))
    plain, optimized = (
        load_module(tmp_path / n / "1" / "model.pt", load_spec(tmp_path / n)) for n in ("plain", "optimized")
    )
    assert len(list(plain.parameters())) == 4  # conv weight and bias, batch norm weight and bias
    assert list(optimized.parameters()) == []
