"""The messages between the load generator's pool (loadgen.py) and its workers (worker.py): typed
commands down, typed replies up, one JSON object per line on the worker's stdin and stdout.

The pool sends `Connect` once per named target, then a `Run` per level or one `Soak`; a worker
answers each with one reply (a `Soak` with one `Measured` per interval boundary), or `Failed` when
the command could not run at all.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """An output the model declares: what a response is validated against."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 matches any size


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a channel to `target`, known as `name` from then on, and wait until it is ready."""

    name: str
    target: str
    request: bytes  # the serialized ModelInferRequest every call sends
    outputs: tuple[OutputSpec, ...]
    streaming: bool
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Run:
    """Keep `concurrency` requests in flight against `name` from `start_at` (time.monotonic())."""

    name: str
    concurrency: int
    start_at: float
    warmup: float
    duration: float


@dataclass(frozen=True, slots=True)
class Soak:
    """Unary calls and streams at once, from `start_at` to the last boundary; a reply per boundary."""

    unary: tuple[str, int]  # a connection's name, the unary calls to keep in flight
    streams: tuple[str, tuple[int, ...]]  # a streaming connection's name, requests in flight per stream
    start_at: float
    boundaries: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Connected:
    pass


@dataclass(frozen=True, slots=True)
class Measured:
    """What completed: a level's window, or a soak's interval."""

    latencies_ns: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    errors: dict[str, int] = field(default_factory=dict)  # by status code name
    problem: str | None = None  # the first invalid response or failed loop, described
    unary_ok: int = 0  # soak only: successes by kind of call
    stream_ok: int = 0


@dataclass(frozen=True, slots=True)
class Failed:
    """The command could not run at all (e.g. streaming UNIMPLEMENTED); `code` is a status name."""

    code: str
    message: str


Command = Connect | Run | Soak
Reply = Connected | Measured | Failed
_TYPES: dict[str, type[Any]] = {t.__name__: t for t in (Connect, Run, Soak, Connected, Measured, Failed)}


def encode(message: Command | Reply) -> str:
    """One line of JSON; bytes and latency arrays travel as base64."""
    body: dict[str, Any] = {"type": type(message).__name__}
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        elif isinstance(value, np.ndarray):
            value = base64.b64encode(value.astype(np.int64).tobytes()).decode("ascii")
        elif f.name == "outputs":
            value = [dataclasses.asdict(o) for o in value]
        body[f.name] = value
    return json.dumps(body) + "\n"


def decode(line: str) -> Command | Reply:
    body = json.loads(line)
    kind = _TYPES[body.pop("type")]
    if kind is Connect:
        body["request"] = base64.b64decode(body["request"])
        body["outputs"] = tuple(
            OutputSpec(o["name"], o["datatype"], tuple(o["shape"])) for o in body["outputs"]
        )
    elif kind is Measured:
        body["latencies_ns"] = np.frombuffer(base64.b64decode(body["latencies_ns"]), dtype=np.int64)
    elif kind is Soak:
        body["unary"] = (body["unary"][0], body["unary"][1])
        body["streams"] = (body["streams"][0], tuple(body["streams"][1]))
        body["boundaries"] = tuple(body["boundaries"])
    message: Command | Reply = kind(**body)
    return message
