"""Requests the suites build alike."""

from __future__ import annotations

import numpy as np

from torchwire.client._proto import grpc_service_pb2 as pb


def simple_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="simple", id="good")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(np.arange(16, dtype="<i4").tobytes())
    return request
