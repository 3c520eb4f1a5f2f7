"""The composition root: builds every part from Settings, then starts and stops them in order."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc.aio
from grpc_health.v1 import health_pb2

from torchwire.client._proto import grpc_service_pb2 as pb

from .core.admission import Admission
from .core.limits import Gate, Limits
from .core.registry import Registry
from .core.service import InferenceCore
from .http.server import HttpServer
from .observability.logs import AccessLog
from .observability.metrics import MetricsServer
from .observability.tracing import Tracing, configure_exporter
from .rpc import reflection
from .rpc.auth import TokenAuth
from .rpc.handlers import service_handler
from .rpc.health import Health
from .rpc.inference import InferenceServicer
from .settings import Settings, default_threads
from .startup import StartupError, cannot_bind, grpc_port_taken, http_port_taken, metrics_port_taken
from .tokens import BearerTokens, read_tokens
from .workers.cluster import ClusterCore, Peers
from .workers.role import WorkerRole

log = logging.getLogger("torchwire")

# After the server closes to new calls, it waits until none has come for this long (the calls gRPC
# had already received come through first, each refused at once), at most SETTLE_MAX_S.
SETTLE_QUIET_S = 0.2
SETTLE_MAX_S = 2.0


def bundled_repository() -> Path:
    from torchwire.models import REPOSITORY

    return REPOSITORY


class App:
    """One torchwire server. `await start()` returns the bound port; `await stop()` drains and stops.

    With a `worker` role it is one of several on the same port (`--workers N`): its runner sets
    `share_port`, and it serves an internal endpoint through which the others reach its models.
    """

    def __init__(self, settings: Settings, worker: WorkerRole | None = None) -> None:
        self.settings = settings
        self.worker = worker
        self.repository = settings.model_repository or bundled_repository()
        # Workers split the cores: N workers each computing on every core would oversubscribe them.
        share = 1 if worker is None else len(worker.peers) + 1
        self.registry = Registry(
            self.repository,
            settings.torch_threads,
            max(1, default_threads() // share),
            require_all=settings.readiness == "all",
            inline_us=settings.inline_forward_us,
        )
        self.registry.on_change = self._update_health
        explicit = settings.model_control_mode == "explicit"
        limits = Limits(
            settings.max_message_bytes,
            settings.max_tensor_elements,
            settings.max_request_rows,
            settings.max_string_bytes,
        )
        self.core = (
            InferenceCore(self.registry, explicit=explicit, limits=limits)
            if worker is None
            else ClusterCore(self.registry, Peers(worker.peers), explicit=explicit, limits=limits)
        )
        self._internal: grpc.aio.Server | None = None
        self.health = Health()
        self.admission = Admission()
        self.share_port = False  # bind the gRPC port beside other processes that ask the same
        self.port = 0
        self.tokens = (
            BearerTokens(read_tokens(settings.auth_token_file))
            if settings.auth_token_file is not None
            else None
        )
        self.tracing = Tracing(settings.trace)
        self.access_log = AccessLog(settings.access_log_sample)
        # One count of inference calls in progress, whichever port they came in on.
        limit = settings.max_concurrent_rpcs
        self.inference_gate = Gate(limit, "max_concurrent_rpcs", "inference calls") if limit else None
        self._server: grpc.aio.Server | None = None
        self.http: HttpServer | None = None
        self._loading: asyncio.Task[None] | None = None
        self._polling: asyncio.Task[None] | None = None
        self._stopping = False
        self.metrics: MetricsServer | None = None
        self._stop_tracing: Callable[[], None] | None = None

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
        if self.tokens is None:
            return []
        return [
            TokenAuth(
                self.tokens,
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

    def _ssl_context(self) -> ssl.SSLContext | None:
        """The HTTP port's TLS, from the same files and with the same client check as gRPC's."""
        settings = self.settings
        if settings.tls_cert is None or settings.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca is not None:
            context.load_verify_locations(settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _build_server(self) -> grpc.aio.Server:
        server = grpc.aio.server(options=self._server_options(), interceptors=self._interceptors())
        self._add_services(server, self.core)
        if self.settings.reflection:
            reflection.enable(server)
        return server

    def _add_services(self, server: grpc.aio.Server, core: InferenceCore) -> None:
        servicer = InferenceServicer(
            core,
            self.settings.stream_max_in_flight,
            self.tracing,
            self.access_log,
            Gate(self.settings.max_streams, "max_streams", "streams"),
        )
        size = self.settings.max_message_bytes
        # No limit, no gate: unlimited servers pay nothing per request for counting.
        rpcs = self.inference_gate
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

    async def _start_internal(self, worker: WorkerRole) -> None:
        # A unix socket in the supervisor's private folder: reachable by this user only, so no token.
        server = grpc.aio.server(options=self._server_options())
        # What the other workers call: this worker's models only, never fanned out again; through the
        # same handlers and Admission, so a stopping worker refuses its peers as it refuses clients.
        explicit = self.settings.model_control_mode == "explicit"
        self._add_services(server, InferenceCore(self.registry, explicit=explicit, limits=self.core.limits))
        server.add_insecure_port(f"unix:{worker.socket}")
        await server.start()
        self._internal = server

    async def start(self) -> int:
        """Listen at once (health says NOT_SERVING), then load the repository in the background.
        A port that cannot be bound raises StartupError, with nothing left running."""
        if self.settings.trace:  # first: a missing trace extra stops the start before anything runs
            self._stop_tracing = configure_exporter(self.settings.trace_exporter)
        try:
            await self._listen()
        except StartupError:
            await self._stop_exporter()
            raise
        self._loading = asyncio.get_running_loop().create_task(self._load())
        return self.port

    async def _listen(self) -> None:
        """gRPC, health and metrics listen. A taken port raises StartupError."""
        server = self._build_server()
        credentials = self._credentials()
        # Asked first, so that a taken port is one clear line: gRPC logs its own lines, then says
        # only "Failed to bind". (A shared port is meant to be taken already.)
        asked = self.settings.port != 0 and not self.share_port
        why = cannot_bind(self.settings.host, self.settings.port) if asked else None
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
            raise grpc_port_taken(self.settings.address, why)
        # HTTP listens after the listening line, but a taken HTTP port is refused before anything runs.
        http_port = self.settings.http_port
        why = cannot_bind(self.settings.host, http_port) if http_port > 0 and not self.share_port else None
        if why is not None:
            raise http_port_taken(self.settings.host, http_port, why)
        await server.start()
        self._server = server
        if self.worker is not None:
            await self._start_internal(self.worker)
        await self.health.start()
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
        if self.settings.http_port:
            await self._start_http()

    async def _start_http(self) -> None:
        self.http = HttpServer(
            self.core,
            max_bytes=self.settings.max_message_bytes,
            shutdown_grace=self.settings.shutdown_grace,
            tokens=self.tokens,
            protect_health=self.settings.auth_health,
            gate=self.inference_gate,
            admission=self.admission,
            tracing=self.tracing,
            access_log=self.access_log,
        )
        context = self._ssl_context()
        try:
            await self.http.start(
                self.settings.host, max(self.settings.http_port, 0), context, reuse_port=self.share_port
            )
        except OSError as exc:  # taken since the check above: nothing is served half-started
            self.http = None
            if self._server is not None:
                await self._server.stop(None)
                self._server = None
            if self.metrics is not None:
                await asyncio.to_thread(self.metrics.stop)
                self.metrics = None
            raise http_port_taken(self.settings.host, self.settings.http_port, exc.strerror) from exc
        log.info("HTTP/REST on %s:%d", self.settings.host, self.http.port)

    async def _start_metrics(self) -> None:
        port = max(self.settings.metrics_port, 0)
        # A worker's metrics are for its supervisor, which merges them on the public port.
        host = "127.0.0.1" if self.worker is not None else self.settings.host
        self.metrics = MetricsServer(self.core.snapshot, host, port, self.settings.metrics_names)
        try:
            metrics_port = self.metrics.start(asyncio.get_running_loop())
        except OSError as exc:
            self.metrics = None
            if self._server is not None:
                await self._server.stop(None)
                self._server = None
            raise metrics_port_taken(host, port, exc.strerror) from exc
        log.info("metrics on http://%s:%d/metrics", host, metrics_port)

    async def _update_health(self) -> None:
        if not self._stopping:
            await self.health.set_ready(self.registry.ready())

    async def _load(self) -> None:
        explicit = self.settings.model_control_mode == "explicit"
        names = list(self.settings.load_model) if explicit else None
        configs = None
        if explicit and isinstance(self.core, ClusterCore) and self.worker and self.worker.replacement:
            configs = await self.core.served_elsewhere()
            names = names if configs is None else list(configs)
        await self.registry.load_all(names, configs)
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
        if self.http is not None:
            self.http.draining = True
        if self.settings.drain_delay_s > 0:
            log.info(
                "draining: NOT_SERVING for %.1f s before closing the listener", self.settings.drain_delay_s
            )
            await asyncio.sleep(self.settings.drain_delay_s)  # the point is to let load balancers notice
        # Both ports close to new calls at once (one Admission), then stop together, each giving the
        # calls in flight the shutdown grace.
        if self._server is not None or self.http is not None:
            await self._close_to_new_calls()
        closing = [self._server.stop(self.settings.shutdown_grace)] if self._server is not None else []
        if self.http is not None:
            closing.append(self.http.stop())
        await asyncio.gather(*closing)
        for task in (self._loading, self._polling):
            if task is not None and not task.done():
                task.cancel()
        succeeded, failed = self.registry.totals()
        if self._internal is not None:  # closed with the public one (Admission): nothing left to cancel
            await self._internal.stop(self.settings.shutdown_grace)
        if isinstance(self.core, ClusterCore):
            await self.core.peers.close()
        await self.registry.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        await self._stop_exporter()
        log.info(
            "stopped: drained; %d requests succeeded, %d failed, %d refused while stopping",
            succeeded,
            failed,
            self.admission.refused,
        )

    async def _stop_exporter(self) -> None:
        """Export the spans still batched and stop the exporter's thread (once)."""
        stop, self._stop_tracing = self._stop_tracing, None
        if stop is not None:
            await asyncio.to_thread(stop)

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
