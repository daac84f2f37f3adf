"""An export the reader leaves, or that is cancelled mid-fetch, leaves its connection clean.

The export reads batches on the driver with the next fetch already in flight
(``fund.db.driver_batches``); SQLAlchemy did not start that fetch, so the stream
itself must let it end before the session rolls back or runs anything else.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from sqlalchemy import text

from fund.audit.repository import AuditRepository
from fund.audit.schemas import AuditFilters, ExportFormat
from fund.db import UnitOfWork
from fund.deps import Resources

ALL = AuditFilters(include_deleted=True)


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


async def test_a_reader_that_stops_early_leaves_the_session_usable(
    resources: Resources,
) -> None:
    await fill(resources, 5_000)
    async with UnitOfWork(resources.sessions) as work:
        session = work.session
        stream = AuditRepository(work).stream_lines(ALL, ExportFormat.CSV, batch=100)
        first = await anext(stream)
        assert len(first) == 100
        await stream.aclose()  # a fetch of the next 100 was in flight
        assert await session.scalar(text("SELECT count(*) FROM audit_logs")) >= 5_000
        await session.rollback()


async def test_a_cancelled_export_leaves_the_session_usable(resources: Resources) -> None:
    await fill(resources, 50_000)
    async with UnitOfWork(resources.sessions) as work:
        session = work.session
        started = asyncio.Event()

        async def read_all() -> int:  # as the export endpoint reads
            count = 0
            async with aclosing(
                AuditRepository(work).stream_lines(ALL, ExportFormat.CSV, batch=500)
            ) as rows:
                async for batch in rows:
                    count += len(batch)
                    started.set()
                    await asyncio.sleep(0)  # the next fetch is in flight when cancelled here
            return count

        task = asyncio.create_task(read_all())
        await started.wait()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=30)
        assert done and task.cancelled()
        await session.rollback()
        assert await session.scalar(text("SELECT 1")) == 1


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


async def test_json_lines_arrive_in_whole_lines_and_a_reader_that_stops_ends_the_copy(
    resources: Resources,
) -> None:
    await fill(resources, 50_000)
    async with UnitOfWork(resources.sessions) as work:
        stream = AuditRepository(work).copy_json_lines(ALL, chunk_bytes=4096)
        first, second = await anext(stream), await anext(stream)
        assert first.endswith(b"\n") and second.endswith(b"\n")  # chunks end between lines
        assert 4096 <= len(first) < 4096 + 65536  # plus at most what asyncpg hands over at once
        assert await copies_running(resources) == 1  # the COPY waits for the reader
        await stream.aclose()
    assert await no_copy_left(resources)
    async with UnitOfWork(resources.sessions) as work:  # the pool hands out working connections
        chunks = [c async for c in AuditRepository(work).copy_json_lines(ALL)]
    assert sum(c.count(b"\n") for c in chunks) >= 50_000


async def test_a_cancelled_json_lines_export_ends_the_copy(resources: Resources) -> None:
    await fill(resources, 50_000)
    started = asyncio.Event()

    async def read_all() -> int:  # as the export endpoint reads
        async with UnitOfWork(resources.sessions) as work:
            size = 0
            async with aclosing(
                AuditRepository(work).copy_json_lines(ALL, chunk_bytes=4096)
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
