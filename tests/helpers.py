"""Small readers the tests share: what the database holds, seen without the API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fund.db import on_statement
from fund.deps import Resources


async def audit_rows(resources: Resources, **where: Any) -> list[dict[str, Any]]:
    """Audit entries (oldest first), optionally filtered by equal columns."""
    clauses = " AND ".join(f"{column} = :{column}" for column in where) or "true"
    async with resources.engine.connect() as conn:
        result = await conn.execute(
            text(f"SELECT * FROM audit_logs WHERE {clauses} ORDER BY id"),
            where,
        )
        return [dict(row) for row in result.mappings()]


async def count_rows(resources: Resources, table: str) -> int:
    async with resources.engine.connect() as conn:
        value = await conn.scalar(text(f"SELECT count(*) FROM {table}"))
        return int(value or 0)


async def until(
    resources: Resources, sql: str, holds: Callable[[Any], bool], *, what: str, **params: Any
) -> None:
    """Read ``sql``'s one value every 20 ms until ``holds`` is true of it (10 s at most)."""
    for _ in range(500):
        async with resources.engine.connect() as conn:
            if holds(await conn.scalar(text(sql), params)):
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never saw {what}")


async def prepared_plans(conn: AsyncConnection, marker: str) -> dict[str, tuple[int, int]]:
    """(generic plans, custom plans) of the connection's prepared statements that hold
    ``marker``: how often PostgreSQL planned each afresh."""
    rows = await conn.execute(
        text("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
    )
    return {
        row.statement: (row.generic_plans, row.custom_plans)
        for row in rows
        if marker in row.statement and "pg_prepared_statements" not in row.statement
    }


@contextmanager
def statements_sent(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the engine sends, with its parameters, while the block runs."""
    sent: list[tuple[str, Any]] = []
    stop = on_statement(engine, lambda statement, parameters: sent.append((statement, parameters)))
    try:
        yield sent
    finally:
        stop()
