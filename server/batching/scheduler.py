"""One scheduler per served model version: queues requests, forms batches, runs them on instances.

Batch forming rule (dynamic_batching):
- A batch is formed only when an instance is free. While every instance computes, requests pile up,
  and the next batch takes them all at once (within the size rules below): under load, batches
  grow without any waiting.
- A batch holds requests whose non-batch shapes agree, up to max_batch_size rows. Higher priority
  levels go first, and within a level requests go in arrival order.
- Preferred sizes (Triton's rule): when the first requests in that order add up to a
  preferred_batch_size, the largest such batch goes at once, and the rest stay queued.
- With an instance free, no preferred size formed and the batch short of max_batch_size, the
  scheduler waits for batch-mates. It waits at most max_queue_delay, counted from the oldest
  request's arrival, and only while waiting has been paying off at the batch's current row count:
  for each row count it keeps a moving average of whether recent waits there gained a row before
  the delay ran out. So a lone caller is computed at once, and two closed-loop callers
  wait for each other but not, after a few tries, for a third that never comes: batching never
  makes a caller wait out the delay for nothing. Every 16th formation waits anyway, to notice when
  load returns.
Without dynamic_batching, every request runs alone, still on an instance thread.

Queue policy (Triton's): a full level answers QueueFull at once. A request whose timeout passes
while queued is answered DeadlineExpired and never computed, or with timeout_action DELAY goes
behind every request of its level still within its timeout. A cancelled caller leaves the queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ..core.errors import DeadlineExpired, ModelExecutionError, ModelUnavailable, QueueFull
from ..observability.statistics import ModelStatistics
from ..repository import BatchingPolicy, QueuePolicy

Array = npt.NDArray[Any]
Runner = Callable[[Sequence[Array]], Awaitable[list[Array]]]


class Inline(Protocol):
    """A model that says which lone requests are short enough to compute on the event loop thread."""

    def inline(self, rows: int) -> bool: ...
    def forward(self, inputs: Sequence[Array]) -> list[Array]: ...


_PROBE_EVERY = 16
_PAYOFF_DECAY = 0.8
_UNBOUNDED = QueuePolicy()


@dataclass(frozen=True, slots=True)
class Completed:
    """A request's outputs and when it was queued, started computing and finished (monotonic ns)."""

    outputs: list[Array]
    queued_ns: int
    started_ns: int
    finished_ns: int


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: Sequence[Array]
    rows: int
    key: tuple[tuple[int, ...], ...]  # non-batch shapes: only equal keys share a batch
    future: asyncio.Future[Completed]
    arrived_ns: int
    expiry: asyncio.TimerHandle | None = None
    dispatched_ns: int = field(default=0)


_Queue = collections.deque[_Pending]


class Scheduler:
    def __init__(
        self,
        run: Runner,
        *,
        name: str,
        max_batch_size: int,
        policy: BatchingPolicy | None,
        instances: int,
        stats: ModelStatistics,
        inline: Inline | None = None,
    ) -> None:
        self._run = run
        self._inline = inline
        self._name = name
        self._max_rows = max_batch_size
        self._policy = policy
        self._preferred = frozenset(policy.preferred_batch_sizes if policy is not None else ())
        self._instances = instances
        self.stats = stats
        levels = policy.priority_levels if policy is not None else 1
        # Two queues per priority level, in the order they are served: requests within their
        # timeout, then those whose timeout passed under timeout_action DELAY.
        self._levels: list[_Queue] = [collections.deque() for _ in range(2 * levels)]
        self._payoff: dict[int, float] = {}  # by row count; optimistic (1.0) until measured
        self._formations = 0
        # asyncio objects are made lazily inside the running loop (constructors stay loop-free).
        self._wakeup: asyncio.Event | None = None
        self._free: asyncio.Semaphore | None = None
        self._idle: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._active = 0  # batches computing now, dispatched or run at once by submit
        self._closed = False

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (cancelled or expired ones not counted)."""
        return sum(1 for level in self._levels for p in level if not p.future.done())

    @property
    def in_flight(self) -> int:
        return self._active

    def _queue_policy(self, priority: int) -> QueuePolicy:
        return self._policy.queue(priority) if self._policy is not None else _UNBOUNDED

    def _level(self, priority: int) -> int:
        """The queue level for a request's `priority`. Triton's rule: 0, or a level the model does
        not have, means the model's default level."""
        if self._policy is None:
            return 1
        if 1 <= priority <= self._policy.priority_levels:
            return priority
        return self._policy.default_priority

    async def submit(
        self, inputs: Sequence[Array], rows: int, *, priority: int = 0, timeout_s: float | None = None
    ) -> Completed:
        """Queue one request (inputs in config order, `rows` in its batch dimension); await its outputs."""
        if self._dispatcher is None:
            if self._closed:
                raise ModelUnavailable(f"model '{self._name}': this version has been unloaded")
            self._start()
        assert self._wakeup is not None and self._free is not None
        level = self._level(priority)
        queue_policy = self._queue_policy(level)
        queue, delayed = self._levels[2 * level - 2], self._levels[2 * level - 1]
        if queue_policy.max_queue_size and len(queue) + len(delayed) >= queue_policy.max_queue_size:
            self._compact(queue)
            self._compact(delayed)
            if len(queue) + len(delayed) >= queue_policy.max_queue_size:
                raise QueueFull(
                    f"model '{self._name}' queue is full: {queue_policy.max_queue_size} requests waiting "
                    f"(dynamic_batching max_queue_size, priority level {level})"
                )
        loop = asyncio.get_running_loop()
        key = tuple(a.shape[1:] for a in inputs) if self._policy is not None else ()
        pending = _Pending(inputs, rows, key, loop.create_future(), time.monotonic_ns())
        timeout = _effective_timeout(queue_policy, timeout_s)
        if timeout is not None and queue_policy.reject_on_timeout:
            pending.expiry = loop.call_later(timeout, _expire, pending, self._name, timeout)
        elif timeout is not None:
            pending.expiry = loop.call_later(timeout, _delay, pending, queue, delayed)
        if self._run_now(rows):
            # An instance is free, nothing waits and waiting for batch-mates does not pay off:
            # compute right here, without a trip through the dispatcher; on this thread when the
            # model measured its forward pass shorter than the two thread hand-offs it saves.
            await self._free.acquire()  # free, so this does not suspend
            self._active += 1
            try:
                await self._compute([pending], inline=self._inline is not None and self._inline.inline(rows))
            finally:
                self._finished()
            return pending.future.result()
        queue.append(pending)
        self._wakeup.set()
        try:
            return await pending.future
        finally:
            if pending.expiry is not None:
                pending.expiry.cancel()

    def _run_now(self, rows: int) -> bool:
        assert self._free is not None
        if self._free.locked() or any(self._levels):
            return False
        if self._policy is None or rows >= self._max_rows or rows in self._preferred:
            return True  # nothing to wait for
        if self._pays_at(rows):
            return False
        self._formations += 1
        return self._formations % _PROBE_EVERY != 0  # now and then, queue anyway to notice load

    def _finished(self) -> None:
        assert self._free is not None and self._idle is not None
        self._active -= 1
        self._free.release()
        if not self._active and not any(self._levels):
            self._idle.set()

    def _start(self) -> None:
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._free = asyncio.Semaphore(self._instances)
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_forever())

    async def _dispatch_forever(self) -> None:
        assert self._free is not None
        while True:
            await self._wait_for_work()
            await self._free.acquire()
            if self._head() is None:
                # What woke us was cancelled or expired while every instance was busy: hand the
                # instance back, so that a lone request arriving now can run at once in submit.
                self._free.release()
                continue
            batch = await self._next_batch()
            self._active += 1
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    @staticmethod
    def _compact(queue: _Queue) -> None:
        # Cancelled and expired requests leave the queue here, without ever running.
        if any(p.future.done() for p in queue):
            kept = [p for p in queue if not p.future.done()]
            queue.clear()
            queue.extend(kept)

    def _head(self) -> _Pending | None:
        for queue in self._levels:
            while queue and queue[0].future.done():
                queue.popleft()
            if queue:
                return queue[0]
        return None

    async def _wait_for_work(self) -> _Pending:
        assert self._wakeup is not None and self._idle is not None
        while True:
            head = self._head()
            if head is not None:
                return head
            for queue in self._levels:
                self._compact(queue)
            if not self._active:
                self._idle.set()
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _next_batch(self) -> list[_Pending]:
        head = await self._wait_for_work()
        if self._policy is None:
            self._levels[0].popleft()
            return [head]
        self._formations += 1
        probing = self._formations % _PROBE_EVERY == 0
        batch = self._compatible(head)
        rows = _rows(batch)
        deadline_ns = head.arrived_ns + int(self._policy.max_queue_delay_s * 1e9)
        while rows < self._max_rows and not self._preferred_cut(batch) and (probing or self._pays_at(rows)):
            remaining = (deadline_ns - time.monotonic_ns()) / 1e9
            if remaining <= 0:
                break
            before = rows
            await self._wait_for_arrival(remaining)
            head = await self._wait_for_work()
            batch = self._compatible(head)
            rows = _rows(batch)
            # A wait is judged when it ends for real: by a row gained, or by the delay running out.
            if rows > before or time.monotonic_ns() >= deadline_ns:
                self._learn(before, gained=rows > before)
        cut = self._preferred_cut(batch)
        return self._take(batch[:cut] if cut else batch)

    def _preferred_cut(self, batch: list[_Pending]) -> int:
        """How many of the batch's first requests make its largest preferred size (0: none does)."""
        cut = rows = 0
        if self._preferred:
            for count, p in enumerate(batch, 1):
                rows += p.rows
                if rows in self._preferred:
                    cut = count
        return cut

    def _pays_at(self, rows: int) -> bool:
        return self._payoff.get(rows, 1.0) >= 0.5

    def _learn(self, rows: int, *, gained: bool) -> None:
        old = self._payoff.get(rows, 1.0)
        self._payoff[rows] = _PAYOFF_DECAY * old + (1 - _PAYOFF_DECAY) * float(gained)

    async def _wait_for_arrival(self, timeout: float) -> None:
        assert self._wakeup is not None
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _compatible(self, head: _Pending) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        for queue in self._levels:
            for p in queue:
                if p.key != head.key or p.future.done():
                    continue
                if rows + p.rows > self._max_rows:
                    return batch
                batch.append(p)
                rows += p.rows
        return batch

    def _take(self, batch: list[_Pending]) -> list[_Pending]:
        taken = set(map(id, batch))
        for queue in self._levels:
            if any(id(p) in taken for p in queue):
                kept = [p for p in queue if id(p) not in taken and not p.future.done()]
                queue.clear()
                queue.extend(kept)
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            live = [p for p in batch if not p.future.done()]
            if live:
                await self._compute(live)
        finally:
            self._finished()

    async def _compute(self, live: list[_Pending], *, inline: bool = False) -> None:
        start = time.monotonic_ns()
        for p in live:
            if p.expiry is not None:
                p.expiry.cancel()  # it runs now: its timeout no longer applies
            p.dispatched_ns = start
            self.stats.record_queue(start - p.arrived_ns)
        inputs = _concat(live)
        ran = time.monotonic_ns()
        try:
            outputs = self._inline.forward(inputs) if inline and self._inline else await self._run(inputs)
        except ModelExecutionError as exc:
            if len(live) == 1:
                _fail(live, exc)
                return
            # One request may have poisoned the batch: rerun each alone so only it fails.
            for p in live:
                await self._compute([p])
            return
        except Exception as exc:  # unexpected: the rpc boundary logs it once per request
            _fail(live, exc)
            return
        done = time.monotonic_ns()
        _deliver(live, outputs)
        rows = _rows(live)
        self.stats.record_batch(rows, len(live), ran - start, done - ran, time.monotonic_ns() - done)

    async def close(self) -> None:
        """Answer everything queued and running, then stop; later submits get ModelUnavailable."""
        if self._dispatcher is None:
            self._closed = True
            return
        assert self._idle is not None and self._wakeup is not None
        while self._head() is not None or self._active:
            self._idle.clear()
            self._wakeup.set()
            await self._idle.wait()
        self._closed = True
        self._dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._dispatcher
        self._dispatcher = None


def _effective_timeout(policy: QueuePolicy, requested: float | None) -> float | None:
    """Triton's rule: a request may shorten the default timeout only where the policy allows it."""
    if requested is None:
        return policy.default_timeout_s
    if policy.default_timeout_s is None:
        return requested
    return (
        min(requested, policy.default_timeout_s)
        if policy.allow_timeout_override
        else policy.default_timeout_s
    )


def _expire(pending: _Pending, model: str, timeout: float) -> None:
    if not pending.future.done():
        pending.future.set_exception(
            DeadlineExpired(f"model '{model}': request timed out after {timeout * 1e6:.0f} µs in the queue")
        )


def _rows(batch: list[_Pending]) -> int:
    return sum(p.rows for p in batch)


def _delay(pending: _Pending, queue: _Queue, delayed: _Queue) -> None:
    try:
        queue.remove(pending)
    except ValueError:  # already taken into a batch
        return
    delayed.append(pending)


def _concat(batch: list[_Pending]) -> Sequence[Array]:
    if len(batch) == 1:
        return batch[0].inputs
    return [np.concatenate(parts) for parts in zip(*(p.inputs for p in batch), strict=True)]


def _deliver(batch: list[_Pending], outputs: list[Array]) -> None:
    finished = time.monotonic_ns()
    start = 0
    for p in batch:
        if not p.future.done():
            mine = outputs if len(batch) == 1 else [o[start : start + p.rows] for o in outputs]
            p.future.set_result(Completed(mine, p.arrived_ns, p.dispatched_ns, finished))
        start += p.rows


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)
