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
        stream = AuditRepository(work).stream_lines(ALL, ExportFormat.JSONL, batch=100)
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
                AuditRepository(work).stream_lines(ALL, ExportFormat.JSONL, batch=500)
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
