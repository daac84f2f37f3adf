"""Per-request context: the request id, the caller, timing, metrics and the access log line.

A pure ASGI middleware (no ``BaseHTTPMiddleware``): it adds no task or copy per request.
It also answers the requests that must never reach the application: a malformed ``Host``
header (400), headers over 64 KiB (431) and a body over the configured size (413), so none
can become a 500 or an unbounded read.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

import orjson
import structlog
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fund.kit import metrics

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_user_id: ContextVar[int | None] = ContextVar("user_id", default=None)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# A DNS name or IPv4 address, or a bracketed IPv6 address, with an optional port.
_VALID_HOST = re.compile(r"^(?:[A-Za-z0-9_\-.]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
HSTS = b"max-age=63072000; includeSubDomains"
BODY_TOO_LARGE = "Request body too large"
SHUTTING_DOWN = "Service is shutting down; retry the request"
# uvicorn's httptools parser sets no bound on headers; nothing legitimate sends this much.
MAX_HEADER_BYTES = 64 * 1024

access_log = structlog.get_logger("fund.access")
error_log = structlog.get_logger("fund.errors")


class _HeadAnswered(OSError):
    """A HEAD's streamed body reached its second chunk: its answer is complete, stop the app.

    An ``OSError``, as a send to a client that has gone: a streaming response treats it
    like a disconnect (the export closes its COPY), and nothing logs it as an error.
    """


class StreamInterrupted(Exception):
    """A streamed body failed after its status line went out (logged where it failed).

    No error answer can follow a started one. The middleware ends the request without the
    body's last frame, so the server closes the connection and the client sees the body
    cut short (curl: "transfer closed with outstanding read data remaining"), never a
    shorter body that looks whole; and no traceback is logged for it as an unhandled error.
    """


def request_id() -> str | None:
    return _request_id.get()


def set_user_id(user_id: int) -> None:
    _user_id.set(user_id)
    structlog.contextvars.bind_contextvars(user_id=user_id)


def client_ip(scope: Scope, *, trust_forwarded: bool) -> str | None:
    """The caller's address as the audit log records it.

    Behind a trusted proxy, the last ``X-Forwarded-For`` entry: the address the proxy itself
    saw. Entries before it were written by whoever sent the request, and a proxy that
    appends rather than overwrites would otherwise let a client name any address it likes.
    """
    if trust_forwarded:
        forwarded = [v for n, v in scope.get("headers", []) if n == b"x-forwarded-for"]
        if forwarded:
            return forwarded[-1].decode("latin-1").split(",")[-1].strip() or None
    client = scope.get("client")
    return client[0] if client else None


def route_template(scope: Scope) -> str:
    """The route's path template (``/api/v1/users/{user_id}``), never the raw path."""
    # FastAPI keeps an included router's route with its own relative path ("/users/{user_id}");
    # the full template, prefixes included, is on the route context it records in the scope.
    fastapi_scope = scope.get("fastapi")
    effective = (
        fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    )
    path = getattr(effective, "path", None) or getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    # FastAPI serves its documentation pages without recording a route in the scope.
    if scope.get("path") in _documentation_paths(scope.get("app")):
        return str(scope["path"])
    return "unmatched"


def _documentation_paths(app: object) -> set[str]:
    urls = ("docs_url", "redoc_url", "openapi_url", "swagger_ui_oauth2_redirect_url")
    return {url for url in (getattr(app, name, None) for name in urls) if isinstance(url, str)}


class _Answer:
    """One request's response on its way out: the headers every answer carries added, a
    HEAD's body held back, and what was sent (for the access log and the error paths)."""

    __slots__ = ("_api", "_head", "_hsts", "_rid", "_send", "body_sent", "started", "status")

    def __init__(self, send: Send, rid: str, *, api: bool, hsts: bool, head: bool) -> None:
        self._send = send
        self._rid = rid
        self._api = api
        self._hsts = hsts
        self._head = head
        self.status = 500
        self.started = False
        self.body_sent = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = int(message["status"])  # an HTTPStatus would log as its repr
            message["headers"] = _response_headers(
                message, self._rid, api=self._api, hsts=self._hsts
            )
        elif self._head and message["type"] == "http.response.body":
            if self.body_sent:
                raise _HeadAnswered("HEAD: the body is not sent")
            self.body_sent = True
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await self._send(message)


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, *, hsts: bool = False, max_body_bytes: int = 1_048_576
    ) -> None:
        self.app = app
        self.hsts = hsts
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        rid = _incoming_request_id(scope) or uuid.uuid4().hex
        token = _request_id.set(rid)
        user_token = _user_id.set(None)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid)
        start = time.perf_counter()
        interrupted = False
        # HEAD is GET without the body (RFC 9110): routed as GET, its body never sent.
        head = scope["method"] == "HEAD"
        app_scope = {**scope, "method": "GET"} if head else scope
        answer = _Answer(
            send,
            rid,
            api=scope["path"].startswith("/api/"),
            # Behind a TLS-terminating proxy (or when uvicorn serves TLS itself) browsers
            # keep to https.
            hsts=self.hsts or scope.get("scheme") == "https",
            head=head,
        )
        try:
            rejection = self._reject(scope)
            if rejection is not None:
                await _send_error(answer.send, *rejection)
            else:
                await self.app(app_scope, self._limited(receive), answer.send)
        except StreamInterrupted:
            if not answer.started:
                raise
            interrupted = True
        except asyncio.CancelledError:
            # The server gave up waiting for this request: its graceful shutdown ran out of
            # time (FUND_SHUTDOWN_TIMEOUT). The work was rolled back on the way out; the
            # client is told to retry (on another instance), rather than given the
            # plain-text 500 uvicorn sends for a task that ends in an exception.
            error_log.warning(
                "request_cancelled", reason="shutdown timeout", response_started=answer.started
            )
            if not answer.started:
                await _send_error(answer.send, 503, SHUTTING_DOWN, retry_after=1)
            else:
                # A body under way (an export) stays incomplete: uvicorn closes the
                # connection, so the client sees a cut transfer, never a finished one. The
                # cancellation ends here, with this task, rather than in uvicorn's
                # "Exception in ASGI application" and a traceback of every frame.
                interrupted = True
        except Exception as error:
            if head and answer.body_sent and isinstance(error, _HeadAnswered | ClientDisconnect):
                return  # the HEAD was answered; the streamed body behind it was stopped
            if answer.started:
                raise  # too late for an error response; uvicorn closes the connection
            # Answered here rather than by Starlette's outer error middleware, so that this
            # 500 too carries the request id and is counted and logged with it.
            error_log.exception("unhandled_error", error=type(error).__name__)
            await _send_error(answer.send, 500, "Internal server error")
        finally:
            _record(
                app_scope,
                scope["method"],
                answer.status,
                time.perf_counter() - start,
                interrupted=interrupted,
            )
            _request_id.reset(token)
            _user_id.reset(user_token)

    def _reject(self, scope: Scope) -> tuple[int, str] | None:
        """A request answered here, before the application: (status, detail), or None."""
        headers = scope.get("headers", [])
        if sum(len(name) + len(value) for name, value in headers) > MAX_HEADER_BYTES:
            return 431, "Request header fields too large"
        hosts = 0
        for name, value in headers:
            if name == b"host":
                hosts += 1
                if not _VALID_HOST.match(value.decode("latin-1")):
                    return 400, "Invalid Host header"
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return 400, "Invalid Content-Length header"
                if declared > self.max_body_bytes:
                    return 413, BODY_TOO_LARGE
        if hosts != 1 and scope.get("http_version") == "1.1":
            # RFC 9112 section 3.2: exactly one Host in an HTTP/1.1 request, else 400.
            return 400, "Missing Host header" if hosts == 0 else "Invalid Host header"
        return None

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that stops a chunked body once it passes the limit."""
        received = 0
        limit = self.max_body_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI passes an HTTPException raised while reading the body through.
                    raise HTTPException(413, BODY_TOO_LARGE)
            return message

        return limited_receive


def _response_headers(
    start: Message, rid: str, *, api: bool, hsts: bool
) -> list[tuple[bytes, bytes]]:
    """The response's headers with those every answer carries."""
    headers = list(start.get("headers", []))
    present = {name.lower() for name, _ in headers}
    headers.append((b"x-request-id", rid.encode()))
    headers.append((b"x-content-type-options", b"nosniff"))
    if api and b"cache-control" not in present:
        headers.append((b"cache-control", b"no-store"))
    if hsts:
        headers.append((b"strict-transport-security", HSTS))
    return headers


def _record(scope: Scope, method: str, status: int, elapsed: float, *, interrupted: bool) -> None:
    """The request's metrics and its access log line (``scope``: as the router saw it)."""
    route = route_template(scope)
    counted, timed = _series(method, route, status)
    counted.inc()
    timed.observe(elapsed)
    fields: dict[str, Any] = {
        "method": method,
        "route": route,
        "status": status,
        "latency_ms": round(elapsed * 1000, 2),
        "user_id": _user_id.get(),
    }
    if interrupted:
        fields["interrupted"] = True  # the body was cut short (``StreamInterrupted``)
    access_log.info("request", **fields)


@functools.lru_cache(maxsize=1024)
def _series(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    """The request's two metric series, looked up once per method, route and status
    (``labels`` checks and locks on every call: 10 µs a request)."""
    return metrics.REQUESTS.labels(method, route, str(status)), metrics.LATENCY.labels(
        method, route
    )


async def _send_error(send: Send, status: int, detail: str, *, retry_after: int = 0) -> None:
    body = orjson.dumps({"detail": detail})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if retry_after:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _VALID_REQUEST_ID.match(text) else None
    return None
