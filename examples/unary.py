"""A unary call with torchwire's client: classify a few handwritten digits.

python examples/unary.py [HOST:PORT]
"""

from __future__ import annotations

import sys

import numpy as np

from torchwire.client import Client


def main(target: str) -> None:
    images = np.random.default_rng(0).random((4, 64), dtype=np.float32)  # 8x8 images scaled to [0, 1]
    with Client(target, timeout=10) as client:
        probs = client.predict("digits", {"INPUT__0": images})["OUTPUT__0"]
    print("predicted digits:", probs.argmax(axis=1).tolist())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "localhost:8001")
