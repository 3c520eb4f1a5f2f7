"""Start real torchwire servers on 127.0.0.1 for tests: in a thread with its own event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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
    on (as by default) on a free port, one torch thread; then `variables` as TORCHWIRE_* variables."""
    env = {
        **os.environ,
        "TORCHWIRE_HOST": "127.0.0.1",
        "TORCHWIRE_PORT": "0",
        "TORCHWIRE_METRICS_PORT": "-1",
        "TORCHWIRE_TORCH_THREADS": "1",
    }
    return env | {f"TORCHWIRE_{name.upper()}": value for name, value in variables.items()}


@contextmanager
def serve_process(
    command: Sequence[str] = (str(TORCHWIRE),), *args: str, **variables: str
) -> Iterator[subprocess.Popen[str]]:
    """`torchwire serve` as a process (see serve_env), its log on stderr; killed if the test leaves
    it running, even when it fails."""
    process = subprocess.Popen(
        [*command, "serve", *args],
        env=serve_env(**variables),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def wait_for_line(
    process: subprocess.Popen[str], pattern: str, timeout: float = START_TIMEOUT_S
) -> re.Match[str]:
    """Read the server's log until a line matches; fail with what it said if it never does."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")
