"""One worker process: a whole torchwire server that reports to its supervisor over a pipe.

Reports, in order: ("listening", grpc port, metrics port) then ("loaded",); or ("failed", why) if the
server cannot start. SIGTERM drains it (a second one exits at once); SIGINT is the supervisor's to
handle (a terminal sends it to the whole process group); if the supervisor dies, the worker drains too.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
from multiprocessing.connection import Connection

from ..eventloop import loop_factory
from ..observability import configure_logging, route_torch_logs
from ..settings import Settings
from .role import WorkerRole


def run(settings: Settings, role: WorkerRole, reports: Connection) -> None:
    """The spawned process's entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_level, settings.log_format)
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        code = runner.run(_serve(settings, role, reports))
    raise SystemExit(code)


async def _serve(settings: Settings, role: WorkerRole, reports: Connection) -> int:
    from ..app import App  # torch loads here, in the worker
    from ..cli import freeze_when_loaded, os_exit_now

    route_torch_logs()

    app: App | None = None
    try:  # building the app reads its files (tokens, certificates): that can fail too
        app = App(settings, role)
        app.share_port = True  # the supervisor holds the port (SO_REUSEPORT) for its workers to join
        port = await app.start()
    except Exception as exc:  # the supervisor stops the whole server with this reason
        reports.send(("failed", f"{type(exc).__name__}: {exc}"))
        if app is not None:
            await app.stop()
        return 1
    reports.send(("listening", port, app.metrics.port if app.metrics is not None else 0))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            os_exit_now()
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_signal)
    parent = multiprocessing.parent_process()
    if parent is not None:  # readable once the supervisor is gone
        loop.add_reader(parent.sentinel, stop.set)

    async def loaded() -> None:
        await freeze_when_loaded(app)
        with contextlib.suppress(OSError):  # the supervisor is gone: the worker is stopping anyway
            reports.send(("loaded",))

    loading = loop.create_task(loaded())
    await stop.wait()
    loading.cancel()
    await app.stop()
    return 0
