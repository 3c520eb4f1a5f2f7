"""The request the benchmark scripts send: batch-1 ModelInfer for the bundled `mlp` or `cnn`, its
input as raw bytes, and the output a response must carry."""

from __future__ import annotations

import numpy as np

from torchwire.bench.protocol import OutputSpec
from torchwire.client._proto import grpc_service_pb2 as pb

INPUTS = {"mlp": (64,), "cnn": (3, 64, 64)}  # each model's input dims, batch dimension left out
OUTPUTS = (OutputSpec("OUTPUT__0", "FP32", (1, 10)),)
BARE_OUTPUTS = ["OUTPUT__0:FP32:-1,10"]  # the same, as the bare server's --outputs


def request(model: str) -> bytes:
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, *INPUTS[model]])
    data = np.random.default_rng(0).random((1, *INPUTS[model]), dtype=np.float32)
    message.raw_input_contents.append(data.tobytes())
    return message.SerializeToString()
