"""The real grpcurl binary against a real server: reflection, health, and JSON ModelInfer."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from sklearn.datasets import load_digits  # type: ignore[import-untyped]

from support.serving import RunningServer, running_server
from torchwire.models import REPOSITORY

GRPCURL = Path(sys.executable).parent / "grpcurl"
INFERENCE = "inference.GRPCInferenceService"
HEALTH_CHECK = "grpc.health.v1.Health/Check"
# grpcurl exits with 64 + the gRPC status code when the call fails with a status.
EXIT_NOT_FOUND = 64 + 5
EXIT_INVALID_ARGUMENT = 64 + 3

Array = npt.NDArray[Any]
Json = dict[str, Any]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server(REPOSITORY) as running:
        yield running


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=60, check=False
    )


def call(server: RunningServer, method: str, body: Json) -> subprocess.CompletedProcess[str]:
    return grpcurl("-d", json.dumps(body), server.target, method)


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"grpcurl exit {result.returncode}: {result.stderr}"
    return result.stdout


def call_json(server: RunningServer, method: str, body: Json) -> Json:
    parsed: Json = json.loads(succeeded(call(server, method, body)))
    return parsed


def field(message: Json, snake_name: str) -> Any:
    """A JSON field under its proto name (grpcurl 1.8) or its lowerCamelCase JSON name."""
    head, *rest = snake_name.split("_")
    camel = head + "".join(part.title() for part in rest)
    assert snake_name in message or camel in message, f"no {snake_name!r} in {sorted(message)}"
    return message[snake_name] if snake_name in message else message[camel]


def decode_outputs(response: Json, dtype: str) -> dict[str, Array]:
    """Each output's raw little-endian bytes (base64 in JSON) as an array of its reported shape."""
    raw = field(response, "raw_output_contents")
    assert len(raw) == len(response["outputs"])
    return {
        out["name"]: np.frombuffer(base64.b64decode(data), dtype=dtype).reshape(
            [int(d) for d in out["shape"]]
        )
        for out, data in zip(response["outputs"], raw, strict=True)
    }


def typed_input(name: str, datatype: str, contents_field: str, array: Array) -> Json:
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "contents": {contents_field: array.ravel().tolist()},
    }


# ------------------------------------------------------------------------------------------------
# Reflection
# ------------------------------------------------------------------------------------------------


def test_list_shows_served_services(server: RunningServer) -> None:
    services = succeeded(grpcurl(server.target, "list")).split()
    assert INFERENCE in services
    assert "grpc.health.v1.Health" in services
    assert any(s.startswith("grpc.reflection.") and s.endswith(".ServerReflection") for s in services)


def test_describe_inference_service(server: RunningServer) -> None:
    text = succeeded(grpcurl(server.target, "describe", INFERENCE))
    assert re.search(r"\brpc ModelInfer\s*\(", text), text
    assert re.search(r"\brpc ModelStreamInfer\s*\(\s*stream\b", text), text


def test_describe_infer_request(server: RunningServer) -> None:
    text = succeeded(grpcurl(server.target, "describe", "inference.ModelInferRequest"))
    assert re.search(r"repeated bytes raw_input_contents = 7;", text), text


# ------------------------------------------------------------------------------------------------
# Health
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["readiness", "liveness", ""])
def test_health_check_serving(server: RunningServer, service: str) -> None:
    body: Json = {"service": service} if service else {}
    assert call_json(server, HEALTH_CHECK, body) == {"status": "SERVING"}


def test_health_check_unknown_service_is_not_found(server: RunningServer) -> None:
    result = call(server, HEALTH_CHECK, {"service": "no-such-service"})
    assert result.returncode == EXIT_NOT_FOUND, (result.returncode, result.stderr)
    assert "NotFound" in result.stderr


# ------------------------------------------------------------------------------------------------
# Inference service over JSON
# ------------------------------------------------------------------------------------------------


def test_model_metadata_digits(server: RunningServer) -> None:
    metadata = call_json(server, f"{INFERENCE}/ModelMetadata", {"name": "digits"})
    assert metadata["name"] == "digits"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "pytorch_libtorch"
    tensors = [
        (t["name"], t["datatype"], [int(d) for d in t["shape"]])  # int64 is a JSON string
        for t in metadata["inputs"] + metadata["outputs"]
    ]
    assert tensors == [("INPUT__0", "FP32", [-1, 64]), ("OUTPUT__0", "FP32", [-1, 10])]


def test_model_infer_simple_int_contents(server: RunningServer) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16) * 7 - 50
    b = np.arange(16, dtype=np.int32)[::-1].reshape(1, 16)
    request = {
        "model_name": "simple",
        "id": "grpcurl-1",
        "inputs": [
            typed_input("INPUT0", "INT32", "int_contents", a),
            typed_input("INPUT1", "INT32", "int_contents", b),
        ],
    }
    response = call_json(server, f"{INFERENCE}/ModelInfer", request)
    assert field(response, "model_name") == "simple"
    assert response["id"] == "grpcurl-1"
    assert [(o["name"], o["datatype"]) for o in response["outputs"]] == [
        ("OUTPUT0", "INT32"),
        ("OUTPUT1", "INT32"),
    ]
    outputs = decode_outputs(response, "<i4")
    np.testing.assert_array_equal(outputs["OUTPUT0"], a + b)
    np.testing.assert_array_equal(outputs["OUTPUT1"], a - b)


def test_model_infer_digits_fp32_contents(server: RunningServer) -> None:
    x = (load_digits().data[:4] / 16.0).astype(np.float32)
    request = {"model_name": "digits", "inputs": [typed_input("INPUT__0", "FP32", "fp32_contents", x)]}
    response = call_json(server, f"{INFERENCE}/ModelInfer", request)
    probabilities = decode_outputs(response, "<f4")["OUTPUT__0"]
    assert probabilities.shape == (4, 10)
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    module = torch.jit.load(str(REPOSITORY / "digits" / "1" / "model.pt"), map_location="cpu")  # type: ignore[no-untyped-call]
    module.eval()
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)


def test_model_infer_wrong_datatype_is_invalid_argument(server: RunningServer) -> None:
    ints = np.ones((1, 16), dtype=np.int32)
    request = {
        "model_name": "simple",
        "inputs": [
            typed_input("INPUT0", "INT32", "int_contents", ints),
            typed_input("INPUT1", "FP32", "fp32_contents", ints.astype(np.float32)),
        ],
    }
    result = call(server, f"{INFERENCE}/ModelInfer", request)
    assert result.returncode == EXIT_INVALID_ARGUMENT, (result.returncode, result.stdout, result.stderr)
    assert "InvalidArgument" in result.stderr
    assert "INPUT1" in result.stderr
    assert result.stdout.strip() == ""


def test_reflection_can_be_turned_off() -> None:
    with running_server(reflection=False) as server:
        result = subprocess.run(
            [str(GRPCURL), "-plaintext", server.target, "list"], capture_output=True, text=True, timeout=60
        )
    assert result.returncode != 0
    assert "does not support the reflection API" in result.stderr or "Unimplemented" in result.stderr
