"""The options of `torchwire bench` and `torchwire soak`, each declared once, as `serve`'s are in
server/settings.py: a field holds its flag's help, default and argparse details, how its text is read
and the rule it must meet. The flags and the checked options are both generated from the fields.

What both commands take is declared once in `RunOptions`; each command adds or narrows its own.
This module imports nothing the bench extra adds: `torchwire serve` builds its parser from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import workload
from .loadgen import split

MAX_SOAK_S = 24 * 3600.0  # bounded: a day at most
MAX_SOAK_CONCURRENCY = 1024
REQUIRED: Any = None  # with `required=True` in the flag: argparse refuses a run without it


def option(
    default: Any,
    help: str,
    *,
    flag: dict[str, Any] | None = None,
    read: Callable[[Any], Any] | None = None,
    rule: Callable[[Any], bool] | None = None,
    problem: str = "",
    name: str = "",
    aliases: tuple[str, ...] = (),
) -> Any:
    """One option: `read` turns the flag's value into the field's (raising ValueError naming it),
    `rule` must then hold, else `problem` is the error (`{}`: the value, `{flag}`: the flag); `name`
    is the flag when not the field's; `aliases` are older flags that still work."""
    metadata = {
        "help": help,
        "flag": flag or {},
        "read": read,
        "rule": rule,
        "problem": problem,
        "name": name,
        "aliases": aliases,
    }
    return field(default=default, metadata=metadata)


def number(
    default: float,
    help: str,
    *,
    kind: type[int] | type[float] = float,
    above: float | None = None,
    least: float | None = None,
    most: float | None = None,
) -> Any:
    """A numeric option whose rule is a range: `> above` or `>= least`, and `<= most`."""
    bounds = [f"> {above:g}" if above is not None else f">= {least:g}"]
    if most is not None:
        bounds.append(f"<= {most:.0f}")

    def rule(value: float) -> bool:
        return (
            (above is None or value > above)
            and (least is None or value >= least)
            and (most is None or value <= most)
        )

    return option(
        default, help, flag={"type": kind}, rule=rule, problem="{flag} must be " + " and ".join(bounds)
    )


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"--concurrency {text!r}: expected numbers like 1,4,16,64") from exc


def _shapes(texts: Sequence[str]) -> workload.Shapes:
    return dict(workload.parse_shape(text) for text in texts)


def _binary(name: str | None) -> str | None:
    if name is None:
        return None
    found = shutil.which(name)
    if found is None:
        raise ValueError(f"--perf-analyzer {name}: not an executable (README Performance: how to get one)")
    return found


def check_loopback(target: str) -> None:
    """The soak loads loopback only: a HOST:PORT whose host is localhost or a loopback address."""
    host, sep, port = target.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not port.isdigit():
        raise ValueError(f"--target {target!r}: expected HOST:PORT")
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"--target {target!r}: the soak runs against loopback only (127.0.0.1, [::1], localhost)"
        )


def _loopback(target: str | None) -> str | None:
    if target is not None:
        check_loopback(target)
    return target


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """What bench and soak both take, with the same meaning and defaults."""

    model: str = option(REQUIRED, "model to load (its metadata shapes the request)", flag={"required": True})
    target: str | None = option(
        None, "HOST:PORT of a running server (default: start one on a free loopback port)"
    )
    batch: int = number(1, "rows per request [1]", kind=int, least=1)
    shapes: workload.Shapes = option(
        (),
        "an input's dims without the batch dimension, as perf_analyzer's --shape; repeatable "
        "[variable dims: 1]",
        flag={"action": "append", "metavar": "NAME:D1,D2"},
        read=_shapes,
        name="shape",
    )
    repository: Path | None = option(
        None,
        "model repository, as for `torchwire serve` (default: the bundled examples); for bench it also "
        "locates the model file for the in-process ceiling when --target is given",
        flag={"type": Path},
        rule=lambda v: v is None or v.is_dir(),
        problem="{flag} {} is not a folder",
        name="model_repository",
        aliases=("--repository",),
    )
    workers: int = number(1, "load generator processes sharing the concurrency [1]", kind=int, least=1)
    torch_threads: int | None = option(
        None,
        "passed to `torchwire serve` (and used in-process by bench) [server default]",
        flag={"type": int},
        rule=lambda v: v is None or v >= 1,
        problem="--torch-threads must be >= 1",
    )
    out: Path = option(Path("bench-results"), "results folder [bench-results]", flag={"type": Path})
    start_timeout: float = option(
        120.0, "seconds to wait for the server to be ready [120]", flag={"type": float}
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchOptions(RunOptions):
    concurrency: tuple[int, ...] = option(
        "1,4,16,64",
        "comma-separated levels [default 1,4,16,64]",
        read=_levels,
        rule=lambda v: bool(v) and min(v) >= 1,
        problem="--concurrency levels must be >= 1",
    )
    duration: float = number(5.0, "measured seconds per level [default 5]", above=0)
    warmup: float = number(1.0, "unmeasured seconds before each level [1]", least=0)
    streaming: bool = option(False, "ModelStreamInfer: one stream per worker", flag={"action": "store_true"})
    perf_analyzer: str | None = option(
        None,
        "drive both servers with Triton's perf_analyzer at PATH instead of the Python load generator "
        "(each level runs until 3 windows of DURATION agree; --warmup and --workers do not apply)",
        flag={"metavar": "PATH"},
        read=_binary,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakOptions(RunOptions):
    target: str | None = option(
        None, "HOST:PORT of a running server on loopback (RSS is then n/a)", read=_loopback
    )
    duration: float = number(60.0, "seconds after warmup [60]", above=0, most=MAX_SOAK_S)
    warmup: float = number(30.0, "seconds before RSS growth counts [30]", least=0, most=MAX_SOAK_S)
    interval: float = number(10.0, "seconds per reported interval [10]", above=0)
    concurrency: int = option(
        32,
        "requests in flight in all [32]",
        flag={"type": int},
        rule=lambda v: 1 <= v <= MAX_SOAK_CONCURRENCY,
        problem=f"--concurrency must be 1 to {MAX_SOAK_CONCURRENCY}",
    )
    stream_share: float = option(
        0.25,
        "share of the concurrency on streams [0.25]",
        flag={"type": float},
        rule=lambda v: 0.0 <= v <= 1.0,
        problem="--stream-share must be between 0 and 1",
    )
    streams: int = number(2, "ModelStreamInfer streams that share it [2]", kind=int, least=1)

    @property
    def stream_slots(self) -> list[int]:
        """Requests in flight on each stream: the stream share of the concurrency, over --streams."""
        total = round(self.concurrency * self.stream_share)
        if self.stream_share > 0:
            total = max(1, total)
        if self.stream_share < 1:
            total = min(total, self.concurrency - 1)  # a share below 1 leaves room for unary calls
        return split(total, min(self.streams, total)) if total else []

    @property
    def unary_slots(self) -> int:
        return self.concurrency - sum(self.stream_slots)


Options = TypeVar("Options", bound=RunOptions)


def _flag(f: dataclasses.Field[Any]) -> str:
    return "--" + (f.metadata["name"] or f.name).replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, options: type[RunOptions]) -> None:
    """One flag per field of `options`."""
    for f in dataclasses.fields(options):
        appends = f.metadata["flag"].get("action") == "append"
        default: Any = f.default
        if appends:
            default = list(default)  # a fresh list for argparse to append to
        parser.add_argument(
            _flag(f),
            *f.metadata["aliases"],
            dest=f.name,
            default=default,
            help=f.metadata["help"],
            **f.metadata["flag"],
        )


def from_args(options: type[Options], args: argparse.Namespace) -> Options:
    """The checked options from parsed flags; ValueError names the first that is wrong."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        value = getattr(args, f.name)
        if f.metadata["read"] is not None:
            value = f.metadata["read"](value)
        rule = f.metadata["rule"]
        if rule is not None and not rule(value):
            raise ValueError(f.metadata["problem"].format(value, flag=_flag(f)))
        values[f.name] = value
    return options(**values)
