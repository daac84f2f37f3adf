"""The request middleware's answer to a request the server gives up on at shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.testing import capture_logs

from fund.kit.request_context import SHUTTING_DOWN, RequestContextMiddleware

SCOPE: dict[str, Any] = {
    "type": "http",
    "method": "GET",
    "path": "/api/v1/users",
    "raw_path": b"/api/v1/users",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1"), (b"x-request-id", b"shutdown-1")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
    "scheme": "http",
}


async def cancelled_midway(app: ASGIApp, reached: asyncio.Event) -> tuple[bool, list[Message]]:
    """Run ``app`` behind the middleware, cancel it once it sets ``reached`` (as uvicorn
    cancels what still runs when the graceful shutdown times out): whether the request
    ended cancelled, and what it sent."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    request = asyncio.ensure_future(RequestContextMiddleware(app)(SCOPE, receive, send))
    await reached.wait()
    request.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
    await asyncio.wait({request})
    return request.cancelled(), sent


async def test_a_request_cancelled_by_the_shutdown_timeout_gets_a_503_to_retry() -> None:
    """uvicorn's own answer to a task that ends so is a plain-text 500."""
    waiting = asyncio.Event()

    async def stuck(_scope: Scope, _receive: Receive, _send: Send) -> None:
        waiting.set()
        await asyncio.Event().wait()  # a statement waiting on a lock, say

    cancelled, sent = await cancelled_midway(stuck, waiting)

    assert not cancelled  # answered, and ended as a completed request
    start, body = sent
    headers = dict(start["headers"])
    assert start["status"] == 503
    assert headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"x-request-id"] == b"shutdown-1"
    assert orjson.loads(body["body"]) == {"detail": SHUTTING_DOWN}


async def test_a_cancelled_request_whose_answer_had_begun_ends_incomplete_in_one_line() -> None:
    """An export under way when the shutdown times out: nothing more can be said on its
    started answer, and above all not its end, or the client would take the cut body for
    the whole. The cancellation stops here (one warning), not in uvicorn's traceback."""
    begun = asyncio.Event()

    async def streaming(_scope: Scope, _receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"line 1\n", "more_body": True})
        begun.set()
        await asyncio.Event().wait()

    with capture_logs() as logged:
        cancelled, sent = await cancelled_midway(streaming, begun)

    assert not cancelled
    assert [m.get("more_body") for m in sent] == [None, True]  # never a last body message
    warnings = [e for e in logged if e["log_level"] == "warning"]
    assert [(e["event"], e["response_started"]) for e in warnings] == [("request_cancelled", True)]
    assert [e["interrupted"] for e in logged if e["event"] == "request"] == [True]
