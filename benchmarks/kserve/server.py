"""KServe's Python model server serving one of torchwire's bundled TorchScript models over v2 gRPC,
as a KServe user would write it: a `kserve.Model` whose synchronous `predict` KServe calls on its
event loop. For side-by-side benchmarks only (`benchmarks/versus.py`); it runs in a venv of its own
(`benchmarks/contender_venv.sh kserve`), never in torchwire's.

    python server.py --model mlp --repository models --grpc_port 8081 --http_port 8080
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import kserve  # type: ignore[import-not-found]
import torch
from kserve import InferOutput, InferRequest, InferResponse


class TorchScriptModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.module = torch.jit.load(str(path), map_location="cpu").eval()
        self.ready = True

    def predict(self, payload: InferRequest, headers: Any = None) -> InferResponse:
        inputs = [torch.from_numpy(tensor.as_numpy()) for tensor in payload.inputs]
        with torch.inference_mode():
            result = self.module(*inputs).numpy()
        output = InferOutput(name="OUTPUT__0", shape=list(result.shape), datatype="FP32")
        output.set_data_from_numpy(result, binary_data=True)
        return InferResponse(
            model_name=self.name, infer_outputs=[output], response_id=payload.id, use_binary_outputs=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser], add_help=False)
    parser.add_argument("--model", required=True)
    parser.add_argument("--repository", type=Path, default=Path(__file__).parents[2] / "models")
    args, _ = parser.parse_known_args()
    logging.disable(logging.CRITICAL)  # KServe logs every request by default; the comparison is without
    model = TorchScriptModel(args.model, args.repository / args.model / "1" / "model.pt")
    kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_latency_logging=False,
        enable_docs_url=False,
    ).start([model])


if __name__ == "__main__":
    main()
