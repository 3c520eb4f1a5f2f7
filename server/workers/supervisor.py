"""The supervisor of `--workers N`: starts the workers, replaces the dead, stops them all on a signal.

It holds no gRPC object at all (workers are spawned, not forked, and each builds its own server): it
reserves the port, watches the workers' pipes and exit sentinels, and serves the merged /metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from ..settings import Settings
from ..startup import grpc_port_taken, http_port_taken, metrics_port_taken
from . import worker
from .metrics import MergedMetricsServer
from .ports import reserved_port
from .role import WorkerRole

log = logging.getLogger("torchwire.workers")


class StartFailed(Exception):
    """A worker could not start: the whole server stops with its reason rather than retrying."""


@dataclass(slots=True)
class Worker:
    index: int
    process: BaseProcess
    reports: Connection | None
    metrics_port: int = 0
    listening: bool = False
    loaded: bool = False


class Supervisor:
    def __init__(self, settings: Settings, sockets: list[Path]) -> None:
        self.settings = settings
        self.sockets = sockets
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, Worker] = {}
        self.stopping = False
        self.exit_codes: list[int] = []
        self._wake_read, self._wake_write = socket.socketpair()
        self._signals: list[int] = []
        self._announced = False

    def spawn(self, index: int, *, replacement: bool = False) -> None:
        role = WorkerRole(
            index,
            self.sockets[index],
            tuple(path for i, path in enumerate(self.sockets) if i != index),
            replacement,
        )
        reports, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=worker.run, args=(self.settings, role, sender), name=f"torchwire-worker-{index}"
        )
        process.start()
        sender.close()  # the worker holds the only writing end: its exit closes the pipe
        self.workers[index] = Worker(index, process, reports)
        log.info("worker %d started (pid %s)", index, process.pid)

    def metrics_endpoints(self) -> list[tuple[int, int]]:
        return [(w.index, w.metrics_port) for w in list(self.workers.values()) if w.metrics_port]

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)
        self._wake_write.send(b"\0")

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            for index in range(len(self.sockets)):
                self.spawn(index)
            while self.workers:
                self._step()
        except StartFailed as exc:
            log.error("stopping: %s", exc)
            self._terminate_all()
            return 1
        return 0 if all(code == 0 for code in self.exit_codes) else 1

    def _step(self) -> None:
        waitables: list[Any] = [self._wake_read]
        for w in self.workers.values():
            waitables.append(w.process.sentinel)
            if w.reports is not None:
                waitables.append(w.reports)
        ready = wait(waitables)
        if self._wake_read in ready:
            self._wake_read.recv(64)
            self._handle_signals()
        for w in list(self.workers.values()):
            if w.reports is not None and w.reports in ready:
                self._read_report(w)
        for w in list(self.workers.values()):
            if w.process.sentinel in ready:
                self._on_exit(w)

    def _handle_signals(self) -> None:
        signals, self._signals[:] = list(self._signals), []
        for _ in signals:
            if self.stopping:  # a second signal: the workers stop waiting for their drain
                log.warning("second signal: workers exit without draining")
            else:
                log.info("draining %d workers", len(self.workers))
            self.stopping = True
            for w in self.workers.values():
                if w.process.pid is not None:
                    os.kill(w.process.pid, signal.SIGTERM)

    def _read_report(self, w: Worker) -> None:
        assert w.reports is not None
        try:
            report = w.reports.recv()
        except EOFError:  # it exited; its sentinel says how
            w.reports.close()
            w.reports = None
            return
        if report[0] == "failed":
            raise StartFailed(f"worker {w.index} could not start: {report[1]}")
        if report[0] == "listening":
            w.listening, w.metrics_port = True, int(report[2])
            log.info(
                "worker %d (pid %s) listening; its own metrics port %d", w.index, w.process.pid, report[2]
            )
            if not self._announced and all(x.listening for x in self.workers.values()):
                self._announced = True
                log.info(
                    "listening on %s:%d with %d workers", self.settings.host, report[1], len(self.workers)
                )
        elif report[0] == "loaded":
            w.loaded = True
            if all(x.loaded for x in self.workers.values()):
                log.info("all %d workers loaded", len(self.workers))

    def _on_exit(self, w: Worker) -> None:
        w.process.join()
        code = w.process.exitcode if w.process.exitcode is not None else -1
        del self.workers[w.index]
        if self.stopping:
            log.info("worker %d stopped (exit code %d)", w.index, code)
            self.exit_codes.append(code)
            return
        if not w.loaded:
            raise StartFailed(f"worker {w.index} exited with code {code} before it finished starting")
        log.warning("worker %d (pid %s) died with exit code %d: replacing it", w.index, w.process.pid, code)
        self.spawn(w.index, replacement=True)

    def _terminate_all(self) -> None:
        for w in self.workers.values():
            if w.process.is_alive() and w.process.pid is not None:
                os.kill(w.process.pid, signal.SIGTERM)
        for w in self.workers.values():
            w.process.join(self.settings.shutdown_grace + self.settings.drain_delay_s + 30)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
        self.workers.clear()


def supervise(settings: Settings) -> int:
    """Run `settings.worker_count` workers on one port until a signal; the process exit code.
    A port that cannot be bound raises StartupError before any worker starts."""
    host = settings.host
    with contextlib.ExitStack() as held:
        port = held.enter_context(
            reserved_port(host, settings.port, lambda p, why: grpc_port_taken(f"{host}:{p}", why))
        )
        # The HTTP port is shared the same way (-1: one free port for all the workers).
        http_port = settings.http_port and held.enter_context(
            reserved_port(host, max(settings.http_port, 0), lambda p, why: http_port_taken(host, p, why))
        )
        folder = held.enter_context(tempfile.TemporaryDirectory(prefix="torchwire-workers-"))
        os.chmod(folder, 0o700)  # the internal endpoints are for this user only
        count = settings.worker_count
        worker_settings = dataclasses.replace(
            settings, port=port, http_port=http_port, metrics_port=-1 if settings.metrics_port else 0
        )
        supervisor = Supervisor(worker_settings, [Path(folder) / f"{i}.sock" for i in range(count)])
        metrics = None
        if settings.metrics_port:
            metrics_port = max(settings.metrics_port, 0)
            try:
                metrics = MergedMetricsServer(settings.host, metrics_port, supervisor.metrics_endpoints)
            except OSError as exc:
                raise metrics_port_taken(settings.host, metrics_port, exc.strerror) from exc
            log.info("metrics on http://%s:%d/metrics (all workers)", settings.host, metrics.port)
        if http_port:
            log.info("HTTP/REST on %s:%d (all workers)", host, http_port)
        try:
            return supervisor.run()
        finally:
            if metrics is not None:
                metrics.stop()
