"""The worker's HTTP load: `concurrency` v2 REST inference calls outstanding, closed loop, on asyncio.

The gRPC loop keeps its calls outstanding through grpc's own threads; for HTTP the worker runs aiohttp's
client (the server's HTTP stack, kept by the aio-libs project) on an event loop of its own for the level:
one task per slot, each re-posting the same pre-built body (rest.py) as soon as its answer is read. Each
slot holds one keep-alive connection, so the level measures requests, not TCP handshakes.

Only the worker imports this module, and only when it is told to load an HTTP target: gRPC runs never
import aiohttp. The window, tally and validator are the worker's own (worker.py), so both protocols are
counted and checked by the same code.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from . import rest

if TYPE_CHECKING:  # the worker's types; it runs as __main__, so it is never imported from here
    from .worker import Tally, Validator, Window

READY_PATH = "/v2/health/ready"


@dataclass(slots=True)
class _Count:
    ok: int = 0


def wait_ready(target: str, timeout: float) -> None:
    """Until `GET /v2/health/ready` on HOST:PORT answers 200; ConnectionError after `timeout` seconds."""
    asyncio.run(_wait_ready(f"http://{target}{READY_PATH}", timeout))


async def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as answer:
                    if answer.status == 200:
                        return
                    last = f"HTTP {answer.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.2)
    raise ConnectionError(f"{url} did not answer 200 within {timeout:.0f} s ({last})")


def run(
    target: str,
    body: rest.InferBody,
    concurrency: int,
    window: Window,
    tally: Tally,
    validator: Validator,
    *,
    deadline_s: float,
    validate_every: int,
) -> None:
    """Load `target` from the window's start until its end; what completed inside it goes to `tally`."""
    window.wait_for_start()
    asyncio.run(_run(target, body, concurrency, window, tally, validator, deadline_s, validate_every))


async def _run(
    target: str,
    body: rest.InferBody,
    concurrency: int,
    window: Window,
    tally: Tally,
    validator: Validator,
    deadline_s: float,
    validate_every: int,
) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)  # one keep-alive connection per slot
    timeout = aiohttp.ClientTimeout(total=deadline_s)  # a stuck request fails instead of hanging the level
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        count = _Count()
        url = f"http://{target}{body.path}"
        slots = [
            _slot(session, url, body, window, tally, validator, count, validate_every)
            for _ in range(concurrency)
        ]
        await asyncio.gather(*slots)


async def _slot(
    session: aiohttp.ClientSession,
    url: str,
    body: rest.InferBody,
    window: Window,
    tally: Tally,
    validator: Validator,
    count: _Count,
    validate_every: int,
) -> None:
    data, headers = body.data, body.headers()
    while True:
        sent = time.perf_counter_ns()
        failed: str | None = None
        payload, length = b"", None
        try:
            async with session.post(url, data=data, headers=headers) as answer:
                payload = await answer.read()
                length = answer.headers.get(rest.HEADER_LENGTH)
                if answer.status != 200:
                    failed = f"HTTP_{answer.status}"
        except asyncio.TimeoutError:
            failed = "DEADLINE_EXCEEDED"
        except aiohttp.ClientError as exc:  # refused, reset: counted by kind, as gRPC's UNAVAILABLE
            failed = type(exc).__name__
        now = time.perf_counter_ns()
        if window.measure_from_ns <= now <= window.measure_to_ns:
            if failed is not None:
                tally.error(failed)
            else:
                count.ok += 1
                problem = (
                    validator.problem_in_answer(payload, length) if count.ok % validate_every == 1 else None
                )
                if problem is None:
                    tally.latencies_ns.append(now - sent)
                else:
                    tally.error("INVALID_RESPONSE", problem)
        if now >= window.measure_to_ns:
            return
