"""Our typed client, sync and asyncio, against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

import torchwire.client
from support.modelgen import DATATYPES, Expand, identity_repository, tensor_config, write_model
from support.serving import RunningServer, running_server
from torchwire.client import AsyncClient, Client, InferenceError
from torchwire.models import REPOSITORY


def in_process(model: str, *inputs: np.ndarray) -> list[np.ndarray]:
    module = torch.jit.load(str(REPOSITORY / model / "1" / "model.pt"), map_location="cpu").eval()
    with torch.inference_mode():
        out = module(*(torch.from_numpy(a) for a in inputs))
    return [t.numpy() for t in (out if isinstance(out, tuple | list) else [out])]


def test_public_api_is_explicit() -> None:
    assert sorted(torchwire.client.__all__) == sorted(
        [
            "USE_CLIENT_DEFAULT",
            "AsyncClient",
            "ChannelOptions",
            "Client",
            "CodecError",
            "InferenceError",
            "ModelMetadata",
            "ServerMetadata",
            "StreamResult",
            "TensorMetadata",
        ]
    )
    for name in torchwire.client.__all__:
        assert getattr(torchwire.client, name) is not None


def test_sync_client_end_to_end(bundled: RunningServer) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(-100, 100, (3, 16), dtype=np.int32)
    b = rng.integers(-100, 100, (3, 16), dtype=np.int32)
    with Client(bundled.target, timeout=30) as client:
        assert client.live() is True
        assert client.ready() is True
        assert client.ready("simple") is True
        assert client.ready("simple", version="1") is True
        assert client.ready("no-such-model") is False
        meta = client.metadata("simple")
        assert meta.name == "simple" and meta.versions == ("1",) and meta.platform == "pytorch_libtorch"
        assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [
            ("INPUT0", "INT32", (-1, 16)),
            ("INPUT1", "INT32", (-1, 16)),
        ]
        config = client.config("digits")
        assert config.name == "digits" and config.max_batch_size == 32
        assert config.HasField("dynamic_batching")
        out = client.predict("simple", {"INPUT0": a, "INPUT1": b})
        np.testing.assert_array_equal(out["OUTPUT0"], a + b)
        np.testing.assert_array_equal(out["OUTPUT1"], a - b)
        assert out["OUTPUT0"].dtype == np.int32
        only = client.predict("simple", {"INPUT0": a, "INPUT1": b}, outputs=["OUTPUT1"], version="1")
        assert list(only) == ["OUTPUT1"]
        images = rng.random((5, 64), dtype=np.float32)
        probs = client.predict("digits", {"INPUT__0": images})["OUTPUT__0"]
        np.testing.assert_allclose(probs, in_process("digits", images)[0], rtol=1e-5, atol=1e-6)
        index = {(m.name, m.version): m.state for m in client.repository_index()}
        assert index[("digits", "1")] == "READY"
        assert "model_configuration" in client.server_metadata().extensions


async def test_async_client_end_to_end(bundled: RunningServer) -> None:
    images = np.random.default_rng(1).random((4, 3, 64, 64), dtype=np.float32)
    async with AsyncClient(bundled.target, timeout=30) as client:
        assert await client.live() is True
        assert await client.ready() is True
        assert await client.ready("cnn") is True
        meta = await client.metadata("cnn")
        assert meta.inputs[0].shape == (-1, 3, 64, 64)
        assert (await client.config("cnn")).max_batch_size == 32
        logits = (await client.predict("cnn", {"INPUT__0": images}))["OUTPUT__0"]
        np.testing.assert_allclose(logits, in_process("cnn", images)[0], rtol=1e-4, atol=1e-5)
        assert (await client.server_metadata()).name == "torchwire"
        assert len(await client.repository_index(ready_only=True)) == 9  # 5 TorchScript, 4 exported
        with pytest.raises(InferenceError) as caught:
            await client.predict("nope", {"INPUT__0": images})
        assert caught.value.code is grpc.StatusCode.NOT_FOUND
        assert "'nope'" in caught.value.message


def test_errors_are_typed_with_code_and_message(bundled: RunningServer) -> None:
    with Client(bundled.target, timeout=30) as client:
        with pytest.raises(InferenceError) as caught:
            client.predict("digits", {"INPUT__0": np.zeros((2, 63), np.float32)}, request_id="r-7")
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "INPUT__0" in caught.value.message and "[-1, 64]" in caught.value.message
        assert caught.value.request_id == "r-7"
        assert isinstance(caught.value.__cause__, grpc.RpcError)
        with pytest.raises(InferenceError) as caught:
            client.metadata("digits", version="9")
        assert caught.value.code is grpc.StatusCode.NOT_FOUND


def test_the_clients_own_message_limit_names_its_setting(tmp_path: Path) -> None:
    hint = "; the client's limit: raise it with Client(..., max_message_bytes=N)"
    config = (
        'name: "expand"\nmax_batch_size: 8\n'
        f"input [ {tensor_config('INPUT__0', 'FP32', [-1])} ]\n"
        f"output [ {tensor_config('OUTPUT__0', 'FP32', [-1])} ]\n"
    )
    write_model(tmp_path, "expand", Expand(), config)
    with (
        running_server(tmp_path) as server,
        Client(server.target, timeout=30, max_message_bytes=4096) as client,
    ):
        with pytest.raises(InferenceError) as caught:
            client.predict("expand", {"INPUT__0": np.zeros((2, 1024), np.float32)})  # 8 KiB out
        assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.message.startswith("CLIENT: Sent message larger than max (")
        assert caught.value.message.endswith(hint)
        with pytest.raises(InferenceError) as caught:
            client.predict("expand", {"INPUT__0": np.zeros((1, 64), np.float32)})  # 16 KiB back
        assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "CLIENT: Received message larger than max (16423 vs. 4096)" in caught.value.message
        assert caught.value.message.endswith(hint)


def test_a_closed_client_raises_inference_error(bundled: RunningServer) -> None:
    expected = "the client is closed: make calls inside its `with` block, or create a new client"
    with Client(bundled.target, timeout=30) as client:
        assert client.live() is True
    for call in (client.live, lambda: client.predict("digits", {"INPUT__0": np.zeros((1, 64), np.float32)})):
        with pytest.raises(InferenceError) as caught:
            call()
        assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.message == expected
    with pytest.raises(InferenceError, match="the client is closed"):
        next(client.stream("digits", [{"INPUT__0": np.zeros((1, 64), np.float32)}]))


async def test_a_closed_async_client_raises_inference_error(bundled: RunningServer) -> None:
    async with AsyncClient(bundled.target, timeout=30) as client:
        assert await client.live() is True
    with pytest.raises(InferenceError) as caught:
        await client.ready("digits")
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.message.startswith("the client is closed")


def test_unreachable_server_is_unavailable() -> None:
    with Client("127.0.0.1:1", timeout=5) as client, pytest.raises(InferenceError) as caught:
        client.live()
    assert caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo: Path = tmp_path_factory.mktemp("identities")
    identity_repository(repo)
    with running_server(repo) as server:
        yield server


def _sample(datatype: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if datatype == "BOOL":
        return rng.random((2, 4)) > 0.5
    if datatype.startswith(("INT", "UINT")):
        dtype = np.dtype(datatype.lower())
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, (2, 4), dtype=dtype, endpoint=True)
    if datatype == "BF16":  # values exactly representable in bfloat16
        return (rng.integers(-64, 64, (2, 4)) / 8).astype(np.float32)
    return rng.standard_normal((2, 4)).astype(
        {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[datatype]
    )


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips(identities: RunningServer, datatype: str) -> None:
    array = _sample(datatype)
    with Client(identities.target, timeout=30) as client:
        model = f"ident_{datatype.lower()}"
        assert client.metadata(model).inputs[0].datatype == datatype
        if datatype == "BF16":
            # numpy has no bfloat16: send float32 as BF16 through tritonclient-style truncation
            from torchwire.client import _calls, _codec

            request = _calls.build_infer_request(model, {})
            request.inputs.add(name="INPUT__0", datatype="BF16", shape=array.shape)
            request.raw_input_contents.append(_codec.to_raw(array, "BF16"))
            with grpc.insecure_channel(identities.target) as channel:
                from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

                response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
            out = _calls.decode_infer_response(response)["OUTPUT__0"]
        else:
            out = client.predict(model, {"INPUT__0": array})["OUTPUT__0"]
    assert out.dtype == (np.float32 if datatype == "BF16" else array.dtype)
    np.testing.assert_array_equal(out, array)
