"""Instance threads: where forward passes run, so the event loop never waits on torch.

Each instance is one long-lived thread with its own intra-op thread count (OpenMP's team size is
per calling thread). Work reaches it through a C-implemented `queue.SimpleQueue`, and the result
goes back with one `call_soon_threadsafe`. That is all `run_in_executor` does too, minus the
concurrent.futures Future, its chaining to an asyncio Future, and the executor's semaphore and
locks: under load those cost the event loop thread about a tenth of its time per request here,
and the loop thread is what bounds throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import torch

Work = TypeVar("Work")
Result = TypeVar("Result")


def _settle(future: asyncio.Future[Result], result: Result | None, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]  # None only when error is set


class Instances(Generic[Work, Result]):
    """`count` threads calling `task(work)`, each with `threads` intra-op threads. Each thread first
    calls `prepare()` (a warmup): its own OpenMP team is the one that will serve, so that is the
    team to warm. `wait_prepared` reports how that went."""

    def __init__(
        self,
        task: Callable[[Work], Result],
        *,
        count: int,
        threads: int,
        name: str,
        prepare: Callable[[], object] | None = None,
    ) -> None:
        self._task = task
        self._threads_each = threads
        self._prepare = prepare
        self._prepared: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._queue: queue.SimpleQueue[tuple[Work, asyncio.Future[Result], asyncio.AbstractEventLoop] | None]
        self._queue = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True) for i in range(count)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, work: Work) -> asyncio.Future[Result]:
        """Queue `work` for the next free instance; the future completes on the caller's loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.put((work, future, loop))
        return future

    def wait_prepared(self) -> None:
        """Blocking: until every thread has run `prepare`; raises the first thread's error, if any."""
        errors = [self._prepared.get() for _ in self._workers]
        for error in errors:
            if error is not None:
                raise error

    def _serve(self) -> None:
        torch.set_num_threads(self._threads_each)
        failed: BaseException | None = None
        try:
            if self._prepare is not None:
                self._prepare()
        except BaseException as exc:  # reported by wait_prepared, on the loading thread
            failed = exc
        self._prepared.put(failed)
        while (item := self._queue.get()) is not None:
            work, future, loop = item
            result: Result | None = None
            error: BaseException | None = None
            try:
                result = self._task(work)
            except BaseException as exc:  # delivered to the awaiting request, never lost here
                error = exc
            # A loop that closed meanwhile has nobody left to answer; the thread lives on.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, result, error)

    def close(self) -> None:
        """Finish the queued work, then stop every thread."""
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join()
