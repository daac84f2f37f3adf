"""Small readers the tests share: what the database holds, seen without the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

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
