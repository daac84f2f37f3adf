"""An export the reader leaves, or that is cancelled mid-stream, ends its COPY.

The export is one ``COPY … TO STDOUT`` on a pooled connection of its own
(``fund.db.driver_copy``), fed to the reader through a queue of one chunk. A reader
that goes away must stop the statement on the server and retire the connection, whose
protocol is mid-COPY, rather than hand it to the next request.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest
from sqlalchemy import text

from fund.audit.repository import AuditRepository
from fund.audit.schemas import AuditFilters, ExportFormat
from fund.db import UnitOfWork
from fund.deps import Resources

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
    """COPY statements the server is still running for anyone but this query."""
    async with resources.engine.connect() as conn:
        count = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %'"
                " AND state <> 'idle' AND pid <> pg_backend_pid()"
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
