"""The v2 REST API (KServe's required API with Triton's extensions) over the same core as gRPC.

aiohttp's server runs on the process's one event loop beside grpc.aio. Each handler turns the request
into the core's protobuf message, calls the same core operation as the gRPC servicer, and turns the
answer back into JSON; bearer tokens, the concurrent-inference gate, tracing and access logs are the
same objects gRPC uses. Errors leave through status.py's table as `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from torchwire.client._proto import grpc_service_pb2 as pb

from ..core.admission import Admission
from ..core.errors import InvalidRequest
from ..core.limits import Gate, setting_name
from ..core.service import InferenceCore
from ..observability.logs import AccessLog
from ..observability.observed import Observer, Transport
from ..observability.tracing import Tracing
from ..tokens import BearerTokens
from . import messages
from .status import BodyTooLarge, code_of, error_response, json_error
from .tensors import HEADER_LENGTH, infer_response, parse_infer

log = logging.getLogger("torchwire.http")

HEALTH_PATHS: Final = ("/v2/health/live", "/v2/health/ready")
HOW: Final = "the header `Authorization: Bearer <token>`"  # how a token is sent, for a refusal
EXTENSIONS: Final = ("binary_tensor_data",)  # beside the core's, what this transport adds
# JSON text takes milliseconds per MiB to parse or write: larger bodies are handled on a worker
# thread, so that the loop keeps answering other requests between the thread's GIL switches.
LARGE_JSON: Final = 1 << 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(value: Any) -> web.Response:
    return web.Response(
        body=json.dumps(value, separators=(",", ":")).encode(), content_type="application/json"
    )


def _flag(key: str, value: bool) -> web.Response:
    # The v2 REST API: a health answer is its status, 200 for true and 4xx for false (all tritonclient
    # reads); KServe's own client also reads a body like its server's, {"live": true}.
    response = _json({key: value})
    response.set_status(200 if value else 400)
    return response


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["name"], request.match_info.get("version", "")


def _listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # as gRPC's port: shared only beside processes that ask the same
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """`await start(host, port, ssl_context)` returns the bound port; `await stop()` drains."""

    def __init__(
        self,
        core: InferenceCore,
        *,
        max_bytes: int,
        shutdown_grace: float = 10.0,
        tokens: BearerTokens | None = None,
        protect_health: bool = False,
        gate: Gate | None = None,
        admission: Admission | None = None,
        tracing: Tracing | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self._core = core
        self._max_bytes = max_bytes
        self._grace = shutdown_grace
        self._tokens = tokens
        self._open_paths = () if protect_health else HEALTH_PATHS
        self._gate = gate
        self._admission = admission
        self._observer = Observer(
            tracing or Tracing(enabled=False),
            access_log or AccessLog(0.0),
            Transport("http", "HTTP infer", "200", lambda exc: str(code_of(exc))),
        )
        self._runner: web.AppRunner | None = None
        self.draining = False  # readiness answers false from the start of a drain
        self.port = 0

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self._max_bytes, middlewares=[self._boundary])
        get, post = web.get, web.post
        model = "/v2/models/{name}"
        version = "/v2/models/{name}/versions/{version}"
        app.add_routes(
            [
                get("/v2/health/live", self.live, allow_head=False),
                get("/v2/health/ready", self.ready, allow_head=False),
                get("/v2", self.server_metadata, allow_head=False),
                # Before "/v2/models/{name}", which would take "stats" for a model name.
                get("/v2/models/stats", self.statistics, allow_head=False),
                post("/v2/repository/index", self.repository_index),
                post("/v2/repository/models/{name}/load", self.load),
                post("/v2/repository/models/{name}/unload", self.unload),
            ]
        )
        for prefix in (model, version):
            app.add_routes(
                [
                    get(prefix, self.model_metadata, allow_head=False),
                    get(prefix + "/ready", self.model_ready, allow_head=False),
                    get(prefix + "/config", self.model_config, allow_head=False),
                    get(prefix + "/stats", self.statistics, allow_head=False),
                    post(prefix + "/infer", self.infer),
                ]
            )
        return app

    async def start(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None = None, *, reuse_port: bool = False
    ) -> int:
        runner = web.AppRunner(
            self.application(), access_log=None, handle_signals=False, shutdown_timeout=self._grace
        )
        await runner.setup()
        try:
            sock = _listening_socket(host, port, reuse_port)
        except OSError:
            await runner.cleanup()
            raise
        self.port = sock.getsockname()[1]
        try:
            await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        return self.port

    async def stop(self) -> None:
        """Close the listener, give requests in flight the shutdown grace, close the connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _boundary(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if self._tokens is not None and request.path not in self._open_paths:
                self._tokens.check(request.headers.get("Authorization"), HOW)
            # Once the server closes (as gRPC's calls, through the same Admission), every call but a
            # health probe is refused with 503, so that none is cut off by the stop.
            if self._admission is not None and request.path not in HEALTH_PATHS:
                self._admission.admit()
            return await handler(request)
        except web.HTTPException as exc:  # aiohttp's own answers: no such path, method not allowed
            if exc.status < 400:
                raise
            return json_error(exc.status, f"{exc.reason}: {request.method} {request.path}")
        except Exception as exc:
            return error_response(exc)

    def _too_large(self, size: int | None) -> BodyTooLarge:
        return BodyTooLarge(
            f"request body of {size or 'more than ' + str(self._max_bytes)} bytes is over the limit of "
            f"{self._max_bytes} set by {setting_name('max_message_bytes')}"
        )

    async def _body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self._max_bytes:
            raise self._too_large(request.content_length)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:  # no Content-Length (chunked, or compressed)
            raise self._too_large(None) from None

    async def _json_body(self, request: web.Request) -> Any:
        body = await self._body(request)
        if not body.strip():
            return None
        return messages.parse_json(body)

    # --- health and metadata -------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return _flag("live", self._core.server_live().live)

    async def ready(self, request: web.Request) -> web.Response:
        return _flag("ready", self._core.server_ready().ready and not self.draining)

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return _flag("ready", self._core.model_ready(pb.ModelReadyRequest(name=name, version=version)).ready)

    async def server_metadata(self, request: web.Request) -> web.Response:
        answer = messages.plain(self._core.server_metadata())
        answer["extensions"] = [*answer["extensions"], *EXTENSIONS]
        return _json(answer)

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return _json(
            messages.plain(self._core.model_metadata(pb.ModelMetadataRequest(name=name, version=version)))
        )

    async def model_config(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        response = self._core.model_config(pb.ModelConfigRequest(name=name, version=version))
        return _json(messages.model_config(response))

    async def statistics(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "")
        version = request.match_info.get("version", "")
        response = await self._core.model_statistics(pb.ModelStatisticsRequest(name=name, version=version))
        return _json(messages.plain(response))

    # --- repository ----------------------------------------------------------------------------

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if body is not None and not isinstance(body, dict):
            raise InvalidRequest("repository index request: the body must be a JSON object")
        ready = (body or {}).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest("repository index request: ready must be a JSON bool")
        response = self._core.repository_index(pb.RepositoryIndexRequest(ready=ready))
        return _json([messages.plain(model) for model in response.models])

    async def load(self, request: web.Request) -> web.Response:
        load = messages.load_request(request.match_info["name"], await self._json_body(request))
        await self._core.load_model(load)
        return web.Response()

    async def unload(self, request: web.Request) -> web.Response:
        await self._json_body(request)  # Triton's `unload_dependents` has no meaning here: no ensembles
        await self._core.unload_model(pb.RepositoryModelUnloadRequest(model_name=request.match_info["name"]))
        return web.Response()

    # --- inference -----------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        if self._gate is None:
            return await self._infer(request)
        self._gate.enter()
        try:
            return await self._infer(request)
        finally:
            self._gate.exit()

    async def _infer(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        raw = await self._body(request)
        length = request.headers.get(HEADER_LENGTH)
        if len(raw) < LARGE_JSON or (length is not None and length.isdigit() and int(length) < LARGE_JSON):
            body = parse_infer(raw, length, name, version)
        else:
            body = await asyncio.to_thread(parse_infer, raw, length, name, version)
        if self._observer.idle:
            response = await self._core.infer(body.request)  # the plain path: nothing observed per request
        else:
            headers = [(key.lower(), value) for key, value in request.headers.items()]
            response = await self._observer.infer(
                self._core.infer, body.request, headers, request.remote or "-"
            )
        as_text = (
            len(r)
            for t, r in zip(response.outputs, response.raw_output_contents, strict=True)
            if not body.binary(t.name)
        )
        if sum(as_text) < LARGE_JSON // 4:  # JSON text is some 4 times the bytes
            data, header_length = infer_response(response, body)
        else:
            data, header_length = await asyncio.to_thread(infer_response, response, body)
        if header_length is None:
            return web.Response(body=data, content_type="application/json")
        return web.Response(
            body=data, content_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)}
        )
