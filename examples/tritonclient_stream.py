"""The same stream with unmodified tritonclient: start_stream + async_stream_infer + a callback.

python examples/tritonclient_stream.py [HOST:PORT]
"""

from __future__ import annotations

import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient


def main(target: str) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(target)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    rng = np.random.default_rng(1)
    try:
        for i in range(100):
            tensor = grpcclient.InferInput("INPUT__0", [1, 64], "FP32")
            tensor.set_data_from_numpy(rng.random((1, 64), dtype=np.float32))
            client.async_stream_infer("digits", [tensor], request_id=str(i))
        received = [answers.get(timeout=60) for _ in range(100)]
    finally:
        client.stop_stream()
        client.close()
    errors = [error for _, error in received if error is not None]
    print(f"{len(received) - len(errors)} answers, {len(errors)} errors")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "localhost:8001")
