"""The FastAPI application: lifespan (tracker, worker, reaper), error mapping, body limit, auth, health, metrics.

Every error leaves as ``{"error": {"code", "message"}}``: 4xx for client faults, 5xx only for server faults; a
failing request never stops the server. Routes live in :mod:`kmnrt.service.routes` (REST) and
:mod:`kmnrt.service.stream` (WebSocket).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kmnrt import __version__
from kmnrt.errors import UserInputError
from kmnrt.service.errors import ServiceError, validation_problems
from kmnrt.service.metrics import ServiceMetrics, count_error
from kmnrt.service.schemas import ErrorBody, Health
from kmnrt.service.sessions import CloseReason, SessionRegistry
from kmnrt.service.settings import ServiceSettings
from kmnrt.service.ops import record_close
from kmnrt.service.worker import DeviceWorker

if TYPE_CHECKING:
    from kmnrt.runtime.tracker import Tracker

log = logging.getLogger("kmnrt.service")


@dataclass
class ServiceContext:
    """What the routes need, built at startup and kept in ``app.state.ctx``."""

    settings: ServiceSettings
    tracker: Tracker
    registry: SessionRegistry
    worker: DeviceWorker
    metrics: ServiceMetrics
    session_bytes: int
    batch_bytes: int
    stopping: bool = False


class BodyTooLarge(StarletteHTTPException):
    """Raised while a body streams in past the limit (an HTTPException, so FastAPI's form parser re-raises it)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body exceeds the server's limit of {limit} bytes")


class BodyStalled(StarletteHTTPException):
    """No byte of a request body for ``seconds``: a stalled (or slowloris) upload must not hold a connection and a
    handler for good; uvicorn has no body timeout of its own."""

    def __init__(self, seconds: float):
        super().__init__(408, f"the request body stalled: no data for {seconds:g} s; send the whole body")


class BodyGuardMiddleware:
    """Refuses bodies over ``limit`` bytes: at once from Content-Length, else while they stream in (chunked); and
    bodies that stop arriving for ``idle_timeout`` seconds (only while the body is incomplete: later receives wait
    for a disconnect, which may take as long as it takes)."""

    def __init__(self, app, limit: int, idle_timeout: float):
        self.app = app
        self.limit = limit
        self.idle_timeout = idle_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = _error_response(413, "body_too_large", f"the request body ({length.decode(errors='replace')}"
                                       f" bytes) exceeds the server's limit of {self.limit} bytes")
            count_error(scope.get("app"), "body_too_large")
            return await response(scope, receive, send)
        seen, complete = 0, False

        async def limited_receive():
            nonlocal seen, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout)
            except asyncio.TimeoutError:
                raise BodyStalled(self.idle_timeout) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        return await self.app(scope, limited_receive, send)


class BearerAuthMiddleware:
    """With a token set, every ``/v1`` request (HTTP or WebSocket handshake) must carry ``Authorization: Bearer
    <token>``; checked before the body is read. Health and metrics stay open for probes and scrapers."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if self.token is None or scope["type"] not in ("http", "websocket") or not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return await self.app(scope, receive, send)
        count_error(scope.get("app"), "unauthorized")
        if scope["type"] == "websocket":  # refusing the handshake answers HTTP 403
            await receive()
            return await send({"type": "websocket.close", "code": 1008})
        response = _error_response(401, "unauthorized", "missing or wrong bearer token: send 'Authorization: "
                                   "Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        return await response(scope, receive, send)


def load_tracker(settings: ServiceSettings) -> Tracker:
    from kmnrt.runtime.tracker import Tracker

    if settings.bundle is None:
        raise UserInputError("no bundle to serve: pass --bundle or set KMNRT_BUNDLE to an exported bundle folder")
    return Tracker.from_bundle(settings.bundle, backend=settings.backend, device=settings.device)


def capacity(settings: ServiceSettings, session_bytes: int, batch_bytes: int) -> int:
    """Sessions that fit the memory budget (and the optional explicit cap). ``batch_bytes``: the device worker's
    query-encoder buffers for its largest batch (``Tracker.batch_bytes``), shared by all sessions, so they come
    off the budget once before it is divided into session slots."""
    left = settings.memory_budget_bytes - batch_bytes
    by_memory = left // max(session_bytes, 1)
    if by_memory < 1:
        raise UserInputError(f"memory budget {settings.memory_budget_mb:g} MiB holds no session: the batch buffers "
                             f"(batch of {largest_batch(settings)}) take {batch_bytes / 2**20:.1f} MiB and one session "
                             f"{session_bytes / 2**20:.1f} MiB; raise --memory-budget-mb or lower --max-batch")
    return min(by_memory, settings.max_sessions) if settings.max_sessions else by_memory


def make_server(app: FastAPI, host: str, port: int, **config):
    """The uvicorn server of ``app`` (``kmnrt serve`` and the test server alike): no access log (the metrics count
    requests), WebSocket messages cut by the transport only well above the protocol's own limit (which answers 413
    ``body_too_large``), the drain's grace; ``config``: more ``uvicorn.Config`` settings. The app learns that it
    is stopping as soon as the server is asked to (a signal, or ``should_exit``), before uvicorn closes the
    connections: readiness answers 503 ``stopping`` at once, and the WebSocket sessions it ends close as
    ``server_shutdown``."""
    import uvicorn

    from kmnrt.service.stream import transport_message_limit

    settings: ServiceSettings = app.state.settings

    class Server(uvicorn.Server):
        @property
        def should_exit(self) -> bool:
            return self._should_exit

        @should_exit.setter
        def should_exit(self, value: bool) -> None:
            self._should_exit = value
            ctx: ServiceContext | None = getattr(app.state, "ctx", None)
            if value and ctx is not None:
                ctx.stopping = True

    return Server(uvicorn.Config(app, host=host, port=port, access_log=False,
                                 ws_max_size=transport_message_limit(settings.max_body_bytes),
                                 timeout_graceful_shutdown=int(settings.shutdown_grace_s), **config))


def largest_batch(settings: ServiceSettings) -> int:
    """The most frames one query-encoder call can hold: ``max_batch``, or fewer sessions when they are capped (a
    batch holds at most one frame per session)."""
    return min(settings.max_batch, settings.max_sessions) if settings.max_sessions else settings.max_batch


def create_app(settings: ServiceSettings, tracker: Tracker | None = None) -> FastAPI:
    """The service app. ``tracker``: serve this tracker (tests share one) instead of loading ``settings.bundle``;
    the app does not close a tracker it was given."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = tracker is None
        active = await asyncio.to_thread(load_tracker, settings) if owned else tracker
        session_bytes, batch_bytes = active.session_bytes(), active.batch_bytes(largest_batch(settings))
        try:
            max_sessions = capacity(settings, session_bytes, batch_bytes)
        except UserInputError:
            if owned:
                active.close()
            raise
        registry = SessionRegistry(max_sessions, settings.ttl_s, settings.tombstones)
        metrics = ServiceMetrics.create()
        metrics.max_sessions.set(registry.max_sessions)
        worker = DeviceWorker(active, registry, metrics, settings.max_batch, settings.max_delay_ms / 1000,
                              settings.queue_depth)
        # The warm-up runs on the worker's thread after this returns, so the server already answers while it runs:
        # /v2/health/ready says 503 until it is done. A bad bundle or budget has failed the start above, before
        # the port opened, which is what an operator wants to see at once.
        worker.start(settings.warmup)
        ctx = ServiceContext(settings, active, registry, worker, metrics, session_bytes, batch_bytes)
        app.state.ctx = ctx
        reaper = asyncio.create_task(_reap_forever(ctx))
        log.info("service loaded", extra={"event": "loaded", "backend": active.backend, "bundle": str(settings.bundle),
                                          "max_sessions": registry.max_sessions, "session_bytes": session_bytes,
                                          "batch_bytes": batch_bytes})
        try:
            yield
        finally:
            ctx.stopping = True
            reaper.cancel()
            drained = await asyncio.to_thread(worker.stop, settings.shutdown_grace_s)
            for session in registry.open_sessions():
                record_close(metrics, session.id, CloseReason.SHUTDOWN, registry.close(session, CloseReason.SHUTDOWN),
                             ServiceError(503, "shutting_down", "the server shut down before this frame ran"))
            if owned:
                active.close()
            log.info("service stopped", extra={"event": "stopped", "drained": drained})

    app = FastAPI(title="kmnrt", version=__version__, lifespan=lifespan,
                  description="KMN video object segmentation with per-video sessions whose memory stays on the "
                  "device. Errors are `{\"error\": {\"code\", \"message\"}}`. WebSocket `/v1/stream`: see "
                  "docs/service.md.",
                  responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 413: {"model": ErrorBody}})
    app.state.settings = settings  # before start-up too: how to serve it (make_server)
    app.add_middleware(BodyGuardMiddleware, limit=settings.max_body_bytes, idle_timeout=settings.body_timeout_s)
    app.add_middleware(BearerAuthMiddleware, token=settings.token)  # added last = runs first
    _install_error_handlers(app)

    from kmnrt.service.routes import router
    from kmnrt.service.stream import stream_router

    app.include_router(router)
    app.include_router(stream_router)

    @app.get("/v2/health/live", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    async def live(request: Request):
        ctx: ServiceContext | None = getattr(request.app.state, "ctx", None)
        if ctx is not None and ctx.worker.failure is not None:  # never going to serve: let it be restarted
            return JSONResponse(Health(status="failed").model_dump(), status_code=503)
        return Health(status="live")

    @app.get("/v2/health/ready", response_model=Health, tags=["health"],
             responses={503: {"model": Health}})
    async def ready(request: Request):
        ctx: ServiceContext | None = getattr(request.app.state, "ctx", None)
        if ctx is None or not ctx.worker.ready.is_set() or ctx.stopping:
            if ctx is not None and ctx.stopping:
                status = "stopping"
            elif ctx is not None and ctx.worker.failure is not None:
                status = "failed"  # the warm-up or the worker failed: this instance will never be ready
            else:
                status = "not_ready"  # loading or warming up
            return JSONResponse(Health(status=status).model_dump(), status_code=503)
        return Health(status="ready", backend=ctx.tracker.backend, max_sessions=ctx.registry.max_sessions,
                      active_sessions=len(ctx.registry))

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        ctx: ServiceContext = request.app.state.ctx
        active = len(ctx.registry)
        ctx.metrics.active_sessions.set(active)
        ctx.metrics.bank_bytes.set(active * ctx.session_bytes)
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _reap_forever(ctx: ServiceContext) -> None:
    while True:
        await asyncio.sleep(ctx.settings.reap_interval_s)
        for session, waiting in ctx.registry.expired():
            record_close(ctx.metrics, session.id, CloseReason.EXPIRED, waiting,
                         ServiceError(410, "session_expired", "the session expired"))


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        count_error(request.app, exc.code)
        if exc.status == 503:  # full, warming up or stopping: a state of the instance, not a fault
            log.warning(exc.message, extra={"event": "unavailable", "code": exc.code, "path": request.url.path})
        elif exc.status >= 500:
            log.error(exc.message, extra={"event": "error", "code": exc.code, "path": request.url.path})
        return _error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(UserInputError)
    async def user_error(request: Request, exc: UserInputError) -> JSONResponse:
        count_error(request.app, "invalid_input")
        return _error_response(400, "invalid_input", str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        count_error(request.app, "invalid_request")
        return _error_response(422, "invalid_request",
                               validation_problems(exc.errors()) or "the request does not match the API")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 408: "body_stalled",
                413: "body_too_large"}.get(exc.status_code, "bad_request")
        count_error(request.app, code)
        return _error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        count_error(request.app, "internal_error")
        log.error("unexpected error", extra={"event": "error", "path": request.url.path}, exc_info=exc)
        return _error_response(500, "internal_error", "the server failed on this request; it keeps serving")
