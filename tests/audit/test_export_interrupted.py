"""An export the reader leaves, or that is cancelled mid-stream, ends its COPY.

The export is one ``COPY … TO STDOUT`` on a pooled connection of its own
(``fund.db.driver_copy``), fed to the reader through a queue of one chunk. A reader
that goes away must stop the statement on the server and retire the connection, whose
protocol is mid-COPY, rather than hand it to the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from contextlib import aclosing
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import text
from starlette.requests import ClientDisconnect
from starlette.types import Message

from fund.audit.repository import AuditRepository
from fund.audit.schemas import AuditFilters, ExportFormat
from fund.db import UnitOfWork
from fund.deps import Resources
from tests.conftest import Account

ALL = AuditFilters(include_deleted=True)
LINE_END = {ExportFormat.JSONL: b"\n", ExportFormat.CSV: b"\r\n"}


async def fill(resources: Resources, rows: int) -> None:
    async with resources.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO audit_logs (action, resource_type, resource_id, details)"
                " SELECT 'LOGIN', 'user', i::text, jsonb_build_object('n', i)"
                " FROM generate_series(1, :rows) AS i"
            ),
            {"rows": rows},
        )


async def copies_running(resources: Resources) -> int:
    """COPY statements still running in this test's database (others share the server)."""
    async with resources.engine.connect() as conn:
        count = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %'"
                " AND state <> 'idle' AND pid <> pg_backend_pid()"
                " AND datname = current_database()"
            )
        )
    return int(count or 0)


async def no_copy_left(resources: Resources) -> bool:
    # The server notices a closed client at its next write: give it a moment.
    for _ in range(100):
        if await copies_running(resources) == 0:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.parametrize("export_format", list(ExportFormat))
async def test_lines_arrive_whole_and_a_reader_that_stops_ends_the_copy(
    resources: Resources, export_format: ExportFormat
) -> None:
    await fill(resources, 50_000)
    end = LINE_END[export_format]
    async with UnitOfWork(resources.sessions) as work:
        stream = AuditRepository(work).copy_lines(ALL, export_format, chunk_bytes=4096)
        first, second = await anext(stream), await anext(stream)
        assert first.endswith(end) and second.endswith(end)  # chunks end between lines
        # At least about the size asked for; past it by at most what asyncpg hands over from
        # one read of the socket (seen up to 112 KiB when the reader lags PostgreSQL).
        assert 4096 - 1024 <= len(first) < 4096 + 2**20
        assert await copies_running(resources) == 1  # the COPY waits for the reader
        await stream.aclose()
    assert await no_copy_left(resources)
    async with UnitOfWork(resources.sessions) as work:  # the pool hands out working connections
        chunks = [c async for c in AuditRepository(work).copy_lines(ALL, export_format)]
    body = b"".join(chunks)
    assert body.count(end) >= 50_000
    assert body.endswith(end)


async def test_a_cancelled_export_ends_the_copy(resources: Resources) -> None:
    await fill(resources, 50_000)
    started = asyncio.Event()

    async def read_all() -> int:  # as the export endpoint reads
        async with UnitOfWork(resources.sessions) as work:
            size = 0
            async with aclosing(
                AuditRepository(work).copy_lines(ALL, ExportFormat.JSONL, chunk_bytes=4096)
            ) as chunks:
                async for chunk in chunks:
                    size += len(chunk)
                    started.set()
                    await asyncio.sleep(0.01)  # a slow client: the COPY is mid-stream
            return size

    task = asyncio.create_task(read_all())
    await started.wait()
    assert await copies_running(resources) == 1
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=30)
    assert done and task.cancelled()
    assert await no_copy_left(resources)


async def test_an_export_cut_short_by_the_database_never_looks_complete(
    capsys: pytest.CaptureFixture[str], app: FastAPI, resources: Resources, admin: Account
) -> None:
    """Once the status line is out, a failed COPY cannot become an error answer: the body
    must end without its last frame (the server then drops the connection), be logged as
    interrupted, and not as an unhandled error."""
    await fill(resources, 50_000)
    token = admin.headers["Authorization"].encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/audit-logs/export",
        "raw_path": b"/api/v1/audit-logs/export",
        "query_string": b"format=csv",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"authorization", token),
            (b"x-request-id", b"export-cut-1"),
        ],
        "client": ("203.0.113.9", 40000),
        "server": ("test", 80),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client sends nothing more, and stays
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)
        bodies = [m for m in sent if m["type"] == "http.response.body"]
        if len(bodies) == 1:  # mid-stream: an operator cancels the statement
            async with resources.engine.connect() as conn:
                cancelled = await conn.scalar(
                    text(
                        "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid))"
                        " FROM pg_stat_activity WHERE query LIKE 'COPY %'"
                        " AND pid <> pg_backend_pid() AND datname = current_database()"
                    )
                )
            assert cancelled == 1
        await asyncio.sleep(0.01)  # a client slower than the database

    capsys.readouterr()
    await asyncio.wait_for(app(scope, receive, send), timeout=60)  # returns, raises nothing

    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert bodies[0]["body"].startswith(b"id,timestamp,")  # the CSV header came with the rows
    assert all(m.get("more_body") for m in bodies)  # never the last frame
    assert sum(len(m["body"]) for m in bodies) < 50_000 * 40  # cut well before the end
    assert await no_copy_left(resources)
    assert resources.export_slots.held == 0  # its turn is given back

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    ours = [line for line in lines if line.get("request_id") == "export-cut-1"]
    events = {line["event"] for line in ours}
    assert "unhandled_error" not in events
    (warning,) = [line for line in ours if line["event"] == "export_interrupted"]
    assert (warning["error"], warning["sqlstate"]) == ("QueryCanceledError", "57014")
    (access,) = [line for line in ours if line["event"] == "request"]
    assert (access["status"], access["interrupted"]) == (200, True)


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_a_client_gone_before_the_first_byte_frees_the_export_at_once(
    app: FastAPI, resources: Resources, admin: Account, spec_version: str
) -> None:
    """The export's COPY has started when the status line is sent (it waits for the first
    chunk). A client already gone by then must not leave that COPY and its connection to
    the garbage collector: both are released before the request returns."""
    await fill(resources, 50_000)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/audit-logs/export",
        "raw_path": b"/api/v1/audit-logs/export",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"authorization", admin.headers["Authorization"].encode()),
        ],
        "client": ("203.0.113.9", 40000),
        "server": ("test", 80),
    }

    async def receive() -> Message:
        return {"type": "http.disconnect"}  # 2.3: Starlette listens, and stops the stream

    async def send(message: Message) -> None:
        if spec_version == "2.4":  # 2.4: the server says so when the app writes
            raise OSError("the client is gone")

    pool = resources.engine.pool
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    with contextlib.suppress(ClientDisconnect):
        await app(scope, receive, send)
    # No await in between: nothing but the response itself can have closed the export.
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    assert resources.export_slots.held == 0
    assert await no_copy_left(resources)
    # Nor a task waiting for the next chunk: asyncio would log "Task was destroyed but it is
    # pending!" at an error level when the garbage collector finds it.
    await asyncio.sleep(0)
    waiting = [t for t in asyncio.all_tasks() if not t.done() and _waits_for_a_chunk(t)]
    assert waiting == []


def _waits_for_a_chunk(task: asyncio.Task[Any]) -> bool:
    return getattr(task.get_coro(), "__qualname__", "") == "Queue.get"
