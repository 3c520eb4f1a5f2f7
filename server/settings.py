"""One frozen settings object. Each option is declared once, here; CLI flags and TORCHWIRE_* variables
are generated from the fields, and nothing else in the server reads the environment.

Precedence: a CLI flag beats its TORCHWIRE_* variable, which beats the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "TORCHWIRE_"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
ControlMode = Literal["none", "poll", "explicit"]
Readiness = Literal["all", "any"]
EventLoop = Literal["uvloop", "asyncio"]
MetricsNames = Literal["torchwire", "triton", "both"]


def default_threads() -> int:
    """The cores this process may use (its CPU affinity, which container limits narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _opt(default: Any, help: str, *, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class Settings:
    model_repository: Path | None = _opt(
        None, "model repository folder (Triton layout); default: the bundled example models"
    )
    model_control_mode: ControlMode = _opt(
        "none",
        "none: load the repository once; poll: rescan it every --repository-poll-secs; explicit: load "
        "only --load-model models and those RepositoryModelLoad asks for",
    )
    repository_poll_secs: float = _opt(15.0, "seconds between repository scans in poll mode")
    load_model: tuple[str, ...] = _opt(
        (), "model to load at start in explicit mode (repeat the flag; the variable takes a comma list)"
    )
    readiness: Readiness = _opt(
        "all", "all: ready when every model asked for is ready; any: when at least one is"
    )
    host: str = _opt("0.0.0.0", "address to listen on")
    port: int = _opt(8001, "gRPC port (0 picks a free one)")
    http_port: int = _opt(
        8000, "HTTP/REST port of the same v2 protocol, as Triton serves it (0: off; -1: any free port)"
    )
    torch_threads: int = _opt(
        0,
        "torch intra-op threads per model instance (0: the cores this process may use, shared "
        "among a model's instances; a model's INTRA_OP_THREAD_COUNT parameter overrides)",
    )
    inline_forward_us: int = _opt(
        0,
        "opt in: a lone one-row request runs its forward pass on the event loop when that pass took "
        "under this many µs at load (and under twice it since), saving two thread hand-offs; one pass "
        "over ten times it turns this off for the model (0: never; see README Performance)",
    )
    reflection: bool = _opt(True, "serve gRPC server reflection (for grpcurl)")
    tls_cert: Path | None = _opt(None, "PEM server certificate (chain): serve TLS instead of plaintext")
    tls_key: Path | None = _opt(None, "PEM private key of --tls-cert")
    tls_client_ca: Path | None = _opt(
        None, "PEM CA bundle: require client certificates signed by it (mutual TLS)"
    )
    auth_token_file: Path | None = _opt(
        None, "file of accepted bearer tokens, one per line: calls need `authorization: Bearer <token>`"
    )
    auth_health: bool = _opt(False, "require the token for grpc.health.v1 too (Kubernetes probes send none)")
    auth_reflection: bool = _opt(True, "require the token for server reflection")
    max_concurrent_rpcs: int = _opt(
        0, "inference calls (gRPC and HTTP) handled at once; more get RESOURCE_EXHAUSTED or 429 (0: no limit)"
    )
    max_streams: int = _opt(0, "ModelStreamInfer streams open at once (0: no limit)")
    max_tensor_elements: int = _opt(2**26, "elements one input tensor may have")
    max_request_rows: int = _opt(
        0, "rows (batch dimension) one request may carry, beside max_batch_size (0: off)"
    )
    max_string_bytes: int = _opt(1024 * 1024, "bytes one element of a BYTES (string) input may have")
    metrics_port: int = _opt(8002, "HTTP port of Prometheus /metrics (0: off; -1: any free port)")
    metrics_names: MetricsNames = _opt(
        "both",
        "metric names on /metrics: torchwire (torchwire_*), triton (Triton's nv_inference_*, for its "
        "dashboards) or both",
    )
    trace: bool = _opt(False, "OpenTelemetry spans per RPC, with queue and compute children")
    trace_exporter: Literal["none", "console", "otlp"] = _opt(
        "none",
        "where spans go: none (an OpenTelemetry SDK the process set up), console, or otlp (both need "
        "the trace extra; OTEL_EXPORTER_OTLP_* variables configure otlp)",
    )
    log_format: Literal["text", "json"] = _opt("text", "log line format")
    access_log_sample: float = _opt(0.0, "fraction of requests that get an access log line (0..1)")
    max_message_bytes: int = _opt(64 * 1024 * 1024, "largest gRPC message received or sent, in bytes")
    stream_max_in_flight: int = _opt(
        128, "requests in flight per ModelStreamInfer stream; reading pauses at the limit (backpressure)"
    )
    drain_delay_s: float = _opt(
        0.0,
        "seconds to keep accepting after SIGTERM while health says NOT_SERVING (lets load balancers notice)",
    )
    shutdown_grace: float = _opt(10.0, "seconds in-flight requests get to finish on SIGTERM/SIGINT")
    max_connection_age_s: float = _opt(
        0.0, "close client connections after this many seconds so traffic rebalances over replicas (0: never)"
    )
    event_loop: EventLoop = _opt(
        "uvloop",
        "uvloop (libuv-based, the faster here: see README Performance) or asyncio (the standard "
        "library's loop)",
    )
    log_level: LogLevel = _opt("INFO", "log level")
    workers: str = _opt(
        "1",
        "worker processes sharing the port (SO_REUSEPORT), each a whole server; auto: one per core "
        "(see README Workers)",
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads must be >= 0, got {self.torch_threads}")
        if self.inline_forward_us < 0:
            raise ValueError(f"inline_forward_us must be >= 0, got {self.inline_forward_us}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.repository_poll_secs <= 0:
            raise ValueError(f"repository_poll_secs must be > 0, got {self.repository_poll_secs}")
        for name, allowed in (
            ("model_control_mode", ControlMode),
            ("readiness", Readiness),
            ("event_loop", EventLoop),
            ("metrics_names", MetricsNames),
            ("log_level", LogLevel),
            ("trace_exporter", Literal["none", "console", "otlp"]),
            ("log_format", Literal["text", "json"]),
        ):
            if getattr(self, name) not in typing.get_args(allowed):
                raise ValueError(
                    f"{name} must be one of {typing.get_args(allowed)}, got {getattr(self, name)!r}"
                )
        if self.trace_exporter != "none" and not self.trace:
            raise ValueError(
                f"trace_exporter {self.trace_exporter} needs trace on (--trace, TORCHWIRE_TRACE=1): "
                f"without it no span is made, so nothing would be exported"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} is not a file")
        for name in ("max_concurrent_rpcs", "max_streams", "max_request_rows"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_string_bytes < 0:
            raise ValueError(f"max_string_bytes must be >= 0, got {self.max_string_bytes}")
        if self.max_tensor_elements < 1:
            raise ValueError(f"max_tensor_elements must be >= 1, got {self.max_tensor_elements}")
        for name in ("metrics_port", "http_port"):
            if not -1 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be -1..65535, got {getattr(self, name)}")
        if not 0.0 <= self.access_log_sample <= 1.0:
            raise ValueError(f"access_log_sample must be within 0..1, got {self.access_log_sample}")
        if self.stream_max_in_flight < 1:
            raise ValueError(f"stream_max_in_flight must be >= 1, got {self.stream_max_in_flight}")
        if self.drain_delay_s < 0 or self.max_connection_age_s < 0:
            raise ValueError("drain_delay_s and max_connection_age_s must be >= 0")
        if self.shutdown_grace < 0:
            raise ValueError(f"shutdown_grace must be >= 0, got {self.shutdown_grace}")
        if self.workers != "auto" and not (self.workers.isdigit() and int(self.workers) >= 1):
            raise ValueError(f"workers must be a whole number >= 1 or auto, got {self.workers!r}")
        if self.model_repository is not None and not self.model_repository.is_dir():
            raise ValueError(f"model_repository {self.model_repository} is not a folder")

    @property
    def worker_count(self) -> int:
        return default_threads() if self.workers == "auto" else int(self.workers)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    """The concrete type behind `X | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is tuple


def _converter(annotation: Any) -> Any:
    base = _base_type(annotation)
    if _is_list(base):
        return lambda text: tuple(item.strip() for item in text.split(",") if item.strip())
    if base is bool:
        return _parse_bool
    if typing.get_origin(base) is Literal:
        return str
    return base


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field, each documenting its TORCHWIRE_* variable and default."""
    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        annotation = hints[f.name]
        base = _base_type(annotation)
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "none" if default in (None, ()) else default
        text = f"{f.metadata['help']} [env {_env_name(f.name)}; default {shown}]"
        if base is bool:
            parser.add_argument(
                _flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
            continue
        if _is_list(base):
            parser.add_argument(_flag(f.name), dest=f.name, action="append", default=None, help=text)
            continue
        choices = typing.get_args(base) if typing.get_origin(base) is Literal else None
        parser.add_argument(
            _flag(f.name), dest=f.name, type=_converter(annotation), choices=choices, default=None, help=text
        )


def from_sources(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from parsed flags and the environment; unset ones keep their defaults."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(Settings)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            values[f.name] = tuple(flag_value) if isinstance(flag_value, list) else flag_value
        elif _env_name(f.name) in env:
            raw = env[_env_name(f.name)]
            try:
                values[f.name] = _converter(hints[f.name])(raw)
            except ValueError as exc:
                raise ValueError(f"{_env_name(f.name)}={raw!r}: {exc}") from exc
    return Settings(**values)


def parse(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="torchwire serve")
    add_arguments(parser)
    return from_sources(parser.parse_args(list(argv)), env)
