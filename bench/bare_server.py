"""A bare Python gRPC server: answers v2 ModelInfer with zeros of the right shape and runs no model.

It is the ceiling `torchwire bench` measures torchwire against: whatever this server cannot do,
no Python gRPC server doing real work can do either. So it is as cheap as Python gRPC allows, while
still doing the work any server must: it parses each request (the batch size comes from its first
input) and sends a well-formed response with every output's bytes.

    python -m torchwire.bench.bare_server --port 0 --outputs OUTPUT__0:FP32:-1,10
    PORT 40123

With `--describe FILE` (what `torchwire bench --load-generator perf_analyzer` writes: the model's
name, version, and torchwire's serialized ModelMetadata and ModelConfig answers) it also answers
what Triton's perf_analyzer asks before and around its load: liveness, readiness, server and model
metadata, the config, and ModelStatistics counting the requests it answered.

Two flavors, because neither is the faster everywhere and the ceiling must be the faster one:
sync grpc with a small thread pool (the default), and `--aio`, grpc.aio on uvloop. Measured here
(2 cores shared with the load generator): with torchwire's Python load generator sync served ~6,500/s
at concurrency 64 against ~4,700/s for aio; with perf_analyzer it was the other way round at 64
(~4,100-4,600/s sync, ~6,200-6,700/s aio) while sync kept the lower latency at concurrency 1.
`torchwire bench` runs both and takes the faster at each level.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import itertools
import json
import math
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from torchwire.client._codec import datatype
from torchwire.client._proto import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"


@dataclass(frozen=True, slots=True)
class OutputSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]  # -1 marks the batch dimension (and any other variable one)


def parse_output(text: str) -> OutputSpec:
    """`NAME:DATATYPE:D1,D2,...`, e.g. `OUTPUT__0:FP32:-1,10`."""
    try:
        name, dtype, dims = text.rsplit(":", 2)
        shape = tuple(int(d) for d in dims.split(",") if d.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--outputs {text!r}: expected NAME:DATATYPE:D1,D2,...") from exc
    datatype(dtype, name)  # raises on an unknown datatype
    if dtype == "BYTES":
        raise argparse.ArgumentTypeError(f"--outputs {text!r}: BYTES outputs have no fixed size")
    return OutputSpec(name, dtype, shape)


@dataclass(frozen=True, slots=True)
class Description:
    """The model as torchwire describes it: what perf_analyzer needs to know before sending load."""

    model: str
    version: str
    metadata: bytes  # a serialized ModelMetadataResponse
    config: bytes  # a serialized ModelConfigResponse

    @classmethod
    def read(cls, path: str) -> Description:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
        metadata, config = (base64.b64decode(data[key]) for key in ("metadata", "config"))
        return cls(data["model"], data["version"], metadata, config)


class ZeroResponses:
    """Serialized responses, built once per batch size: the per-request work is one parse and a join."""

    def __init__(self, outputs: Sequence[OutputSpec], version: str = "") -> None:
        self._outputs = outputs
        self._bodies: dict[int, bytes] = {}
        self._version = version  # answered when a request names none, as a real server would
        self._answered = itertools.count()  # next() is atomic under the GIL: a thread-safe counter

    def body(self, rows: int) -> bytes:
        found = self._bodies.get(rows)
        if found is None:
            found = self._bodies[rows] = self._build(rows)
        return found

    def _build(self, rows: int) -> bytes:
        response = pb.ModelInferResponse()
        for spec in self._outputs:
            shape = [rows if d < 0 and i == 0 else max(d, 1) for i, d in enumerate(spec.dims)]
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
            size = math.prod(shape) * datatype(spec.datatype, spec.name).itemsize
            response.raw_output_contents.append(bytes(size))
        return response.SerializeToString()

    def answer(self, request: pb.ModelInferRequest) -> bytes:
        rows = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        # A protobuf message is the concatenation of its fields, so the cached outputs are joined
        # with a header naming this request's model and id instead of re-serializing the tensors.
        header = pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version or self._version, id=request.id
        ).SerializeToString()
        next(self._answered)
        return header + self.body(rows)

    def statistics(self, description: Description) -> bytes:
        """ModelStatistics counting answered requests as rows and as forward passes (no batching)."""
        answered = next(self._answered)  # one more than answered so far; the extra is harmless
        response = pb.ModelStatisticsResponse()
        stats = response.model_stats.add(name=description.model, version=description.version)
        stats.inference_count = stats.execution_count = answered
        stats.inference_stats.success.count = answered
        return response.SerializeToString()

    def stream_answer(self, request: pb.ModelInferRequest) -> bytes:
        # ModelStreamInferResponse.infer_response is field 2, length-delimited: tag 0x12.
        inner = self.answer(request)
        return b"\x12" + _varint(len(inner)) + inner


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _parse(data: bytes) -> pb.ModelInferRequest:
    return pb.ModelInferRequest.FromString(data)


Unary = Callable[[Any, Any], bytes]


def _unary(behavior: Unary, aio: bool, deserializer: Callable[[bytes], Any] | None = None) -> Any:
    """A unary handler around `behavior`; grpc.aio runs only coroutines on its loop."""
    if not aio:
        return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=deserializer)

    async def handler(request: Any, context: Any) -> bytes:
        return behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=deserializer)


def _handlers(
    zeros: ZeroResponses, description: Description | None = None, *, aio: bool = False
) -> grpc.GenericRpcHandler[Any, Any]:
    def stream(requests: Iterator[pb.ModelInferRequest], context: Any) -> Iterator[bytes]:
        for request in requests:
            yield zeros.stream_answer(request)

    async def stream_aio(requests: AsyncIterator[pb.ModelInferRequest], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            yield zeros.stream_answer(request)

    methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "ModelInfer": _unary(lambda request, context: zeros.answer(request), aio, _parse),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            stream_aio if aio else stream, request_deserializer=_parse
        ),
    }
    if description is not None:
        methods.update(_describing(zeros, description, aio))
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def _answering(body: bytes) -> Unary:
    """A behavior that answers every request with the same serialized response."""

    def answer(request: Any, context: Any) -> bytes:
        return body

    return answer


def _describing(
    zeros: ZeroResponses, description: Description, aio: bool
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The calls perf_analyzer makes besides inference; requests are not even parsed."""
    fixed = {
        "ServerLive": pb.ServerLiveResponse(live=True).SerializeToString(),
        "ServerReady": pb.ServerReadyResponse(ready=True).SerializeToString(),
        "ModelReady": pb.ModelReadyResponse(ready=True).SerializeToString(),
        "ServerMetadata": pb.ServerMetadataResponse(name="bare", version="0").SerializeToString(),
        "ModelMetadata": description.metadata,
        "ModelConfig": description.config,
    }
    handlers = {name: _unary(_answering(body), aio) for name, body in fixed.items()}
    handlers["ModelStatistics"] = _unary(lambda request, context: zeros.statistics(description), aio)
    return handlers


OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def serve(
    host: str, port: int, zeros: ZeroResponses, threads: int, description: Description | None = None
) -> None:
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads),
        handlers=[_handlers(zeros, description)],
        options=OPTIONS,
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    print(f"PORT {bound}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(0)


async def _serve_aio(host: str, port: int, handlers: grpc.GenericRpcHandler[Any, Any]) -> None:
    server = grpc.aio.server(handlers=[handlers], options=OPTIONS)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def serve_aio(host: str, port: int, zeros: ZeroResponses, description: Description | None = None) -> None:
    """grpc.aio on uvloop, as torchwire serves by default."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve_aio(host, port, _handlers(zeros, description, aio=True)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Answer v2 ModelInfer with zeros; run no model.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port; printed as `PORT <n>`")
    parser.add_argument(
        "--outputs",
        type=parse_output,
        nargs="+",
        required=True,
        metavar="NAME:DATATYPE:DIMS",
        help="each output, dims comma-separated with -1 first for the batch dimension",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=4,
        help="handler threads: 4 measured fastest here for unary calls; each open stream holds one more",
    )
    parser.add_argument(
        "--aio", action="store_true", help="serve with grpc.aio on uvloop instead of sync grpc"
    )
    parser.add_argument(
        "--describe",
        metavar="FILE",
        help="JSON with the model's name, version and serialized metadata and config: also answer "
        "the metadata, readiness and statistics calls perf_analyzer makes",
    )
    args = parser.parse_args(argv)
    description = Description.read(args.describe) if args.describe else None
    zeros = ZeroResponses(args.outputs, description.version if description else "")
    if args.aio:
        serve_aio(args.host, args.port, zeros, description)
    else:
        serve(args.host, args.port, zeros, args.threads, description)
    return 0


if __name__ == "__main__":
    sys.exit(main())
