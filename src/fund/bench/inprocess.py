"""What a route costs one worker, without HTTP: CPU time per request, the app called in-process.

The HTTP figures mix the route's own cost with the server's, the load generator's and
whatever else shares the cores. Here the application is called directly through ASGI, in
a loop, on this process's event loop, and timed by this process's CPU clock
(``time.process_time``: the worker's Python, redis-py and asyncpg work, not PostgreSQL's
or Redis's). Each figure is the best of a few rounds, so a busy neighbour inflates it less.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import structlog
from fastapi import FastAPI

from fund.bench.http import sign_in_form
from fund.config import Settings
from fund.main import create_app

T = TypeVar("T")

ROUNDS = 5
ROUTES = ("ping", "users", "users_deep", "user", "audit", "audit_deep")
"""The routes measured: the floor and the two with a bar against it (``fund.bench`` keys)."""
WARM_UP = 100


async def _call(
    app: FastAPI,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
) -> tuple[int, bytes]:
    """One request through the ASGI interface: (status, body)."""
    route, _, query = path.partition("?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never goes away
        raise AssertionError("unreachable")

    status = 0
    chunks: list[bytes] = []

    async def send(message: Mapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


@contextmanager
def _logging_kept() -> Iterator[None]:
    """The process's logging as it was before: making an app configures it for a worker."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)


async def cpu_per_request(
    settings: Settings,
    email: str,
    password: str,
    paths: Mapping[str, str],
    *,
    requests: int,
) -> dict[str, float]:
    """Milliseconds of this process's CPU per request, per key of ``paths`` (GETs, signed in).

    On an event loop of its own, in a thread, the loop a worker runs (uvloop under
    ``fund serve``), while the caller's loop waits.
    """

    def measure() -> dict[str, float]:
        with _logging_kept():
            app = create_app(settings, settle_heap=True)  # as a worker runs it
            return _run(_measure(app, email, password, paths, requests=requests))

    return await asyncio.to_thread(measure)


def _run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] leaves it out where it cannot run
        return asyncio.run(main)
    return uvloop.run(main)


async def _measure(
    app: FastAPI, email: str, password: str, paths: Mapping[str, str], *, requests: int
) -> dict[str, float]:
    costs: dict[str, float] = {}
    async with app.router.lifespan_context(app):
        status, body = await _call(
            app,
            "POST",
            "/api/v1/auth/token",
            [(b"content-type", b"application/x-www-form-urlencoded")],
            sign_in_form(email, password),
        )
        if status != 200:
            raise RuntimeError(f"in-process sign-in failed: {status} {body[:200]!r}")
        token = json.loads(body)["access_token"]
        headers = [(b"authorization", f"Bearer {token}".encode())]
        for key, path in paths.items():
            for _ in range(WARM_UP):
                status, body = await _call(app, "GET", path, headers)
            if status != 200:
                raise RuntimeError(f"{path}: {status} {body[:200]!r}")
            best = float("inf")
            for _ in range(ROUNDS):
                started = time.process_time()
                for _ in range(requests):
                    await _call(app, "GET", path, headers)
                best = min(best, (time.process_time() - started) / requests)
            costs[key] = best * 1000
    return costs
