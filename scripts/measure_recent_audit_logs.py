"""Measure the two ways to give a page of 100 users their 5 newest audit entries.

LATERAL: ``AuditRepository.latest_rows_by_actors`` (one statement, 5 index rows per user).
selectinload: the relationship loaded whole (``WHERE user_id IN (...)``), 5 kept per user
in Python — what ``selectinload(User.audit_logs)`` does.

Usage (a database of its own, migrated to head; ``--load`` fills it server-side once):

    psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE fund_pagination_measure"
    FUND_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/fund_pagination_measure \\
        .venv/bin/fund db upgrade
    .venv/bin/python scripts/measure_recent_audit_logs.py \\
        postgresql+asyncpg://postgres@127.0.0.1:5432/fund_pagination_measure --load
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import selectinload

from fund.audit.repository import AuditRepository
from fund.db import UnitOfWork
from fund.models import User

USERS = 200_000
PAGE = 100
PER_USER = 5
RUNS = 41

# 1M entries: 900k made by the 1,000 newest accounts (900 each), as a back office's few
# staff accounts make most changes, and 100k spread over all 200k users. Two pages are
# measured: the newest 100 users (staff, 900 entries each) and 100 users deep in the list
# (about one entry in two).
LOAD_USERS = """
INSERT INTO users (email, full_name, hashed_password, role, created_at, updated_at)
SELECT 'm' || i || '@measure.test', 'Person ' || i, 'x', 'ANALYST',
       timestamptz '2025-01-01' + i * interval '1 second', now()
FROM generate_series(1, :n) AS i
"""
LOAD_AUDIT = """
INSERT INTO audit_logs (user_id, action, resource_type, resource_id, details, timestamp)
SELECT u.id, 'UPDATE', 'user', (g % 1000)::text, '{"changes": {"full_name": "changed"}}',
       timestamptz '2025-06-01' + g * interval '1 second'
FROM generate_series(1, :n) AS g
JOIN users u ON u.id = :first + (g % :actors)
"""


async def load(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(LOAD_USERS), {"n": USERS})
        first = (await conn.execute(text("SELECT min(id) FROM users"))).scalar_one()
        newest = USERS - 1_000  # the 1,000 newest accounts
        await conn.execute(
            text(LOAD_AUDIT), {"n": 900_000, "first": first + newest, "actors": 1_000}
        )
        await conn.execute(text(LOAD_AUDIT), {"n": 100_000, "first": first, "actors": USERS})
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE users"))
        await conn.execute(text("VACUUM ANALYZE audit_logs"))


async def median_ms(run: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    result = await run()  # warm the caches and the prepared statements
    timings = []
    for _ in range(RUNS):
        start = time.perf_counter()
        await run()
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings), result


async def measure(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], depth: int
) -> None:
    """Both ways for the page of 100 users ``depth`` rows from the newest."""
    async with engine.connect() as conn:
        # Users were loaded in one statement: ids and created_at rise together.
        newest = (await conn.execute(text("SELECT max(id) FROM users"))).scalar_one()
        ids = list(range(newest - depth, newest - depth - PAGE, -1))
        held = (
            await conn.execute(
                text("SELECT count(*) FROM audit_logs WHERE user_id = ANY(:ids)"), {"ids": ids}
            )
        ).scalar_one()

    async def lateral() -> int:
        async with UnitOfWork(sessions) as work:
            return len(await AuditRepository(work).latest_rows_by_actors(ids, PER_USER))

    async def selectin() -> int:
        async with sessions() as session:
            users = (
                await session.scalars(
                    select(User).where(User.id.in_(ids)).options(selectinload(User.audit_logs))
                )
            ).all()
            kept = 0
            for user in users:
                live = [e for e in user.audit_logs if not e.is_deleted]
                live.sort(key=lambda e: (e.timestamp, e.id), reverse=True)
                kept += len(live[:PER_USER])
            return kept

    async def server_ms(statement: str) -> float:
        async with engine.connect() as conn:
            plan = (
                await conn.execute(
                    text(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}"), {"ids": ids}
                )
            ).scalar_one()
            return float(plan[0]["Execution Time"])

    lateral_ms, lateral_rows = await median_ms(lateral)
    selectin_ms, selectin_rows = await median_ms(selectin)
    assert lateral_rows == selectin_rows, (lateral_rows, selectin_rows)
    lateral_server = await server_ms(
        "SELECT latest.* FROM unnest(CAST(:ids AS bigint[])) AS actor(id) CROSS JOIN LATERAL"
        " (SELECT * FROM audit_logs WHERE user_id = actor.id AND is_deleted IS false"
        "  ORDER BY timestamp DESC, id DESC LIMIT 5) AS latest"
    )
    any_server = await server_ms(
        "SELECT * FROM audit_logs WHERE user_id = ANY(CAST(:ids AS bigint[]))"
        " ORDER BY user_id, timestamp DESC, id DESC"
    )
    print(f"  entries held by these users: {held:,}; entries shown: {lateral_rows}")
    print(f"  LATERAL latest-{PER_USER} (repository, ORM):     {lateral_ms:8.2f} ms")
    print(f"  selectinload, whole relationship (ORM): {selectin_ms:8.2f} ms")
    print(f"  server only, one run: LATERAL {lateral_server:.2f} ms, = ANY {any_server:.2f} ms")


async def main(url: str, *, fill: bool) -> None:
    engine = create_async_engine(url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    if fill:
        await load(engine)
    async with engine.connect() as conn:
        total = (await conn.execute(text("SELECT count(*) FROM audit_logs"))).scalar_one()
    print(f"audit_logs rows: {total:,}; timings are medians of {RUNS} runs unless said")
    for name, depth in (("newest 100 users (staff)", 0), ("100 users at depth 100k", 100_000)):
        print(f"{name}:")
        await measure(engine, sessions, depth)
    await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("url", help="postgresql+asyncpg:// URL of a database of its own")
    parser.add_argument("--load", action="store_true", help="fill it first (once)")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.url, fill=arguments.load))
