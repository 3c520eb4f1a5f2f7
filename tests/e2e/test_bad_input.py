"""Every malformed request gets its status and a message naming the field; the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from support.modelgen import (
    DoubleUnlessNegative,
    OneOutputOnly,
    ShapeShifter,
    single_io_config,
    tensor_config,
    write_model,
)
from support.requests import simple_request
from support.serving import RunningServer, running_server
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

Build = Callable[[], pb.ModelInferRequest]


def _with(change: Callable[[pb.ModelInferRequest], None]) -> Build:
    def build() -> pb.ModelInferRequest:
        request = simple_request()
        change(request)
        return request

    return build


def _typed_and_raw(r: pb.ModelInferRequest) -> None:
    r.inputs[0].contents.int_contents.extend(range(16))


def _drop_input(r: pb.ModelInferRequest) -> None:
    del r.inputs[1]
    del r.raw_input_contents[1]


def _extra_input(r: pb.ModelInferRequest) -> None:
    r.inputs.add(name="INPUT9", datatype="INT32", shape=[1, 16])
    r.raw_input_contents.append(bytes(64))


CASES: list[tuple[str, Build, grpc.StatusCode, list[str]]] = [
    (
        "unknown model",
        _with(lambda r: setattr(r, "model_name", "nope")),
        grpc.StatusCode.NOT_FOUND,
        ["'nope'"],
    ),
    (
        "unknown version",
        _with(lambda r: setattr(r, "model_version", "7")),
        grpc.StatusCode.NOT_FOUND,
        ["'simple'", "'7'"],
    ),
    ("missing input", _with(_drop_input), grpc.StatusCode.INVALID_ARGUMENT, ["missing", "'INPUT1'"]),
    ("extra input", _with(_extra_input), grpc.StatusCode.INVALID_ARGUMENT, ["'INPUT9'", "'INPUT0'"]),
    (
        "wrong datatype",
        _with(lambda r: setattr(r.inputs[0], "datatype", "FP32")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'INPUT0'", "FP32", "expected INT32"],
    ),
    (
        "shape off the config",
        _with(lambda r: r.inputs[0].shape.__setitem__(1, 15)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'INPUT0'", "[1, 15]", "[-1, 16]"],
    ),
    (
        "batch over max_batch_size",
        _with(lambda r: r.inputs[0].shape.__setitem__(0, 9)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'INPUT0'", "1..8"],
    ),
    (
        "byte length off the shape",
        _with(lambda r: r.raw_input_contents.__setitem__(0, bytes(60))),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'INPUT0'", "60 bytes", "expected 64"],
    ),
    (
        "unknown requested output",
        _with(lambda r: r.outputs.add(name="OUTPUT7")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'OUTPUT7'", "'OUTPUT0'"],
    ),
    ("raw and typed mixed", _with(_typed_and_raw), grpc.StatusCode.INVALID_ARGUMENT, ["'INPUT0'", "raw"]),
    (
        "raw entries fewer than inputs",
        _with(lambda r: r.raw_input_contents.pop()),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["raw_input_contents", "1 entries for 2 inputs"],
    ),
    (
        "negative dimension",
        _with(lambda r: r.inputs[0].shape.__setitem__(0, -1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'INPUT0'"],
    ),
    (
        "duplicate input",
        _with(lambda r: (r.inputs.add().CopyFrom(r.inputs[0]), r.raw_input_contents.append(bytes(64)))),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'INPUT0'", "more than once"],
    ),
]


@pytest.fixture(scope="module")
def stub(bundled: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(bundled.target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize(("case", "build", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_status_and_message(
    stub: pb_grpc.GRPCInferenceServiceStub, case: str, build: Build, code: grpc.StatusCode, words: list[str]
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(build(), timeout=30)
    assert caught.value.code() is code, caught.value.details()
    for word in words:
        assert word in caught.value.details(), (word, caught.value.details())
    # ... and the server still answers a good request correctly right after.
    good = stub.ModelInfer(simple_request(), timeout=30)
    assert good.id == "good"
    assert np.frombuffer(good.raw_output_contents[0], "<i4").tolist() == [2 * i for i in range(16)]


def test_typed_contents_are_accepted(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.contents.int_contents.extend(range(16))
    response = stub.ModelInfer(request, timeout=30)
    assert [t.name for t in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert np.frombuffer(response.raw_output_contents[1], "<i4").tolist() == [0] * 16


def test_unimplemented_rpcs_say_so(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), timeout=30)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "SystemSharedMemoryStatus" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="simple"), timeout=30)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "--model-control-mode explicit" in caught.value.details()


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo: Path = tmp_path_factory.mktemp("faulty")
    write_model(
        repo,
        "doubler",
        DoubleUnlessNegative(),
        single_io_config(
            "doubler", "FP32", [2], 16, "dynamic_batching { max_queue_delay_microseconds: 200000 }"
        ),
    )
    two_outputs = (
        'name: "short"\nmax_batch_size: 4\n'
        f"input [ {tensor_config('INPUT__0', 'FP32', [2])} ]\n"
        f"output [ {tensor_config('OUTPUT__0', 'FP32', [2])}, {tensor_config('OUTPUT__1', 'FP32', [2])} ]\n"
    )
    write_model(repo, "short", OneOutputOnly(), two_outputs)
    write_model(repo, "shifty", ShapeShifter(), single_io_config("shifty", "FP32", [2], 4))
    with running_server(repo) as server:
        yield server


def _infer(stub: pb_grpc.GRPCInferenceServiceStub, model: str, values: list[float]) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.array(values, "<f4").tobytes())
    return stub.ModelInfer(request, timeout=60)


def test_model_error_is_internal_with_models_message(faulty: RunningServer) -> None:
    with grpc.insecure_channel(faulty.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            _infer(stub, "doubler", [-1.0, 1.0])
        assert caught.value.code() is grpc.StatusCode.INTERNAL
        assert "negative values are not allowed" in caught.value.details()
        assert np.frombuffer(_infer(stub, "doubler", [1.0, 2.0]).raw_output_contents[0], "<f4").tolist() == [
            2,
            4,
        ]
        with pytest.raises(grpc.RpcError) as caught:
            _infer(stub, "shifty", [100.0, 2.0])
        assert caught.value.code() is grpc.StatusCode.INTERNAL
        assert "'OUTPUT__0' has shape [1, 1], expected [1, 2]" in caught.value.details()
        assert np.frombuffer(_infer(stub, "shifty", [1.0, 2.0]).raw_output_contents[0], "<f4").tolist() == [
            1,
            2,
        ]


def test_model_with_wrong_outputs_never_serves(faulty: RunningServer) -> None:
    """Warmup runs the model before it serves: outputs that don't fit the config keep it out."""
    with grpc.insecure_channel(faulty.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30).models}
        assert index["short"].state == "UNAVAILABLE"
        assert "warmup failed" in index["short"].reason and "OUTPUT__1" in index["short"].reason
        with pytest.raises(grpc.RpcError) as caught:
            _infer(stub, "short", [1.0, 2.0])
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "returned 1 value" in caught.value.details()


def test_poisoned_request_fails_alone(faulty: RunningServer) -> None:
    """Batch-mates of a request that makes forward() raise still get their answers."""
    with grpc.insecure_channel(faulty.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = []
        for i in range(6):
            request = pb.ModelInferRequest(model_name="doubler", id=str(i))
            request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 2])
            values = [-5.0, 0.0] if i == 3 else [float(i), 1.0]
            request.raw_input_contents.append(np.array(values, "<f4").tobytes())
            calls.append(stub.ModelInfer.future(request, timeout=60))
        for i, call in enumerate(calls):
            if i == 3:
                assert call.exception() is not None
                assert call.code() is grpc.StatusCode.INTERNAL
            else:
                got = np.frombuffer(call.result().raw_output_contents[0], "<f4").tolist()
                assert got == [2.0 * i, 2.0]
