"""Unmodified tritonclient.grpc against a real server of the bundled example repository.

Every expectation is derived independently of the server: config.pbtxt parsed here with text_format,
reference outputs from the same TorchScript file run in-process, digits accuracy from scikit-learn's
data split exactly as models/build.py makes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from sklearn.datasets import load_digits  # type: ignore[import-untyped]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from support.serving import RunningServer, running_server
from torchwire.client._proto.model_config_pb2 import DataType, ModelConfig
from torchwire.models import REPOSITORY
from torchwire.server.repository import ModelSource, scan

Array = npt.NDArray[Any]

SOURCES: dict[str, ModelSource] = {source.name: source for source in scan(REPOSITORY)}
EXAMPLE_MODELS = (
    "cnn",
    "cnn_aoti",
    "cnn_export",
    "digits",
    "mlp",
    "mlp_aoti",
    "mlp_export",
    "simple",
    "text",
)
BATCH = 3
DIGITS_BATCH = 32


# ------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server(REPOSITORY) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(url=server.target)
    try:
        yield triton
    finally:
        triton.close()


def parse_config(name: str) -> ModelConfig:
    config = ModelConfig()
    text_format.Parse((SOURCES[name].path / "config.pbtxt").read_text(encoding="utf-8"), config)
    return config


def wire_datatype(data_type: int) -> str:
    """TYPE_FP32 -> FP32, the v2 protocol's datatype string (TYPE_STRING -> BYTES)."""
    name = str(DataType.Name(data_type)).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def wire_shape(config: ModelConfig, dims: Any) -> list[int]:
    return [-1, *dims] if config.max_batch_size > 0 else list(dims)


def random_inputs(config: ModelConfig, seed: int = 0) -> list[Array]:
    rng = np.random.default_rng(seed)
    arrays: list[Array] = []
    for tensor in config.input:
        dtype = np.dtype(triton_to_np_dtype(wire_datatype(tensor.data_type)))
        shape = (BATCH, *tensor.dims)
        if dtype.kind == "O":  # BYTES: UTF-8 text of random words, as numpy object arrays of bytes
            words = rng.choice(["tensor", "wire", "ünïcode", "", "a"], size=(*shape, 3))
            arrays.append(
                np.array([" ".join(w).encode() for w in words.reshape(-1, 3)], np.object_).reshape(shape)
            )
        elif dtype.kind == "f":
            arrays.append(rng.standard_normal(shape).astype(dtype))
        else:
            arrays.append(rng.integers(-1000, 1000, size=shape).astype(dtype))
    return arrays


def triton_inputs(config: ModelConfig, arrays: list[Array]) -> list[grpcclient.InferInput]:
    inputs = []
    for tensor, array in zip(config.input, arrays, strict=True):
        infer_input = grpcclient.InferInput(tensor.name, list(array.shape), wire_datatype(tensor.data_type))
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


def in_process(name: str, arrays: list[Array]) -> list[Array]:
    """The same TorchScript file the server serves, called directly; for the exported examples
    (NAME_aoti, NAME_export), the TorchScript NAME they were exported beside, with the same weights."""
    name = name.removesuffix("_aoti").removesuffix("_export")
    path = SOURCES[name].path / str(max(SOURCES[name].versions)) / "model.pt"
    module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    module.eval()
    with torch.inference_mode():  # BYTES go in as List[str] and come out as lists of str
        result = module(*(torch.from_numpy(a) if a.dtype.kind != "O" else _texts(a) for a in arrays))
    outputs = list(result) if isinstance(result, tuple) else [result]
    return [out.numpy() if isinstance(out, torch.Tensor) else _utf8(out) for out in outputs]


def _texts(array: Array) -> list[str]:
    return [item.decode() for item in array.reshape(-1)]


def _utf8(texts: list[str]) -> Array:
    return np.array([t.encode() for t in texts], np.object_).reshape(-1, 1)


def assert_matches(got: Array | None, want: Array, label: str) -> None:
    assert got is not None, f"{label}: missing from the response"
    assert got.dtype == want.dtype, f"{label}: dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"{label}: shape {got.shape}, expected {want.shape}"
    if want.dtype.kind == "O" or np.issubdtype(want.dtype, np.integer):
        np.testing.assert_array_equal(got, want, err_msg=label)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=label)


def simple_inputs(a: Array, b: Array) -> list[grpcclient.InferInput]:
    return triton_inputs(parse_config("simple"), [a, b])


def simple_pair() -> tuple[Array, Array]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    return a, b


def assert_simple_works(client: grpcclient.InferenceServerClient) -> None:
    a, b = simple_pair()
    result = client.infer("simple", simple_inputs(a, b))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def expect_error(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


# ------------------------------------------------------------------------------------------------
# Per model: metadata, config and inference against independent expectations
# ------------------------------------------------------------------------------------------------


def test_repository_holds_the_five_example_models() -> None:
    assert sorted(SOURCES) == sorted(EXAMPLE_MODELS)
    for source in SOURCES.values():
        assert source.versions == (1,), source


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_model_metadata_matches_config(client: grpcclient.InferenceServerClient, name: str) -> None:
    config = parse_config(name)
    metadata = client.get_model_metadata(name)
    assert metadata.name == name
    assert list(metadata.versions) == ["1"]
    assert metadata.platform == config.platform
    for got_tensors, want_tensors in ((metadata.inputs, config.input), (metadata.outputs, config.output)):
        got = [(t.name, t.datatype, list(t.shape)) for t in got_tensors]
        want = [(t.name, wire_datatype(t.data_type), wire_shape(config, t.dims)) for t in want_tensors]
        assert got == want
    assert all(t.shape[0] == -1 for t in metadata.inputs)  # every example model batches


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_model_config_matches_config_pbtxt(client: grpcclient.InferenceServerClient, name: str) -> None:
    want = parse_config(name)
    # tritonclient's own ModelConfig class; re-read into ours through the wire format to compare.
    got = ModelConfig.FromString(client.get_model_config(name).config.SerializeToString())
    assert got.name == want.name == name
    assert got.platform == want.platform
    assert got.max_batch_size == want.max_batch_size
    assert [(t.name, t.data_type, list(t.dims)) for t in got.input] == [
        (t.name, t.data_type, list(t.dims)) for t in want.input
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in got.output] == [
        (t.name, t.data_type, list(t.dims)) for t in want.output
    ]
    assert got.HasField("dynamic_batching") == want.HasField("dynamic_batching")
    if want.HasField("dynamic_batching"):
        assert got.dynamic_batching == want.dynamic_batching


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_infer_matches_in_process_model(client: grpcclient.InferenceServerClient, name: str) -> None:
    config = parse_config(name)
    arrays = random_inputs(config, seed=len(name))
    result = client.infer(name, triton_inputs(config, arrays))
    expected = in_process(name, arrays)
    response = result.get_response()
    assert response.model_name == name
    assert [o.name for o in response.outputs] == [t.name for t in config.output]
    for tensor, want in zip(config.output, expected, strict=True):
        assert_matches(result.as_numpy(tensor.name), want, f"{name}/{tensor.name}")


# ------------------------------------------------------------------------------------------------
# Request options on `simple`
# ------------------------------------------------------------------------------------------------


def test_requested_output_subset(client: grpcclient.InferenceServerClient) -> None:
    a, b = simple_pair()
    result = client.infer("simple", simple_inputs(a, b), outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    assert_matches(result.as_numpy("OUTPUT1"), a - b, "simple/OUTPUT1")


def test_request_id_is_echoed(client: grpcclient.InferenceServerClient) -> None:
    a, b = simple_pair()
    result = client.infer("simple", simple_inputs(a, b), request_id="torchwire-req-42")
    assert result.get_response().id == "torchwire-req-42"
    assert_matches(result.as_numpy("OUTPUT0"), a + b, "simple/OUTPUT0")


# ------------------------------------------------------------------------------------------------
# The trained digits model end to end
# ------------------------------------------------------------------------------------------------


def digits_test_split() -> tuple[Array, Array]:
    """models/build.py's held-out split, rebuilt here from its metrics.json."""
    metrics = json.loads((SOURCES["digits"].path / "metrics.json").read_text(encoding="utf-8"))
    split = metrics["split"]
    data = load_digits()
    x = (data.data / metrics["scale"]).astype(np.float32)
    _, x_test, _, y_test = train_test_split(
        x,
        data.target,
        test_size=split["test_size"],
        random_state=split["random_state"],
        stratify=data.target if split["stratify"] else None,
    )
    return x_test, y_test


def test_digits_accuracy_through_grpc(client: grpcclient.InferenceServerClient) -> None:
    metrics = json.loads((SOURCES["digits"].path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["split"] == {"test_size": 0.25, "random_state": 0, "stratify": True}
    x_test, y_test = digits_test_split()
    config = parse_config("digits")
    predictions = []
    for start in range(0, len(x_test), DIGITS_BATCH):
        batch = np.ascontiguousarray(x_test[start : start + DIGITS_BATCH])
        probabilities = client.infer("digits", triton_inputs(config, [batch])).as_numpy("OUTPUT__0")
        assert probabilities.shape == (len(batch), 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        predictions.append(probabilities.argmax(axis=1))
    predicted = np.concatenate(predictions)
    assert predicted.shape == y_test.shape
    accuracy = int((predicted == y_test).sum()) / len(y_test)
    assert accuracy >= 0.95
    assert abs(accuracy - metrics["test_accuracy"]) <= 1e-9


# ------------------------------------------------------------------------------------------------
# Server and repository status
# ------------------------------------------------------------------------------------------------


def test_liveness_and_readiness(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    assert client.is_model_ready("digits") is True
    assert client.is_model_ready("nope") is False


def test_server_metadata_lists_model_configuration(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name == "torchwire"
    assert "model_configuration" in list(metadata.extensions)


def test_repository_index_lists_every_model_ready(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    rows = sorted((m.name, m.version, m.state) for m in index.models)
    assert rows == [(name, "1", "READY") for name in sorted(EXAMPLE_MODELS)]


# ------------------------------------------------------------------------------------------------
# Errors as tritonclient reports them (status() is str(grpc.StatusCode))
# ------------------------------------------------------------------------------------------------


def test_unknown_model_infer_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    a, b = simple_pair()
    error = expect_error(client.infer, "nope", simple_inputs(a, b))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "nope" in error.message()
    assert_simple_works(client)


def test_unknown_model_metadata_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    error = expect_error(client.get_model_metadata, "nope")
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "nope" in error.message()
    assert_simple_works(client)


def test_wrong_shape_is_invalid_argument(client: grpcclient.InferenceServerClient) -> None:
    good = np.zeros((1, 16), dtype=np.int32)
    short = np.zeros((1, 15), dtype=np.int32)
    error = expect_error(client.infer, "simple", simple_inputs(short, good))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT0" in error.message()
    assert "INPUT1" not in error.message()
    assert_simple_works(client)
