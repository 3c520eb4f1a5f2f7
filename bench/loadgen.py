"""The load generator's pool: worker processes (worker.py) kept for the whole run, each given its
share of the concurrency through typed commands (protocol.py); their replies summed into a Sample
per level or a SoakSlice per soak interval.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np
import numpy.typing as npt

from .protocol import Command, Connect, Failed, Measured, OutputSpec, Reply, Run, Soak, decode, encode

WORKER = f"{__package__}.worker"  # run as a module: it imports the client, never the server (torch)


class LoadError(RuntimeError):
    """A level could not run; `code` is the gRPC status name (e.g. UNIMPLEMENTED)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Sample:
    """Everything one level measured, over every worker."""

    concurrency: int
    duration_s: float
    latencies_ns: npt.NDArray[np.int64]  # one per successful request completed in the window
    errors: dict[str, int]  # by status code name (INVALID_RESPONSE: a response that failed validation)
    problem: str | None  # the first invalid response, described


@dataclass(frozen=True, slots=True)
class SoakSlice:
    """What completed in one interval of a soak, over every worker."""

    latencies_ns: npt.NDArray[np.int64]  # one per successful request
    unary_ok: int
    stream_ok: int
    errors: dict[str, int]  # by status code name; STREAM_ERROR: a stream response with error_message
    problem: str | None  # the first invalid response or failed loop, described


def split(concurrency: int, workers: int) -> list[int]:
    """`concurrency` slots over `workers` processes, as evenly as possible."""
    base, extra = divmod(concurrency, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


class WorkerPool:
    """N worker processes, kept for the whole run (a Python start per level would cost seconds)."""

    def __init__(self, workers: int) -> None:
        self._logs: list[IO[bytes]] = []
        self._procs: list[subprocess.Popen[str]] = []
        try:
            for _ in range(workers):
                log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close(), after the worker)
                self._logs.append(log)
                self._procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", WORKER],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        text=True,
                    )
                )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, proc: subprocess.Popen[str], command: Command) -> None:
        assert proc.stdin is not None
        proc.stdin.write(encode(command))
        proc.stdin.flush()

    def _receive(self, index: int) -> Reply:
        proc = self._procs[index]
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            log = self._logs[index]
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise LoadError("INTERNAL", f"load generator worker {index} exited:\n{tail}")
        reply = decode(line)
        if isinstance(reply, Failed):
            raise LoadError(reply.code, reply.message)
        if isinstance(reply, Command):
            raise LoadError("INTERNAL", f"load generator worker {index} answered with a command: {reply}")
        return reply

    def connect(
        self, name: str, target: str, request: bytes, outputs: Sequence[OutputSpec], streaming: bool
    ) -> None:
        """Every worker opens a channel to `target`, known by `name` to `start`, and waits until ready."""
        command = Connect(name, target, request, tuple(outputs), streaming)
        for proc in self._procs:
            self._send(proc, command)
        for index in range(len(self._procs)):
            self._receive(index)

    def start(self, name: str, concurrency: int, start_at: float, warmup: float, duration: float) -> None:
        """Every worker loads target `name` with its share from `start_at` (time.monotonic()).

        Call `collect` next for the results.
        """
        self._level = (concurrency, duration)
        for proc, share in zip(self._procs, split(concurrency, len(self._procs)), strict=True):
            self._send(proc, Run(name, share, start_at, warmup, duration))

    def _replies(self) -> list[Measured]:
        """One reply from every worker; the first failure is raised only after all have been read,
        so the pipes stay in step for the next round."""
        replies: list[Measured] = []
        failure: LoadError | None = None
        for index in range(len(self._procs)):
            try:
                reply = self._receive(index)
                if not isinstance(reply, Measured):
                    raise LoadError("INTERNAL", f"load generator worker {index} answered {reply}")
                replies.append(reply)
            except LoadError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return replies

    def collect(self) -> Sample:
        concurrency, duration = self._level
        latencies: list[npt.NDArray[np.int64]] = []
        errors: collections.Counter[str] = collections.Counter()
        problem: str | None = None
        for reply in self._replies():
            latencies.append(reply.latencies_ns)
            errors.update(reply.errors)
            problem = problem or reply.problem
        return Sample(concurrency, duration, np.concatenate(latencies), dict(errors), problem)

    def start_soak(
        self,
        unary: tuple[str, int],
        streams: tuple[str, Sequence[int]],
        start_at: float,
        boundaries: list[float],
    ) -> None:
        """Every worker runs its share of a soak from `start_at` (time.monotonic()) to the last boundary.

        `unary`: a connection's name and the unary calls to keep in flight; `streams`: a streaming
        connection's name and the requests in flight on each of its streams. Call `soak_slice` once
        per boundary, in order, for the results.
        """
        workers = len(self._procs)
        unary_name, unary_slots = unary
        stream_name, stream_slots = streams
        for index, (proc, share) in enumerate(zip(self._procs, split(unary_slots, workers), strict=True)):
            mine = list(stream_slots)[index::workers]
            self._send(
                proc, Soak((unary_name, share), (stream_name, tuple(mine)), start_at, tuple(boundaries))
            )

    def soak_slice(self) -> SoakSlice:
        """The next boundary's slice, summed over every worker; blocks until each has sent it."""
        latencies: list[npt.NDArray[np.int64]] = []
        ok = [0, 0]
        errors: collections.Counter[str] = collections.Counter()
        problem: str | None = None
        for reply in self._replies():
            latencies.append(reply.latencies_ns)
            ok[0] += reply.unary_ok
            ok[1] += reply.stream_ok
            errors.update(reply.errors)
            problem = problem or reply.problem
        return SoakSlice(np.concatenate(latencies), ok[0], ok[1], dict(errors), problem)

    def close(self) -> None:
        for proc in self._procs:
            if proc.stdin is not None and not proc.stdin.closed:
                with contextlib.suppress(OSError):  # a worker that died has closed its end
                    proc.stdin.close()  # EOF: the worker returns from its command loop
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for log in self._logs:
            log.close()
        self._procs.clear()
        self._logs.clear()
