"""BYTES (string) tensors through a real server: tritonclient (raw), bytes_contents, our client (predict
and stream), batching of string requests, and clean errors for bad lengths and limits."""

from __future__ import annotations

import asyncio
import concurrent.futures
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton

from support.modelgen import write_model
from support.serving import RunningServer, running_server, wait_until
from torchwire.client import AsyncClient, Client, InferenceError
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

TEXTS = ["héllo wörld", "a b  c", "", "x" * 300, "tab\tand\nnewline"]


class Tagger(torch.nn.Module):
    """Spins for ROUNDS rounds, then tags each text with the number of rows in its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.eye(128) * 0.5)

    def forward(self, TEXT: list[str], ROUNDS: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        acc = self.w
        for _ in range(int(ROUNDS.max().item())):
            acc = torch.mm(acc, self.w) + self.w
        tagged = [text + "|" + str(len(TEXT)) for text in TEXT]
        return tagged, ROUNDS * 0 + acc[0, 0] * 0 + float(len(TEXT))


TAGGER_CONFIG = """name: "tagger"
max_batch_size: 16
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] },
        { name: "ROUNDS" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "TAGGED" data_type: TYPE_STRING dims: [ 1 ] },
         { name: "ROWS" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
"""


class Lines(torch.nn.Module):
    """No batch dimension: a list of any length in, the same list reversed out."""

    def forward(self, LINES: list[str]) -> list[str]:
        return LINES[::-1]


LINES_CONFIG = """name: "lines"
max_batch_size: 0
input [ { name: "LINES" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "REVERSED" data_type: TYPE_STRING dims: [ -1 ] } ]
"""


class DropsOnCue(torch.nn.Module):
    """Returns one string too few when a text says "drop": an output that does not fit its config."""

    def forward(self, TEXT: list[str]) -> list[str]:
        if "drop" in TEXT:
            return TEXT[1:]
        return TEXT


DROPS_CONFIG = """name: "drops"
max_batch_size: 4
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "SAME" data_type: TYPE_STRING dims: [ 1 ] } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo: Path = tmp_path_factory.mktemp("strings")
    write_model(repo, "tagger", Tagger(), TAGGER_CONFIG)
    write_model(repo, "lines", Lines(), LINES_CONFIG)
    write_model(repo, "drops", DropsOnCue(), DROPS_CONFIG)
    text = Path(__file__).resolve().parents[2] / "models" / "text"
    (repo / "text" / "1").mkdir(parents=True)
    (repo / "text" / "config.pbtxt").write_bytes((text / "config.pbtxt").read_bytes())
    (repo / "text" / "1" / "model.pt").write_bytes((text / "1" / "model.pt").read_bytes())
    with running_server(repo, torch_threads=1, max_string_bytes=1000) as running:
        yield running


def expected_text(texts: list[str]) -> dict[str, list[list[object]]]:
    """What the bundled `text` model answers: UTF-8 lengths, space-separated words, ASCII upper."""
    return {
        "LENGTH": [[len(t.encode())] for t in texts],
        "WORDS": [[len([w for w in t.split(" ") if w])] for t in texts],
        "UPPER": [["".join(c.upper() if c.isascii() else c for c in t).encode()] for t in texts],
    }


def serialized(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_tritonclient_sends_raw_bytes_and_reads_string_outputs(server: RunningServer) -> None:
    client = triton.InferenceServerClient(server.target)
    try:
        metadata = client.get_model_metadata("text", as_json=True)
        assert metadata["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": ["-1", "1"]}]
        config = client.get_model_config("text", as_json=True)["config"]
        assert config["input"][0]["data_type"] == "TYPE_STRING"
        data = np.array([[t.encode()] for t in TEXTS], dtype=np.object_)
        given = triton.InferInput("TEXT", list(data.shape), "BYTES")
        given.set_data_from_numpy(data)
        result = client.infer("text", [given])
        for name, want in expected_text(TEXTS).items():
            got = result.as_numpy(name)
            assert got is not None and got.tolist() == want, name
        assert result.get_output("UPPER").datatype == "BYTES"
    finally:
        client.close()


def test_bytes_contents_are_accepted_as_inputs(server: RunningServer) -> None:
    request = pb.ModelInferRequest(model_name="text")
    tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[2, 1])
    tensor.contents.bytes_contents.extend([b"one two", "ünï".encode()])
    with grpc.insecure_channel(server.target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    upper = response.raw_output_contents[[o.name for o in response.outputs].index("UPPER")]
    assert upper == serialized([b"ONE TWO", "üNï".encode()])


def test_our_client_takes_str_bytes_and_numpy_string_arrays(server: RunningServer) -> None:
    with Client(server.target, timeout=60) as client:
        for data in (
            np.array([[t] for t in TEXTS], dtype=np.object_),  # str
            np.array([[t.encode()] for t in TEXTS], dtype=np.object_),  # bytes
            np.array([[t] for t in TEXTS]),  # numpy unicode (<U)
        ):
            out = client.predict("text", {"TEXT": data})
            assert out["UPPER"].dtype == np.object_
            assert {name: out[name].tolist() for name in out} == expected_text(TEXTS)
        reversed_lines = client.predict("lines", {"LINES": np.array(["a", "bb", "ccc"], dtype=np.object_)})
        assert reversed_lines["REVERSED"].tolist() == [b"ccc", b"bb", b"a"]
        assert reversed_lines["REVERSED"].shape == (3,)


def test_the_async_client_takes_and_returns_strings(server: RunningServer) -> None:
    async def call() -> dict[str, list[list[object]]]:
        async with AsyncClient(server.target, timeout=60) as client:
            out = await client.predict("text", {"TEXT": np.array([[t] for t in TEXTS], dtype=np.object_)})
            return {name: out[name].tolist() for name in out}

    assert asyncio.run(call()) == expected_text(TEXTS)


def test_our_client_streams_string_requests(server: RunningServer) -> None:
    batches = [np.array([[f"row {i} of {n}"] for i in range(n)], dtype=np.object_) for n in (1, 3, 2)]
    with Client(server.target, timeout=60) as client:
        results = list(client.stream("text", ({"TEXT": b} for b in batches)))
    for batch, result in zip(batches, results, strict=True):
        assert result.unwrap()["UPPER"].tolist() == [[t.upper().encode()] for (t,) in batch]


def test_string_requests_batch_together_and_split_by_rows(server: RunningServer) -> None:
    """k requests of n_i rows queued behind a busy one run as one batch: each gets its own rows."""
    rows = [1, 3, 2, 4]
    with (
        Client(server.target, timeout=120) as client,
        concurrent.futures.ThreadPoolExecutor(len(rows) + 1) as pool,
    ):
        busy = pool.submit(
            client.predict,
            "tagger",
            {"TEXT": np.array([["busy"]], np.object_), "ROUNDS": np.array([[20_000]], np.float32)},
        )
        wait_until(lambda: server.queue_state("tagger")[1] == 1, "the busy request computes")
        texts = [[f"r{k}.{i}" for i in range(n)] for k, n in enumerate(rows)]
        waiting = [
            pool.submit(
                client.predict,
                "tagger",
                {
                    "TEXT": np.array([[t] for t in mine], np.object_),
                    "ROUNDS": np.zeros((len(mine), 1), np.float32),
                },
            )
            for mine in texts
        ]
        wait_until(lambda: server.queue_state("tagger")[0] == len(rows), "every request is queued")
        assert busy.result()["TAGGED"].tolist() == [[b"busy|1"]]
        for mine, future in zip(texts, waiting, strict=True):
            out = future.result()
            assert out["TAGGED"].tolist() == [[f"{t}|{sum(rows)}".encode()] for t in mine]
            assert out["ROWS"].tolist() == [[float(sum(rows))]] * len(mine)


@pytest.mark.parametrize(
    ("model", "shape", "raw", "message"),
    [
        (
            "lines",
            [2],
            serialized([b"abcd"]) + b"\x01\x00",
            "ends inside the 4-byte length of element 1 of 2",
        ),
        ("text", [1, 1], struct.pack("<I", 10) + b"abc", "element 0 has length 10, past the end"),
        ("text", [1, 1], serialized([b"a", b"b"]), "5 bytes left after 1 BYTES elements"),
        ("lines", [3], serialized([b"a", b"b"]), "10 bytes of BYTES data cannot hold 3 elements"),
        ("text", [1, 1], serialized([b"\xff\xfe"]), "element 0 is not UTF-8 text"),
        ("text", [1, 1], serialized([b"y" * 1001]), "over the limit of 1000 set by --max-string-bytes"),
    ],
    ids=["truncated-length", "length-past-end", "too-many-elements", "too-few-bytes", "not-utf8", "too-long"],
)
def test_bad_bytes_get_invalid_argument_naming_the_input(
    server: RunningServer, model: str, shape: list[int], raw: bytes, message: str
) -> None:
    request = pb.ModelInferRequest(model_name=model)
    name = "TEXT" if model == "text" else "LINES"
    request.inputs.add(name=name, datatype="BYTES", shape=shape)
    request.raw_input_contents.append(raw)
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"input '{name}'" in caught.value.details()
    assert message in caught.value.details()


def test_a_shape_claiming_more_elements_than_the_data_holds_fails_before_allocating(
    server: RunningServer,
) -> None:
    with Client(server.target, timeout=60) as client:
        request = pb.ModelInferRequest(model_name="lines")
        request.inputs.add(name="LINES", datatype="BYTES", shape=[50_000_000])
        request.raw_input_contents.append(serialized([b"a"]))
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as caught:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot hold 50000000 elements" in caught.value.details()
        # The server still answers, and our client reports a bad element as INVALID_ARGUMENT.
        assert client.predict("lines", {"LINES": np.array(["ok"], np.object_)})["REVERSED"].tolist() == [
            b"ok"
        ]
        with pytest.raises(InferenceError) as refused:
            client.predict("text", {"TEXT": np.array([[b"\xff"]], np.object_)})
        assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_a_string_output_of_the_wrong_length_is_a_model_error(server: RunningServer) -> None:
    with Client(server.target, timeout=60) as client:
        with pytest.raises(InferenceError) as caught:
            client.predict("drops", {"TEXT": np.array([["keep"], ["drop"]], np.object_)})
        assert caught.value.code is grpc.StatusCode.INTERNAL
        assert caught.value.message == (
            "model 'drops' output 'SAME' is a list of 1 strings, expected 2 (shape [2, 1])"
        )
        assert client.predict("drops", {"TEXT": np.array([["keep"]], np.object_)})["SAME"].tolist() == [
            [b"keep"]
        ]
