"""The application: lifespan (engine, Redis), middleware, routers and the error mapping."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, nullcontext
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from fund import __version__
from fund.audit.endpoints import router as audit_router
from fund.auth.endpoints import router as auth_router
from fund.auth.throttle import LoginThrottle
from fund.config import Settings, get_settings, validation_message
from fund.db import asyncpg_dsn, create_engine, create_sessionmaker
from fund.deps import Resources
from fund.errors import BadCursor, FundError, Unavailable, error_response
from fund.kit import heap, metrics
from fund.kit.cache import Cache, InvalidationLog, create_redis
from fund.kit.logging import configure_logging
from fund.kit.pagination import CursorCodec, InvalidCursor
from fund.kit.request_context import RequestContextMiddleware
from fund.kit.security import derive_key
from fund.kit.slots import Slots
from fund.ops.endpoints import router as ops_router
from fund.stats.endpoints import router as stats_router
from fund.users.endpoints import router as users_router

log = structlog.get_logger(__name__)

API_PREFIX = "/api/v1"

# SQLSTATEs answered 503: class 08 connection, 57P01-03 shutdown/restart, class 53 resources,
# 57014 a statement cancelled by its timeout. 40001/40P01 (serialization, deadlock): 409 retry.
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53", "57014")
_RETRY_SQLSTATES = ("40001", "40P01")
_DATA_SQLSTATES = ("22",)  # data exception: bad encoding, out of range, invalid text


def build_resources(settings: Settings) -> Resources:
    if settings.database_url is None:
        raise RuntimeError("FUND_DATABASE_URL is not set (the `fund` command starts a database)")
    engine = create_engine(settings.database_url, settings)
    redis = create_redis(settings.effective_redis_url(), settings.redis_socket_timeout)
    cache = Cache(
        redis,
        cooldown=settings.redis_breaker_cooldown,
        invalidation_log=InvalidationLog(
            asyncpg_dsn(settings.database_url), timeout=settings.db_connect_timeout
        ),
    )
    secret = settings.secret()
    return Resources(
        settings=settings,
        engine=engine,
        sessions=create_sessionmaker(engine),
        cache=cache,
        cursors=CursorCodec(derive_key(secret, "cursor")),
        token_key=derive_key(secret, "access-token"),
        throttle=LoginThrottle(
            cache,
            max_failures=settings.login_max_failures,
            window_seconds=settings.login_lockout_seconds,
        ),
        export_slots=Slots(settings.export_slots, wait=settings.db_pool_timeout),
    )


def create_worker_app() -> FastAPI:
    """The app as ``fund serve`` runs it in each worker process: its heap settled once started."""
    return create_app(settle_heap=True)


def create_app(settings: Settings | None = None, *, settle_heap: bool = False) -> FastAPI:
    """The application; ``settle_heap`` sets the garbage collector for serving while it runs
    (``fund.kit.heap``), which is process-wide: for a server's worker, and what measures one."""
    settings = settings or get_settings()
    configure_logging(json=settings.logs_as_json, level=settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resources = build_resources(settings)
        app.state.resources = resources
        log.info("started", env=settings.env.value, pid=os.getpid())
        try:
            with heap.settled() if settle_heap else nullcontext():
                yield
        finally:
            # uvicorn has drained the requests in flight (FUND_SHUTDOWN_TIMEOUT) by now. Each
            # step runs whatever the one before met: a cache that cannot close in time must
            # not leave the pool's connections open or this worker's metrics behind.
            try:
                await resources.cache.close()
            finally:
                try:
                    await resources.engine.dispose()
                finally:
                    metrics.worker_exited()
                    log.info("stopped", pid=os.getpid())

    app = FastAPI(
        title="Fund backend",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_on else None,
        redoc_url="/redoc" if settings.docs_on else None,
        openapi_url="/openapi.json" if settings.docs_on else None,
        # A path with a trailing slash is not a route: a 404, not a redirect to a URL
        # built from the request's Host header (which a client chooses).
        redirect_slashes=False,
        # The service's metrics are Prometheus (/metrics). FastAPI's OpenTelemetry hooks off:
        # each request otherwise looks its three providers up in the environment.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.add_middleware(
        RequestContextMiddleware,
        hsts=settings.behind_tls,
        max_body_bytes=settings.max_request_bytes,
    )
    install_error_handlers(app)
    for router in (auth_router, users_router, audit_router, stats_router):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(ops_router)
    return app


UNREADABLE_BODY_ERROR = {
    "type": "body_unreadable",
    "loc": ["body"],
    "msg": "The body could not be read as the JSON or form it claims to be",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FundError)
    async def domain_error(_: Request, error: FundError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(InvalidCursor)
    async def bad_cursor(_: Request, __: InvalidCursor) -> JSONResponse:
        # Raised where a service starts a page from the client's cursor (CursorCodec.start).
        return error_response(BadCursor())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 400:
            # Only reading a body raises a 400 HTTPException here (a bad cursor is a domain
            # error): FastAPI's for JSON its parser refuses before reading any value (bytes
            # that are not UTF-8, nesting or a number beyond its limits), Starlette's for
            # broken multipart. Bad input like any body that is not JSON: the same 422
            # (API.md section 7 keeps 400 for cursors).
            return JSONResponse({"detail": [UNREADABLE_BODY_ERROR]}, status_code=422)
        if error.status_code == 405:
            # The router names the methods of the first route whose path matched; a path can
            # have several (GET and PATCH /users/me), and a 405 must list them all (RFC 9110).
            allowed = _allowed_methods(request.app, request.scope["path"])
            if allowed:
                error.headers = {**(error.headers or {}), "Allow": ", ".join(allowed)}
        return await http_exception_handler(request, error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        # Inputs are not echoed back: a rejected password must not travel twice.
        detail = [
            {
                "type": e.get("type"),
                "loc": list(e.get("loc", ())),
                "msg": _body_message(request, e) or validation_message(str(e.get("msg", ""))),
            }
            for e in error.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(sa_exc.DBAPIError)
    async def database_error(_: Request, error: sa_exc.DBAPIError) -> JSONResponse:
        invalidated = error.connection_invalidated
        return _database_error(_sqlstate(error), error.orig, invalidated=invalidated)

    @app.exception_handler(asyncpg.PostgresError)
    async def driver_error(_: Request, error: asyncpg.PostgresError) -> JSONResponse:
        # From the few reads that run on the driver itself (fund.db.driver_fetch).
        return _database_error(str(error.sqlstate or ""), error, invalidated=False)

    async def unavailable(_: Request, error: Exception) -> JSONResponse:
        log.warning("database_unavailable", error=type(error).__name__)
        return error_response(Unavailable())

    for exc_type in (
        sa_exc.TimeoutError,
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.CannotConnectNowError,
        asyncpg.InternalClientError,
        TimeoutError,
    ):
        app.add_exception_handler(exc_type, unavailable)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled_error", error=type(error).__name__)
        return JSONResponse({"detail": "Internal server error"}, status_code=500)


def _database_error(sqlstate: str, orig: Any, *, invalidated: bool) -> JSONResponse:
    """The answer to a failed statement, by its SQLSTATE: 409, 503, 422, or else 500."""
    if sqlstate.startswith(_RETRY_SQLSTATES):
        return JSONResponse(
            {"detail": "Concurrent update; retry the request"},
            status_code=409,
            headers={"Retry-After": "0"},
        )
    if invalidated or sqlstate.startswith(_UNAVAILABLE_SQLSTATES) or not sqlstate:
        log.warning("database_unavailable", error=type(orig).__name__, sqlstate=sqlstate)
        return error_response(Unavailable())
    if sqlstate.startswith(_DATA_SQLSTATES):
        # A value the schemas let through but PostgreSQL cannot store: still the input's fault.
        log.warning("database_rejected_value", sqlstate=sqlstate)
        return JSONResponse({"detail": "Invalid value"}, status_code=422)
    log.error("database_error", sqlstate=sqlstate, error=str(orig)[:500])
    return JSONResponse({"detail": "Internal server error"}, status_code=500)


NOT_JSON = "Send the body as JSON, with Content-Type: application/json"


def _body_message(request: Request, error: Mapping[str, Any]) -> str | None:
    """What to say of a body FastAPI did not read as JSON because its Content-Type did not
    say JSON (missing, ``text/plain``): pydantic's "a valid dictionary" names no cause."""
    if tuple(error.get("loc", ())) != ("body",) or error.get("type") not in _NOT_AN_OBJECT:
        return None
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return None
    return NOT_JSON


_NOT_AN_OBJECT = {"model_attributes_type", "dict_type", "model_type"}


def _sqlstate(error: sa_exc.DBAPIError) -> str:
    orig: Any = error.orig
    for candidate in (orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return ""


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the API serves at ``path``, read off its OpenAPI paths."""
    index: list[tuple[re.Pattern[str], frozenset[str]]] | None = getattr(
        app.state, "allowed_methods", None
    )
    if index is None:
        index = []
        for template, operations in app.openapi()["paths"].items():
            integers = {
                p["name"]
                for op in operations.values()
                for p in op.get("parameters", [])
                if p["in"] == "path" and p["schema"].get("type") == "integer"
            }
            # "/users/{user_id}" -> literal text, then a segment: digits for an integer.
            parts = re.split(r"\{(\w+)\}", template)
            pattern = "".join(
                re.escape(part) if i % 2 == 0 else "[0-9]+" if part in integers else "[^/]+"
                for i, part in enumerate(parts)
            )
            index.append((re.compile(pattern), frozenset(m.upper() for m in operations)))
        app.state.allowed_methods = index
    allowed = {m for pattern, methods in index if pattern.fullmatch(path) for m in methods}
    if "GET" in allowed:
        allowed.add("HEAD")  # answered by RequestContextMiddleware
    return sorted(allowed)
