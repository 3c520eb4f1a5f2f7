"""Start real torchwire servers on 127.0.0.1 for tests: in a thread with its own event loop, or as
`torchwire serve` processes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torchwire.server import App, Settings
from torchwire.server.eventloop import loop_factory

START_TIMEOUT_S = 120.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll a condition with a generous bound (CI is a busy 2-core machine); say what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)  # a busy 2-core CI machine loading torch models can be slow


class RunningServer:
    def __init__(self, app: App, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop

    @property
    def port(self) -> int:
        return self.app.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    @property
    def http_target(self) -> str:
        """host:port of the HTTP/REST port (the server must have been started with http_port=-1)."""
        assert self.app.http is not None, "start the server with http_port=-1"
        return f"127.0.0.1:{self.app.http.port}"

    def queue_state(self, model: str) -> tuple[int, int]:
        """(queued, in flight) of a model's scheduler, read on the server's own loop thread."""

        async def read() -> tuple[int, int]:
            scheduler = self.app.registry.lookup(model).scheduler
            return scheduler.queued, scheduler.in_flight

        result: tuple[int, int] = self.call(read())
        return result

    def call(self, coroutine: Any, timeout: float = START_TIMEOUT_S) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@contextmanager
def running_server(
    repository: Path | None = None, *, wait_loaded: bool = True, **overrides: Any
) -> Iterator[RunningServer]:
    """A started server on an ephemeral port; always stopped on exit, even when the test fails."""
    overrides.setdefault("metrics_port", 0)  # metrics off unless a test asks (-1: any free port)
    overrides.setdefault("http_port", 0)  # HTTP/REST off unless a test asks (-1: any free port)
    settings = Settings(
        model_repository=repository, host="127.0.0.1", port=0, shutdown_grace=5.0, **overrides
    )
    loop = loop_factory(settings.event_loop)()  # the loop `torchwire serve` runs on
    thread = threading.Thread(target=loop.run_forever, name="torchwire-test-server", daemon=True)
    thread.start()
    app = App(settings)
    server = RunningServer(app, loop)
    try:
        server.call(app.start())
        if wait_loaded:
            server.call(app.wait_loaded())
        yield server
    finally:
        with contextlib.suppress(concurrent.futures.TimeoutError):  # the test's own failure says more
            server.call(app.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


TORCHWIRE = Path(sys.executable).parent / "torchwire"


def serve_env(**variables: str) -> dict[str, str]:
    """The environment of a `torchwire serve` process in a test: 127.0.0.1, a free gRPC port, metrics
    and HTTP on (as by default) on free ports, one torch thread; then `variables` as TORCHWIRE_*
    variables. No PYTHONPATH: the process imports the torchwire its command was installed with."""
    env = {
        **{name: value for name, value in os.environ.items() if name != "PYTHONPATH"},
        "TORCHWIRE_HOST": "127.0.0.1",
        "TORCHWIRE_PORT": "0",
        "TORCHWIRE_METRICS_PORT": "-1",
        "TORCHWIRE_HTTP_PORT": "-1",
        "TORCHWIRE_TORCH_THREADS": "1",
    }
    return env | {f"TORCHWIRE_{name.upper()}": value for name, value in variables.items()}


class ServeProcess:
    """`torchwire serve` as its own process. Threads read its stdout and stderr into lines, so a test
    can wait on either stream (a span on stdout, a log line on stderr) and a chatty log never fills
    a pipe and stalls the server."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._read_up_to = {name: 0 for name in self.lines}
        self._port: int | None = None
        self._readers = [
            threading.Thread(target=self._read, args=(name,), daemon=True) for name in self.lines
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str) -> None:
        stream = getattr(self.process, name)
        for line in stream:
            self.lines[name].append(line)

    def text(self, name: str = "stderr") -> str:
        return "".join(self.lines[name])

    def _search(self, pattern: str, name: str, start: int, timeout: float) -> tuple[int, re.Match[str]]:
        """The first line of `name` from `start` on that matches, and its index; fails with what the
        process said if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.process.poll() is not None and not any(r.is_alive() for r in self._readers)
            lines = list(self.lines[name])
            for index in range(start, len(lines)):
                match = re.search(pattern, lines[index])
                if match:
                    return index, match
            if ended:
                raise AssertionError(f"exited {self.process.returncode} before {pattern!r}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no line matching {pattern!r} on {name}:\n{self.text(name)}")
            time.sleep(0.01)

    def wait_for(self, pattern: str, name: str = "stderr", timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        """The next line of `name` that matches (after the one the last wait_for on it matched)."""
        index, match = self._search(pattern, name, self._read_up_to[name], timeout)
        self._read_up_to[name] = index + 1
        return match

    @property
    def port(self) -> int:
        """The gRPC port it logged it listens on (waits for that line)."""
        if self._port is None:
            _, match = self._search(r"listening on 127\.0\.0\.1:(\d+)", "stderr", 0, START_TIMEOUT_S)
            self._port = int(match.group(1))
        return self._port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait(self, timeout: float = 60.0) -> int:
        """The exit status, once both streams are read to the end."""
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=timeout)
        return code

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a graceful stop), then the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)


@contextmanager
def serve_process(
    command: Sequence[str] = (str(TORCHWIRE),),
    *flags: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    **variables: str,
) -> Iterator[ServeProcess]:
    """`torchwire serve` as a process: the environment of serve_env(**variables) plus `env`, then
    `flags` (which beat both); killed if the test leaves it running, even when it fails."""
    process = subprocess.Popen(
        [*command, "serve", *flags],
        env=serve_env(**variables) | dict(env or {}),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield ServeProcess(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
