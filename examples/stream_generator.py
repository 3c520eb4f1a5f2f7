"""A stream over a generator: one ModelStreamInfer stream, many requests in flight, answers in order.

python examples/stream_generator.py [HOST:PORT]
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np

from torchwire.client import Client


def frames(count: int) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    for _ in range(count):  # e.g. one sensor reading or video frame at a time
        yield {"INPUT__0": rng.random((1, 64), dtype=np.float32)}


def main(target: str) -> None:
    with Client(target, timeout=60) as client:
        for result in client.stream("digits", frames(100), max_in_flight=32, errors="return"):
            if result.error is not None:
                print(f"request {result.request_id} failed: {result.error.code.name} {result.error.message}")
                continue
            if result.index % 25 == 0:
                print(f"frame {result.index}: digit {int(result.unwrap()['OUTPUT__0'].argmax())}")
    print("streamed 100 frames")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "localhost:8001")
