"""The scheduler's rules without a server: a fake `run` records every batch it is handed.

Each request is one row whose value names it, so a batch reads as the list of requests in it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from torchwire.server.batching import Scheduler
from torchwire.server.core.errors import DeadlineExpired, ModelExecutionError, ModelUnavailable, QueueFull
from torchwire.server.observability.statistics import ModelStatistics
from torchwire.server.repository import BatchingPolicy, QueuePolicy

Array = npt.NDArray[Any]
WAIT_S = 30.0  # generous: only a broken rule ever waits this long


class FakeModel:
    """Doubles its input; a negative value poisons whatever batch it is in. While `hold` is clear,
    every batch waits: the instance stays busy and requests pile up in the queue."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.started = asyncio.Event()

    async def run(self, inputs: Sequence[Array]) -> list[Array]:
        self.batches.append(inputs[0][:, 0].tolist())
        self.started.set()
        await self.hold.wait()
        if (inputs[0] < 0).any():
            raise ModelExecutionError(f"poisoned by {inputs[0][:, 0].tolist()}")
        return [inputs[0] * 2]


def scheduler(
    model: FakeModel, *, max_batch_size: int = 8, policy: BatchingPolicy | None = None
) -> Scheduler:
    return Scheduler(
        model.run,
        name="fake",
        max_batch_size=max_batch_size,
        policy=policy if policy is not None else batching(),
        instances=1,
        stats=ModelStatistics(),
    )


def batching(
    *queues: QueuePolicy, preferred: tuple[int, ...] = (), default_priority: int = 1
) -> BatchingPolicy:
    queues = queues or (QueuePolicy(),)
    # No queue delay: a batch takes what is queued when an instance frees, never waits for more.
    return BatchingPolicy(
        max_queue_delay_s=0.0,
        preferred_batch_sizes=preferred,
        priority_levels=len(queues),
        default_priority=default_priority,
        queues=queues,
    )


def row(value: float) -> list[Array]:
    return [np.full((1, 1), value, np.float32)]


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.001)


async def busy_then_queue(
    model: FakeModel, sched: Scheduler, *requests: tuple[float, int, float | None]
) -> tuple[asyncio.Task[Any], list[asyncio.Task[Any]]]:
    """Occupy the one instance with request 0, then queue (value, priority, timeout) requests."""
    model.hold.clear()
    first = asyncio.create_task(sched.submit(row(0), 1))
    await asyncio.wait_for(model.started.wait(), WAIT_S)
    queued = [
        asyncio.create_task(sched.submit(row(value), 1, priority=priority, timeout_s=timeout))
        for value, priority, timeout in requests
    ]
    await until(lambda: sched.queued == len(queued), f"{len(queued)} requests queue")
    return first, queued


async def test_a_lone_request_runs_alone_and_gets_its_outputs() -> None:
    model = FakeModel()
    sched = scheduler(model)
    completed = await sched.submit(row(3), 1)
    assert completed.outputs[0].tolist() == [[6.0]]
    assert model.batches == [[3.0]]
    assert completed.queued_ns <= completed.started_ns <= completed.finished_ns
    await sched.close()


class InlineModel(FakeModel):
    """A FakeModel that says its one-row passes are short: run on the event loop when alone."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_threads: list[str] = []

    def inline(self, rows: int) -> bool:
        return rows == 1

    def forward(self, inputs: Sequence[Array]) -> list[Array]:
        self.inline_threads.append(threading.current_thread().name)
        return [inputs[0] * 2]


async def test_a_lone_short_request_runs_on_the_event_loop_and_a_queued_one_does_not() -> None:
    model = InlineModel()
    sched = Scheduler(
        model.run,
        name="fake",
        max_batch_size=8,
        policy=None,
        instances=1,
        stats=ModelStatistics(),
        inline=model,
    )
    lone = await sched.submit(row(3), 1)
    assert lone.outputs[0].tolist() == [[6.0]]
    assert model.inline_threads == [threading.current_thread().name] and model.batches == []
    model.hold.clear()  # two rows are not measured short: they go to the instance, which stays busy
    busy = asyncio.ensure_future(sched.submit([np.array([[1.0], [2.0]], np.float32)], 2))
    await until(lambda: model.batches == [[1.0, 2.0]], "the instance is busy")
    queued = asyncio.ensure_future(sched.submit(row(5), 1))  # not alone now: it queues
    await until(lambda: sched.queued == 1, "the request queues")
    model.hold.set()
    assert (await busy).outputs[0].tolist() == [[2.0], [4.0]]
    assert (await queued).outputs[0].tolist() == [[10.0]]
    assert len(model.inline_threads) == 1 and model.batches == [[1.0, 2.0], [5.0]]
    await sched.close()


async def test_requests_queued_behind_a_busy_instance_batch_up_to_max_batch_size() -> None:
    model = FakeModel()
    sched = scheduler(model, max_batch_size=4)
    first, queued = await busy_then_queue(model, sched, *((v, 0, None) for v in (1, 2, 3, 4, 5, 6)))
    model.hold.set()
    results = await asyncio.gather(first, *queued)
    assert model.batches == [[0.0], [1.0, 2.0, 3.0, 4.0], [5.0, 6.0]]
    assert [r.outputs[0].tolist() for r in results] == [[[2.0 * v]] for v in range(7)]
    await sched.close()


async def test_a_preferred_size_goes_at_once_and_the_rest_stays_queued() -> None:
    model = FakeModel()
    sched = scheduler(model, policy=batching(preferred=(2,)))
    first, queued = await busy_then_queue(model, sched, (1, 0, None), (2, 0, None), (3, 0, None))
    model.hold.set()
    await asyncio.gather(first, *queued)
    assert model.batches == [[0.0], [1.0, 2.0], [3.0]]
    await sched.close()


async def test_the_higher_priority_level_goes_first() -> None:
    model = FakeModel()
    sched = scheduler(
        model, max_batch_size=1, policy=batching(QueuePolicy(), QueuePolicy(), default_priority=2)
    )
    # Priority 0 means the model's default level (2 here): it waits behind level 1.
    first, queued = await busy_then_queue(model, sched, (1, 2, None), (2, 0, None), (3, 1, None))
    model.hold.set()
    await asyncio.gather(first, *queued)
    assert model.batches == [[0.0], [3.0], [1.0], [2.0]]
    await sched.close()


async def test_a_request_whose_timeout_passes_in_the_queue_is_rejected_and_never_computed() -> None:
    model = FakeModel()
    sched = scheduler(model, policy=batching(QueuePolicy(default_timeout_s=0.01)))
    first, (late,) = await busy_then_queue(model, sched, (1, 0, None))
    with pytest.raises(DeadlineExpired, match=r"model 'fake': request timed out after 10000 µs in the queue"):
        await late
    model.hold.set()
    await first
    assert model.batches == [[0.0]]
    await sched.close()


async def test_delay_puts_a_timed_out_request_behind_those_still_in_time() -> None:
    delay = QueuePolicy(default_timeout_s=60.0, allow_timeout_override=True, reject_on_timeout=False)
    model = FakeModel()
    sched = scheduler(model, max_batch_size=1, policy=batching(delay))
    first, (late,) = await busy_then_queue(model, sched, (1, 0, 0.001))
    await asyncio.sleep(0.05)  # its 1 ms timeout passes: it moves behind
    in_time = asyncio.create_task(sched.submit(row(2), 1))
    await until(lambda: sched.queued == 2, "the second request queues")
    model.hold.set()
    await asyncio.gather(first, late, in_time)
    assert model.batches == [[0.0], [2.0], [1.0]]
    await sched.close()


async def test_a_full_level_answers_queue_full_at_once() -> None:
    model = FakeModel()
    sched = scheduler(model, policy=batching(QueuePolicy(max_queue_size=1)))
    first, queued = await busy_then_queue(model, sched, (1, 0, None))
    with pytest.raises(QueueFull, match=r"model 'fake' queue is full: 1 requests waiting"):
        await sched.submit(row(2), 1)
    model.hold.set()
    await asyncio.gather(first, *queued)
    assert model.batches == [[0.0], [1.0]]
    await sched.close()


async def test_a_poisoned_batch_reruns_each_request_alone_so_only_the_culprit_fails() -> None:
    model = FakeModel()
    sched = scheduler(model)
    first, queued = await busy_then_queue(model, sched, (1, 0, None), (-1, 0, None), (2, 0, None))
    model.hold.set()
    results = await asyncio.gather(first, *queued, return_exceptions=True)
    assert model.batches == [[0.0], [1.0, -1.0, 2.0], [1.0], [-1.0], [2.0]]
    assert results[1].outputs[0].tolist() == [[2.0]]
    assert isinstance(results[2], ModelExecutionError)
    assert str(results[2]) == "poisoned by [-1.0]"
    assert results[3].outputs[0].tolist() == [[4.0]]
    await sched.close()


async def test_close_answers_everything_queued_then_refuses_new_requests() -> None:
    model = FakeModel()
    sched = scheduler(model)
    first, queued = await busy_then_queue(model, sched, (1, 0, None), (2, 0, None))
    closing = asyncio.create_task(sched.close())
    await asyncio.sleep(0.01)
    assert not closing.done()  # still draining: the instance holds its batch
    model.hold.set()
    await asyncio.wait_for(closing, WAIT_S)
    assert all(task.done() and task.exception() is None for task in (first, *queued))
    assert model.batches == [[0.0], [1.0, 2.0]]
    with pytest.raises(ModelUnavailable, match="model 'fake': this version has been unloaded"):
        await sched.submit(row(3), 1)
