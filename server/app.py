"""The composition root: builds every part from Settings, then starts and stops them in order."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any

import grpc.aio
from grpc_health.v1 import health_pb2

from torchwire.client._proto import grpc_service_pb2 as pb

from .core.limits import Gate, Limits
from .core.registry import Registry
from .core.service import InferenceCore
from .observability.logs import AccessLog
from .observability.metrics import MetricsServer
from .observability.tracing import Tracing, configure_exporter
from .rpc import reflection
from .rpc.auth import TokenAuth, read_tokens
from .rpc.handlers import Admission, service_handler
from .rpc.health import Health
from .rpc.inference import InferenceServicer
from .settings import Settings, default_threads

log = logging.getLogger("torchwire")

# After the server closes to new calls, it waits until none has come for this long (the calls gRPC
# had already received come through first, each refused at once), at most SETTLE_MAX_S.
SETTLE_QUIET_S = 0.2
SETTLE_MAX_S = 2.0


class StartupError(Exception):
    """The server cannot start (a port it must listen on is taken); the message says what to change."""


def _cannot_bind(host: str, port: int) -> str | None:
    """Why a TCP listener cannot bind host:port now ("Address already in use"), or None if it can."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's listener does
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def bundled_repository() -> Path:
    from torchwire.models import REPOSITORY

    return REPOSITORY


class App:
    """One torchwire server. `await start()` returns the bound port; `await stop()` drains and stops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = settings.model_repository or bundled_repository()
        self.registry = Registry(
            self.repository,
            settings.torch_threads,
            default_threads(),
            require_all=settings.readiness == "all",
        )
        self.registry.on_change = self._update_health
        self.core = InferenceCore(
            self.registry,
            explicit=settings.model_control_mode == "explicit",
            limits=Limits(
                settings.max_message_bytes, settings.max_tensor_elements, settings.max_request_rows
            ),
        )
        self.health = Health()
        self.admission = Admission()
        self.share_port = False  # bind the gRPC port beside other processes that ask the same
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._loading: asyncio.Task[None] | None = None
        self._polling: asyncio.Task[None] | None = None
        self._stopping = False
        self.metrics: MetricsServer | None = None

    def _server_options(self) -> list[tuple[str, int]]:
        settings = self.settings
        options = [
            # gRPC itself stops at twice the limit; up to there our own check answers, naming the setting.
            ("grpc.max_receive_message_length", min(2 * settings.max_message_bytes, 2**31 - 1)),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Clients may keep long streams alive with pings every 10 s or more.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # gRPC shares a port with any process that also asks (SO_REUSEPORT) by default: a second
            # server would silently take part of the first one's connections. Sharing is opt-in.
            ("grpc.so_reuseport", 1 if self.share_port else 0),
        ]
        if settings.max_connection_age_s > 0:
            options += [
                ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(settings.shutdown_grace * 1000)),
            ]
        return options

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        settings = self.settings
        if settings.auth_token_file is None:
            return []
        return [
            TokenAuth(
                read_tokens(settings.auth_token_file),
                protect_health=settings.auth_health,
                protect_reflection=settings.auth_reflection,
            )
        ]

    def _credentials(self) -> grpc.ServerCredentials | None:
        settings = self.settings
        if settings.tls_cert is None or settings.tls_key is None:
            return None
        client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
        return grpc.ssl_server_credentials(
            [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    def _build_server(self) -> grpc.aio.Server:
        server = grpc.aio.server(options=self._server_options(), interceptors=self._interceptors())
        servicer = InferenceServicer(
            self.core,
            self.settings.stream_max_in_flight,
            Tracing(self.settings.trace),
            AccessLog(self.settings.access_log_sample),
            Gate(self.settings.max_streams, "max_streams", "streams"),
        )
        size = self.settings.max_message_bytes
        # No limit, no gate: unlimited servers pay nothing per request for counting.
        limit = self.settings.max_concurrent_rpcs
        rpcs = Gate(limit, "max_concurrent_rpcs", "inference RPCs") if limit else None
        server.add_generic_rpc_handlers(
            (
                service_handler(
                    pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
                    servicer,
                    max_bytes=size,
                    gate=rpcs,
                    admission=self.admission,
                ),
                service_handler(
                    health_pb2.DESCRIPTOR.services_by_name["Health"], self.health.servicer, max_bytes=size
                ),
            )
        )
        if self.settings.reflection:
            reflection.enable(server)
        return server

    async def start(self) -> int:
        """Listen at once (health says NOT_SERVING), then load the repository in the background.
        A port that cannot be bound raises StartupError, with nothing left running."""
        server = self._build_server()
        credentials = self._credentials()
        # Asked first, so that a taken port is one clear line: gRPC logs its own lines, then says
        # only "Failed to bind". (A shared port is meant to be taken already.)
        asked = self.settings.port != 0 and not self.share_port
        why = _cannot_bind(self.settings.host, self.settings.port) if asked else None
        try:
            if why is None:
                self.port = (
                    server.add_insecure_port(self.settings.address)
                    if credentials is None
                    else server.add_secure_port(self.settings.address, credentials)
                )
        except RuntimeError:
            why = "gRPC could not bind it"
        if why is not None:
            raise StartupError(
                f"cannot listen on {self.settings.address} for gRPC ({why}): choose another port with "
                "--port or TORCHWIRE_PORT (0 picks a free one)"
            )
        await server.start()
        self._server = server
        await self.health.start()
        if self.settings.trace:
            configure_exporter(self.settings.trace_exporter)
        if self.settings.metrics_port:
            await self._start_metrics()
        log.info(
            "listening on %s:%d (%s; repository %s; event loop %s)",
            self.settings.host,
            self.port,
            "mutual TLS" if self.settings.tls_client_ca else "TLS" if credentials else "plaintext",
            self.repository,
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        self._loading = asyncio.get_running_loop().create_task(self._load())
        return self.port

    async def _start_metrics(self) -> None:
        port = max(self.settings.metrics_port, 0)
        self.metrics = MetricsServer(self.core.snapshot, self.settings.host, port)
        try:
            metrics_port = self.metrics.start(asyncio.get_running_loop())
        except OSError as exc:
            self.metrics = None
            if self._server is not None:
                await self._server.stop(None)
                self._server = None
            raise StartupError(
                f"cannot listen on {self.settings.host}:{port} for metrics ({exc.strerror}): choose "
                "another port with --metrics-port or TORCHWIRE_METRICS_PORT (0 turns metrics off, "
                "-1 picks a free one)"
            ) from exc
        log.info("metrics on http://%s:%d/metrics", self.settings.host, metrics_port)

    async def _update_health(self) -> None:
        if not self._stopping:
            await self.health.set_ready(self.registry.ready())

    async def _load(self) -> None:
        explicit = self.settings.model_control_mode == "explicit"
        await self.registry.load_all(list(self.settings.load_model) if explicit else None)
        if self.settings.model_control_mode == "poll":
            self._polling = asyncio.get_running_loop().create_task(self._poll_forever())
        for entry in self.registry.entries():
            for version, (state, reason) in sorted(entry.states.items()) or [
                (0, (entry.state, entry.reason))
            ]:
                log.info(
                    "model %s version %s: %s%s",
                    entry.name,
                    version or "-",
                    state.value,
                    f" ({reason})" if reason else "",
                )
        await self._update_health()
        log.info("server %s", self._readiness_summary())

    def _readiness_summary(self) -> str:
        entries = self.registry.entries()
        if self.registry.ready():
            return "ready"
        if not entries:
            return (
                f"NOT ready: the repository {self.repository} has no models (each model is a folder "
                "with a config.pbtxt and a version folder such as 1/model.pt, or an exported 1/model.pt2)"
            )
        if not any(entry.wanted for entry in entries):
            return "NOT ready: no model was asked for (explicit model control: --load-model NAME)"
        return "NOT ready: a model asked for could not be loaded"

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)  # the poll period itself
            try:
                await self.registry.poll()
            except Exception:  # one bad scan must not end polling
                log.exception("repository poll failed")

    async def wait_loaded(self) -> None:
        if self._loading is not None:
            await self._loading

    async def stop(self) -> None:
        """Health flips to NOT_SERVING; after the drain delay the listener closes and in-flight calls
        get the grace period; then queues drain and models unload. Calling it again does nothing."""
        if self._stopping:
            return
        self._stopping = True
        await self.health.drain()
        if self.settings.drain_delay_s > 0:
            log.info(
                "draining: NOT_SERVING for %.1f s before closing the listener", self.settings.drain_delay_s
            )
            await asyncio.sleep(self.settings.drain_delay_s)  # the point is to let load balancers notice
        if self._server is not None:
            await self._close_to_new_calls()
            await self._server.stop(self.settings.shutdown_grace)
        for task in (self._loading, self._polling):
            if task is not None and not task.done():
                task.cancel()
        succeeded, failed = self.registry.totals()
        await self.registry.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        log.info(
            "stopped: drained; %d requests succeeded, %d failed, %d refused while stopping",
            succeeded,
            failed,
            self.admission.refused,
        )

    async def _close_to_new_calls(self) -> None:
        """New calls get UNAVAILABLE from now on. Returns once the calls gRPC had received before have
        reached the application (and been refused), so that `server.stop()` has none left to cancel."""
        self.admission.close()
        deadline = time.monotonic() + min(SETTLE_MAX_S, self.settings.shutdown_grace)
        while time.monotonic() < deadline:
            quiet_until = self.admission.last_refusal + SETTLE_QUIET_S
            if time.monotonic() >= quiet_until:
                return
            await asyncio.sleep(min(quiet_until, deadline) - time.monotonic())
