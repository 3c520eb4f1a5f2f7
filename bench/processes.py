"""The servers a benchmark starts: `torchwire serve` and the bare server, each a subprocess.

A subprocess, never a thread: the load generator must not share a GIL with what it measures.
Each is a context manager that always stops its process (SIGTERM, then kill), on errors and
Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .rpcerrors import status_of

STOP_TIMEOUT_S = 15.0  # SIGTERM first (torchwire drains), kill after this
READINESS = "readiness"  # torchwire's health service name for "models loaded"
BARE_SERVER = f"{__package__}.bare_server"  # a module of this package: a wheel has it too
BARE_UNARY_THREADS = 4  # bare_server.py's default --threads


class StartError(RuntimeError):
    """A server did not come up; the message carries the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(log: IO[bytes], limit: int = 3000) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-limit:]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _managed(
    command: Sequence[str], *, stdout: int | None = None, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], IO[bytes]]]:
    # The log is a file, not a pipe: a chatty server can never block on a full pipe nobody reads.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(list(command), stdout=stdout, stderr=log, env=env)
        try:
            yield proc, log
        finally:
            stop(proc)


def wait_serving(target: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll grpc.health.v1 Check("readiness") until SERVING; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        last = "no answer yet"
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise StartError(f"the server exited with code {proc.returncode} before it was ready")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=READINESS), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                code, _ = status_of(exc)
                last = code.name if code is not grpc.StatusCode.UNKNOWN else str(exc)
            time.sleep(0.2)
    raise StartError(f"{target} was not ready within {timeout:.0f} s (health: {last})")


@dataclass(frozen=True, slots=True)
class Spawned:
    """A started `torchwire serve`: where to call it, and its process id (to read its memory)."""

    target: str
    pid: int


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU a process has used so far, from /proc (None where it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def torchwire_process(
    repository: Path | None, *, torch_threads: int | None, timeout: float
) -> Iterator[Spawned]:
    """`torchwire serve` on a free 127.0.0.1 port, once health says ready: its target and pid."""
    port = free_port()
    command = [sys.executable, "-m", "torchwire.server", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if repository is not None:
        command += ["--model-repository", str(repository)]
    if torch_threads:
        command += ["--torch-threads", str(torch_threads)]
    # Metrics stay on as by default (their cost is part of serving), on a free port so that a
    # server already running here cannot make this one fail. An unknown variable is ignored.
    env = {**os.environ, "TORCHWIRE_METRICS_PORT": "-1"}
    with _managed(command, env=env) as (proc, log):
        target = f"127.0.0.1:{port}"
        try:
            wait_serving(target, timeout, proc)
        except StartError as exc:
            raise StartError(f"torchwire serve did not start: {exc}\n{_tail(log)}") from exc
        yield Spawned(target, proc.pid)


class ServerChoice(Protocol):
    """The options that pick a run's server (bench and soak both have them)."""

    @property
    def target(self) -> str | None: ...
    @property
    def repository(self) -> Path | None: ...
    @property
    def torch_threads(self) -> int | None: ...
    @property
    def start_timeout(self) -> float: ...


@contextlib.contextmanager
def serving(choice: ServerChoice, announce: Callable[[str], object]) -> Iterator[tuple[str, int | None]]:
    """The server a run loads: `--target` once it serves, else a `torchwire serve` started (and
    always stopped) here. Yields its address and, when started here, its process id."""
    if choice.target is not None:
        wait_serving(choice.target, choice.start_timeout)
        yield choice.target, None
        return
    announce(f"starting torchwire serve ({choice.repository or 'bundled models'}) ...")
    with torchwire_process(
        choice.repository, torch_threads=choice.torch_threads, timeout=choice.start_timeout
    ) as spawned:
        yield spawned.target, spawned.pid


def resident_bytes(pid: int) -> int | None:
    """A process's resident set size (VmRSS in /proc/<pid>/status); None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None  # a zombie has no VmRSS line


@contextlib.contextmanager
def bare_server(
    outputs: Sequence[str],
    *,
    streams: int = 0,
    timeout: float = 30.0,
    describe: Path | None = None,
    aio: bool = False,
) -> Iterator[str]:
    """The bare server (torchwire.bench.bare_server) answering with `outputs` (NAME:DATATYPE:DIMS);
    yields its target.

    `streams`: how many ModelStreamInfer streams will be open at once; a sync grpc server holds a
    handler thread for each, so its pool gets that many threads more than its unary default.
    `describe`: the model's description (perfanalyzer.describe) for perf_analyzer's own calls.
    `aio`: the grpc.aio flavor instead of sync grpc.
    """
    command = [sys.executable, "-m", BARE_SERVER, "--host", "127.0.0.1", "--port", "0", "--outputs", *outputs]
    if streams:
        command += ["--threads", str(BARE_UNARY_THREADS + streams)]
    if describe is not None:
        command += ["--describe", str(describe)]
    if aio:
        command.append("--aio")
    with _managed(command, stdout=subprocess.PIPE) as (proc, log):
        assert proc.stdout is not None
        port = _read_port(proc, proc.stdout, timeout)
        if port is None:
            raise StartError(f"the bare server printed no `PORT <n>` within {timeout:.0f} s\n{_tail(log)}")
        yield f"127.0.0.1:{port}"


def _read_port(proc: subprocess.Popen[bytes], stdout: IO[bytes], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    buffer = b""
    fd = stdout.fileno()
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buffer += chunk
        for line in buffer.splitlines():
            if line.startswith(b"PORT "):
                return int(line.split()[1])
    return None
