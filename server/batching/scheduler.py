"""One scheduler per served model version: queues requests, forms batches, runs them on instances.

Batch forming rule (dynamic_batching):
- A batch is formed only when an instance is free, so while every instance computes, requests pile
  up and the next batch takes them all at once: under load batches grow without any waiting.
- A batch holds requests whose non-batch shapes agree, up to max_batch_size rows, in arrival order.
- With an instance free and the batch short of max_batch_size (or of the largest preferred size it
  can reach), the scheduler waits for batch-mates at most max_queue_delay, counted from the oldest
  request's arrival, and only while waiting has been paying off: a moving average of the rows each
  recent wait added. When waits stop adding rows (a lone caller, a trickle), requests go at once,
  so batching never makes a lone caller slower; every 16th formation waits anyway to notice load.
Without dynamic_batching every request runs alone, still on an instance thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelExecutionError, TorchwireError
from ..repository import BatchingPolicy

Array = npt.NDArray[Any]
Runner = Callable[[Sequence[Array]], Awaitable[list[Array]]]

_PROBE_EVERY = 16
_PAYOFF_DECAY = 0.8


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: Sequence[Array]
    rows: int
    key: tuple[tuple[int, ...], ...]  # non-batch shapes: only equal keys share a batch
    future: asyncio.Future[list[Array]]
    arrived: float = field(default_factory=time.monotonic)


class Scheduler:
    def __init__(
        self, run: Runner, *, max_batch_size: int, policy: BatchingPolicy | None, instances: int
    ) -> None:
        self._run = run
        self._max_rows = max_batch_size
        self._policy = policy
        self._instances = instances
        self._queue: collections.deque[_Pending] = collections.deque()
        self._payoff = 1.0  # optimistic until measured
        self._formations = 0
        # asyncio objects are made lazily inside the running loop (constructors stay loop-free).
        self._wakeup: asyncio.Event | None = None
        self._free: asyncio.Semaphore | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: Sequence[Array], rows: int) -> list[Array]:
        """Queue one request (inputs in config order, `rows` in its batch dimension); await its outputs."""
        if self._dispatcher is None:
            self._start()
        assert self._wakeup is not None
        key = tuple(a.shape[1:] for a in inputs) if self._policy is not None else ()
        pending = _Pending(inputs, rows, key, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    def _start(self) -> None:
        self._wakeup = asyncio.Event()
        self._free = asyncio.Semaphore(self._instances)
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_forever())

    async def _dispatch_forever(self) -> None:
        assert self._free is not None
        while True:
            await self._free.acquire()
            batch = await self._next_batch()
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _drop_abandoned(self) -> None:
        # A cancelled caller's future is done; its request leaves the queue without running.
        self._queue = collections.deque(p for p in self._queue if not p.future.done())

    async def _wait_for_work(self) -> None:
        assert self._wakeup is not None
        while True:
            self._drop_abandoned()
            if self._queue:
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _next_batch(self) -> list[_Pending]:
        await self._wait_for_work()
        if self._policy is None:
            return [self._queue.popleft()]
        self._formations += 1
        probing = self._formations % _PROBE_EVERY == 0
        waited_from = self._compatible_rows()
        deadline = self._queue[0].arrived + self._policy.max_queue_delay_s
        waited = False
        while True:
            rows = self._compatible_rows()
            if rows >= self._target(rows) or (self._payoff < 0.5 and not probing):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waited = True
            await self._wait_for_arrival(remaining)
            await self._wait_for_work()
        if waited:
            gained = self._compatible_rows() - waited_from
            self._payoff = _PAYOFF_DECAY * self._payoff + (1 - _PAYOFF_DECAY) * min(gained, 1)
        return self._take_batch()

    def _target(self, rows: int) -> int:
        """The row count worth dispatching at: max_batch_size, or the largest preferred size reached."""
        assert self._policy is not None
        reached = [p for p in self._policy.preferred_batch_sizes if p <= rows]
        return reached[-1] if reached and reached[-1] == rows else self._max_rows

    async def _wait_for_arrival(self, timeout: float) -> None:
        assert self._wakeup is not None
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _compatible_rows(self) -> int:
        head = self._queue[0]
        rows = 0
        for p in self._queue:
            if p.key == head.key and not p.future.done():
                if rows + p.rows > self._max_rows:
                    break
                rows += p.rows
        return rows

    def _take_batch(self) -> list[_Pending]:
        head = self._queue[0]
        batch: list[_Pending] = []
        rest: collections.deque[_Pending] = collections.deque()
        rows = 0
        for p in self._queue:
            if p.future.done():
                continue
            if p.key == head.key and rows + p.rows <= self._max_rows:
                batch.append(p)
                rows += p.rows
            else:
                rest.append(p)
        self._queue = rest
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        assert self._free is not None
        try:
            live = [p for p in batch if not p.future.done()]
            if not live:
                return
            try:
                outputs = await self._run(_concat(live))
            except ModelExecutionError:
                if len(live) == 1:
                    raise
                # One request may have poisoned the batch: rerun each alone so only it fails.
                for p in live:
                    await self._settle_alone(p)
                return
            _deliver(live, outputs)
        except TorchwireError as exc:
            _fail(batch, exc)
        except Exception as exc:
            _fail(batch, exc)
            raise
        finally:
            self._free.release()

    async def _settle_alone(self, pending: _Pending) -> None:
        try:
            outputs = await self._run(pending.inputs)
        except Exception as exc:
            _fail([pending], exc)
        else:
            _deliver([pending], outputs)

    async def close(self) -> None:
        """Finish what is queued and running, then stop the dispatcher."""
        while self._queue or self._running:
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
            else:
                await asyncio.sleep(0)
        if self._dispatcher is not None:
            self._dispatcher.cancel()


def _concat(batch: list[_Pending]) -> Sequence[Array]:
    if len(batch) == 1:
        return batch[0].inputs
    return [np.concatenate(parts) for parts in zip(*(p.inputs for p in batch), strict=True)]


def _deliver(batch: list[_Pending], outputs: list[Array]) -> None:
    start = 0
    for p in batch:
        if not p.future.done():
            p.future.set_result(outputs if len(batch) == 1 else [o[start : start + p.rows] for o in outputs])
        start += p.rows


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)
