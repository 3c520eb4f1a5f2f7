"""A bare Python gRPC server: answers v2 ModelInfer with zeros of the right shape and runs no model.

It is the ceiling `torchwire bench` measures torchwire against: whatever this server cannot do,
no Python gRPC server doing real work can do either. So it is as cheap as Python gRPC allows, while
still doing the work any server must: it parses each request (the batch size comes from its first
input) and sends a well-formed response with every output's bytes.

    python benchmarks/bare_server.py --port 0 --outputs OUTPUT__0:FP32:-1,10
    PORT 40123

Sync grpc, not grpc.aio: measured here (2 cores, the load generator sharing them) the sync server
with a 4-thread pool spent ~190 us of CPU per request at concurrency 16-64 against ~290 us for a
grpc.aio server with the same handler, and served ~6,500/s at concurrency 64 against ~4,700/s; at
concurrency 1 the two were within noise (p50 ~0.45 ms). The faster one is the honest ceiling.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

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


class ZeroResponses:
    """Serialized responses, built once per batch size: the per-request work is one parse and a join."""

    def __init__(self, outputs: Sequence[OutputSpec]) -> None:
        self._outputs = outputs
        self._bodies: dict[int, bytes] = {}

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
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ).SerializeToString()
        return header + self.body(rows)

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


def _handlers(zeros: ZeroResponses) -> grpc.GenericRpcHandler[Any, Any]:
    def infer(request: pb.ModelInferRequest, context: Any) -> bytes:
        return zeros.answer(request)

    def stream(requests: Iterator[pb.ModelInferRequest], context: Any) -> Iterator[bytes]:
        for request in requests:
            yield zeros.stream_answer(request)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(infer, request_deserializer=_parse),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream, request_deserializer=_parse),
        },
    )


OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def serve(host: str, port: int, zeros: ZeroResponses, threads: int) -> None:
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads),
        handlers=[_handlers(zeros)],
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
    args = parser.parse_args(argv)
    serve(args.host, args.port, ZeroResponses(args.outputs), args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
