"""An asyncio stream over an async generator, answers taken as they complete.

python examples/async_stream.py [HOST:PORT]
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import numpy as np

from torchwire.client import AsyncClient


async def frames(count: int) -> AsyncIterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    for _ in range(count):
        await asyncio.sleep(0)  # stands in for awaiting the next item from a socket or queue
        yield {"INPUT__0": rng.random((1, 64), dtype=np.float32)}


async def main(target: str) -> None:
    async with AsyncClient(target, timeout=60) as client:
        answered = 0
        async for result in client.stream("digits", frames(100), ordered=False):
            answered += 1
            last = result
        print(f"{answered} answers; the last to complete was request {last.request_id}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "localhost:8001"))
