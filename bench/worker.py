"""A load generator worker: a process of its own that keeps `concurrency` requests outstanding.

Each worker is a separate Python process (`python -m torchwire.bench.worker`, started by the pool in
loadgen.py), so the load never shares a GIL with the server or with the parent's progress bar. It
reads typed commands (protocol.py) on stdin and answers each on stdout: `Connect` (a named target
and the pre-serialized request, once per target), then one `Run` per level, or one `Soak`.

Per request the worker does as little as Python gRPC allows: the request is serialized once and
sent as bytes through a generic `unary_unary` with no (de)serializers, and only a sample of the
responses is parsed, to validate them. Unary calls use the sync API's futures with done-callbacks:
measured here against a grpc.aio client (one task per slot), the sync client spent ~120 us of CPU
per request against ~135 us for aio at concurrency 16-64, and had the lower p50 at concurrency 1.

It imports the client and this package's protocol only: never `torchwire.server`, so never torch.
"""

from __future__ import annotations

import collections
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import grpc
import numpy as np

from torchwire.bench.protocol import (
    Connect,
    Connected,
    Failed,
    Measured,
    OutputSpec,
    Reply,
    Run,
    Soak,
    decode,
    encode,
)
from torchwire.bench.rpcerrors import status_of
from torchwire.client import _calls, _codec
from torchwire.client._proto import grpc_service_pb2 as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
DEADLINE_S = 30.0  # a stuck request fails as DEADLINE_EXCEEDED instead of hanging the level
DRAIN_S = DEADLINE_S + 5.0  # after the window: how long the last in-flight requests may take
VALIDATE_EVERY = 1000  # parse the first response of a level and every 1000th after it
MAX_SYNC_DEPTH = 32  # nested immediate completions before re-issuing moves to another thread
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", _calls.DEFAULT_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _calls.DEFAULT_MAX_MESSAGE_BYTES),
    # A failed request is a result to count, not something to retry (retries also buffer each call).
    ("grpc.enable_retries", 0),
]


class Fatal(Exception):
    """The level cannot run at all (e.g. streaming UNIMPLEMENTED); carries the status code name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(slots=True)
class Window:
    """The measured interval, in perf_counter_ns: completions inside it count, warmup comes before."""

    start_ns: int
    measure_from_ns: int
    measure_to_ns: int

    @classmethod
    def from_monotonic(cls, start_at: float, warmup: float, duration: float) -> Window:
        # The parent schedules in time.monotonic() (shared by processes); latencies use perf_counter.
        offset = time.perf_counter_ns() - time.monotonic_ns()
        start = int(start_at * 1e9) + offset
        measure_from = start + int(warmup * 1e9)
        return cls(start, measure_from, measure_from + int(duration * 1e9))

    def wait_for_start(self) -> None:
        delay = (self.start_ns - time.perf_counter_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)


@dataclass(slots=True)
class Tally:
    latencies_ns: list[int] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    problem: str | None = None  # the first invalid response, described
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, code: str, problem: str | None = None) -> None:
        with self.lock:
            self.errors[code] += 1
            if problem and self.problem is None:
                self.problem = problem

    def reply(self) -> Measured:
        return Measured(np.asarray(self.latencies_ns, dtype=np.int64), dict(self.errors), self.problem)


class Validator:
    """Checks a response against the outputs the model declares (names, datatypes, shapes, bytes)."""

    def __init__(self, outputs: Sequence[OutputSpec]) -> None:
        self._expected = {o.name: (o.datatype, o.shape) for o in outputs}

    def problem(self, response: pb.ModelInferResponse) -> str | None:
        names = [t.name for t in response.outputs]
        if sorted(names) != sorted(self._expected):
            return f"outputs {names}, expected {sorted(self._expected)}"
        try:
            arrays = _calls.decode_infer_response(response)  # checks byte counts against shapes
        except _codec.CodecError as exc:
            return str(exc)
        for tensor in response.outputs:
            datatype, shape = self._expected[tensor.name]
            got = tuple(arrays[tensor.name].shape)
            if tensor.datatype != datatype:
                return f"output '{tensor.name}' is {tensor.datatype}, expected {datatype}"
            if len(got) != len(shape) or any(s >= 0 and g != s for g, s in zip(got, shape, strict=True)):
                return f"output '{tensor.name}' has shape {list(got)}, expected {list(shape)}"
        return None

    def problem_in(self, raw: bytes) -> str | None:
        try:
            return self.problem(pb.ModelInferResponse.FromString(raw))
        except Exception as exc:  # an unparsable body is exactly what validation is for
            return f"unparsable ModelInferResponse: {exc}"


class UnaryLoop:
    """`concurrency` unary calls outstanding: each completion (in grpc's callback thread) re-issues."""

    def __init__(
        self,
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes],
        request: bytes,
        concurrency: int,
        window: Window,
        validator: Validator,
    ) -> None:
        self._call = call
        self._request = request
        self._window = window
        self._validator = validator
        self._tally = Tally()
        self._ok = 0
        self._outstanding = concurrency
        self._concurrency = concurrency
        self._outstanding_lock = threading.Lock()
        self._finished = threading.Event()
        self._depth = threading.local()
        self._deferred: collections.deque[None] = collections.deque()
        self._deferred_ready = threading.Event()

    @property
    def tally(self) -> Tally:
        """What the loop has counted so far: a soak reads it while the loop runs."""
        return self._tally

    def run(self) -> Tally:
        self._window.wait_for_start()
        helper = threading.Thread(target=self._issue_deferred, daemon=True)
        helper.start()
        for _ in range(self._concurrency):
            self._issue()
        finished = self._finished.wait(
            timeout=DRAIN_S + (self._window.measure_to_ns - time.perf_counter_ns()) / 1e9
        )
        self._deferred_ready.set()  # lets the helper see that the level is over
        if not finished:
            raise Fatal(
                "DEADLINE_EXCEEDED", f"{self._outstanding} requests still outstanding after the level"
            )
        return self._tally

    def _issue(self) -> None:
        sent = time.perf_counter_ns()
        future = self._call.future(self._request, timeout=DEADLINE_S)
        future.add_done_callback(lambda done: self._finish(done, sent))

    def _finish(self, future: Any, sent: int) -> None:
        now = time.perf_counter_ns()
        window = self._window
        if window.measure_from_ns <= now <= window.measure_to_ns:
            code = future.code()
            if code is grpc.StatusCode.OK:
                self._ok += 1
                problem = (
                    self._validator.problem_in(future.result()) if self._ok % VALIDATE_EVERY == 1 else None
                )
                if problem is None:
                    self._tally.latencies_ns.append(now - sent)
                else:
                    self._tally.error("INVALID_RESPONSE", problem)
            else:
                self._tally.error(code.name)
        if now >= window.measure_to_ns:
            with self._outstanding_lock:
                self._outstanding -= 1
                if self._outstanding == 0:
                    self._finished.set()
            return
        # A call that fails at once can complete inside add_done_callback, which then calls us on
        # the same stack: past a few levels, hand the re-issue to the helper thread instead.
        depth = getattr(self._depth, "value", 0)
        if depth >= MAX_SYNC_DEPTH:
            self._deferred.append(None)
            self._deferred_ready.set()
            return
        self._depth.value = depth + 1
        try:
            self._issue()
        finally:
            self._depth.value = depth

    def _issue_deferred(self) -> None:
        while not self._finished.is_set():
            self._deferred_ready.wait()
            self._deferred_ready.clear()
            while self._deferred:
                self._deferred.popleft()
                self._issue()


class StreamLoop:
    """One ModelStreamInfer stream with `concurrency` requests in flight, refilled on each response.

    Each in-flight slot has its own pre-serialized request whose `id` is the slot number (appending
    a serialized field to a message overrides it), so responses are matched without building messages.
    """

    def __init__(
        self,
        call: grpc.StreamStreamMultiCallable[bytes, bytes],
        request: bytes,
        concurrency: int,
        window: Window,
        validator: Validator,
    ) -> None:
        self._call = call
        self._slots = [
            request + pb.ModelInferRequest(id=str(i)).SerializeToString() for i in range(concurrency)
        ]
        self._window = window
        self._validator = validator
        self._tally = Tally()
        self._queue: collections.deque[bytes | None] = collections.deque()
        self._queued = threading.Condition()

    def _requests(self) -> Iterator[bytes]:
        while True:
            with self._queued:
                while not self._queue:
                    self._queued.wait()
                item = self._queue.popleft()
            if item is None:
                return
            yield item

    def _send(self, item: bytes | None) -> None:
        with self._queued:
            self._queue.append(item)
            self._queued.notify()

    @property
    def tally(self) -> Tally:
        """What the loop has counted so far: a soak reads it while the loop runs."""
        return self._tally

    def run(self) -> Tally:
        window, tally = self._window, self._tally
        responses = self._call(self._requests())
        window.wait_for_start()
        in_flight: dict[int, int] = {}
        for slot, request in enumerate(self._slots):
            in_flight[slot] = time.perf_counter_ns()
            self._send(request)
        ok = 0
        ended = False
        try:
            for raw in responses:
                now = time.perf_counter_ns()
                message = pb.ModelStreamInferResponse.FromString(raw)
                slot = _slot_of(message, in_flight)
                sent = in_flight.pop(slot)
                if window.measure_from_ns <= now <= window.measure_to_ns:
                    if message.error_message:
                        tally.error("STREAM_ERROR", message.error_message)
                    else:
                        ok += 1
                        problem = (
                            self._validator.problem(message.infer_response)
                            if ok % VALIDATE_EVERY == 1
                            else None
                        )
                        if problem is None:
                            tally.latencies_ns.append(now - sent)
                        else:
                            tally.error("INVALID_RESPONSE", problem)
                if now < window.measure_to_ns:
                    in_flight[slot] = time.perf_counter_ns()
                    self._send(self._slots[slot])
                elif not in_flight:
                    ended = True
                    break
        except grpc.RpcError as exc:
            code, details = status_of(exc)
            raise Fatal(code.name, details or str(exc) or "the stream failed") from exc
        finally:
            self._close(responses, graceful=ended)
        if in_flight:
            raise Fatal("UNKNOWN", f"the server closed the stream with {len(in_flight)} requests unanswered")
        return tally

    def _close(self, responses: Any, *, graceful: bool) -> None:
        """Half-close so the server ends the stream cleanly; cancel only if it does not, or on failure."""
        self._send(None)
        if graceful:
            closed = threading.Event()
            responses.add_done_callback(lambda _: closed.set())
            if closed.wait(timeout=5.0):
                return
        responses.cancel()


def _slot_of(message: pb.ModelStreamInferResponse, in_flight: dict[int, int]) -> int:
    slot_id = message.infer_response.id
    if slot_id.isdigit() and int(slot_id) in in_flight:
        return int(slot_id)
    # An error response may carry no id: charge it to the oldest request still in flight.
    return min(in_flight, key=in_flight.__getitem__)


@dataclass(slots=True)
class Connection:
    """One target a worker can load: its channel, the request to send and how to check answers."""

    channel: grpc.Channel
    request: bytes
    validator: Validator
    streaming: bool


class Worker:
    """Holds a connection per named target, so levels can alternate between targets cheaply."""

    def __init__(self) -> None:
        self._connections: dict[str, Connection] = {}

    def connect(self, command: Connect) -> Connected:
        old = self._connections.pop(command.name, None)
        if old is not None:
            old.channel.close()
        channel = grpc.insecure_channel(command.target, options=CHANNEL_OPTIONS)
        try:
            grpc.channel_ready_future(channel).result(timeout=command.timeout)
        except grpc.FutureTimeoutError:
            channel.close()
            raise Fatal("UNAVAILABLE", f"could not connect to {command.target}") from None
        self._connections[command.name] = Connection(
            channel, command.request, Validator(command.outputs), command.streaming
        )
        return Connected()

    def run(self, command: Run) -> Measured:
        connection = self._connections[command.name]
        window = Window.from_monotonic(command.start_at, command.warmup, command.duration)
        concurrency = command.concurrency
        if concurrency == 0:
            return Tally().reply()
        channel, request, validator = connection.channel, connection.request, connection.validator
        if connection.streaming:
            stream = channel.stream_stream(STREAM_INFER, request_serializer=None, response_deserializer=None)
            tally = StreamLoop(stream, request, concurrency, window, validator).run()
        else:
            unary = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
            tally = UnaryLoop(unary, request, concurrency, window, validator).run()
        return tally.reply()

    def soak(self, command: Soak, emit: Callable[[Reply], None]) -> Measured:
        """Unary and streaming loops at once, from `start_at` to the last of `boundaries`.

        At each boundary (time.monotonic()) it reports what completed since the previous one: every
        boundary but the last is emitted as it passes; the last is the reply, sent once the loops
        have drained, so that it holds everything that completed up to the end.
        """
        start_at, boundaries = command.start_at, command.boundaries
        window = Window.from_monotonic(start_at, 0.0, boundaries[-1] - start_at)
        loops: list[UnaryLoop | StreamLoop] = []
        name, slots = command.unary
        if slots:
            connection = self._connections[name]
            unary = connection.channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
            loops.append(UnaryLoop(unary, connection.request, slots, window, connection.validator))
        name, streams = command.streams
        for slots in streams:
            connection = self._connections[name]
            stream = connection.channel.stream_stream(
                STREAM_INFER, request_serializer=None, response_deserializer=None
            )
            loops.append(StreamLoop(stream, connection.request, slots, window, connection.validator))
        slicer = _Slicer(loops)
        threads = [threading.Thread(target=slicer.run, args=(loop,), daemon=True) for loop in loops]
        for thread in threads:
            thread.start()
        for boundary in boundaries[:-1]:
            time.sleep(max(0.0, boundary - time.monotonic()))
            emit(slicer.take())
        give_up = time.monotonic() + DRAIN_S + 5.0
        for thread in threads:
            thread.join(timeout=max(0.0, give_up - time.monotonic()))
            if thread.is_alive():  # a stream the server neither answers nor ends
                late = f"a loop was still running {DRAIN_S:.0f} s after the end"
                slicer.fail(Fatal("DEADLINE_EXCEEDED", late))
        return slicer.take()


class _Slicer:
    """Cuts the live tallies of a soak's loops into consecutive slices (one per boundary)."""

    def __init__(self, loops: Sequence[UnaryLoop | StreamLoop]) -> None:
        self._loops = list(loops)
        self._taken = [0] * len(self._loops)  # latencies already reported, per loop
        self._errors: collections.Counter[str] = collections.Counter()  # already reported
        self._failures: collections.Counter[str] = collections.Counter()  # loops that stopped early
        self._problem: str | None = None
        self._lock = threading.Lock()

    def run(self, loop: UnaryLoop | StreamLoop) -> None:
        try:
            loop.run()
        except Fatal as exc:  # e.g. a stream the server broke off: its slots are lost, and counted
            self.fail(exc)
        except Exception as exc:  # anything else is counted too, never a silently dead thread
            self.fail(Fatal("INTERNAL", f"{type(exc).__name__}: {exc}"))

    def fail(self, exc: Fatal) -> None:
        with self._lock:
            self._failures[exc.code] += 1
            self._problem = self._problem or f"a load loop stopped: {exc}"

    def take(self) -> Measured:
        latencies: list[int] = []
        ok = {"unary_ok": 0, "stream_ok": 0}
        errors: collections.Counter[str] = collections.Counter()
        problem: str | None = None
        for index, loop in enumerate(self._loops):
            tally = loop.tally
            done = len(tally.latencies_ns)  # appended by other threads: read up to a fixed length
            fresh = tally.latencies_ns[self._taken[index] : done]
            self._taken[index] = done
            latencies.extend(fresh)
            ok["stream_ok" if isinstance(loop, StreamLoop) else "unary_ok"] += len(fresh)
            with tally.lock:
                errors.update(tally.errors)
                problem = problem or tally.problem
        with self._lock:
            errors.update(self._failures)
            problem = problem or self._problem
        fresh_errors = errors - self._errors
        self._errors = errors
        return Measured(
            np.asarray(latencies, dtype=np.int64),
            dict(fresh_errors),
            problem,
            ok["unary_ok"],
            ok["stream_ok"],
        )


def worker_main(stdin: IO[str], stdout: IO[str]) -> int:
    # Ctrl-C belongs to the parent, which stops the workers in order (closing stdin ends us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = Worker()

    def emit(reply: Reply) -> None:
        stdout.write(encode(reply))
        stdout.flush()

    for line in stdin:  # the pool closing our stdin ends the worker
        command = decode(line)
        reply: Reply
        try:
            if isinstance(command, Connect):
                reply = worker.connect(command)
            elif isinstance(command, Run):
                reply = worker.run(command)
            elif isinstance(command, Soak):
                reply = worker.soak(command, emit)
            else:
                return 0
        except Fatal as exc:
            reply = Failed(exc.code, exc.message)
        emit(reply)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.stdin, sys.stdout))
