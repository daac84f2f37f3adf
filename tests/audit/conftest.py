"""A small, known audit trail for the API tests: every filter value, ties, deleted entries."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text

from fund.deps import Resources
from fund.models import Action, ResourceType
from tests.conftest import Account

BASE = datetime(2026, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)

# What a rendering must escape or quote: quote, comma, backslash, tab, line breaks, a
# control character, non-ASCII.
ODD_TEXT = 'a "b", c\\d\te\r\nf \x01 é ✓'

INSERT = text(
    "INSERT INTO audit_logs (timestamp, user_id, action, resource_type, resource_id, details,"
    " ip_address, user_agent, request_id, is_deleted)"
    " VALUES (:timestamp, :user_id, :action, :resource_type, :resource_id,"
    " CAST(:details AS jsonb), CAST(:ip_address AS inet), :user_agent, :request_id, :is_deleted)"
)


async def insert_entries(resources: Resources, rows: list[dict[str, Any]]) -> None:
    """Written as plain SQL: these entries stand for history the service made earlier."""
    async with resources.engine.begin() as conn:
        await conn.execute(
            INSERT, [{**row, "details": orjson.dumps(row["details"]).decode()} for row in rows]
        )


@pytest.fixture
async def trail(resources: Resources, admin: Account, analyst: Account) -> list[int]:
    """Sixty entries spread over two months; the actors are the admin, the analyst or nobody."""
    draw = random.Random(3)
    rows = []
    for n in range(60):
        # Every fifth entry shares its predecessor's timestamp: the id breaks the tie.
        step = n - 1 if n % 5 == 4 else n
        moment = BASE + timedelta(hours=step * 23, microseconds=step * 7)
        rows.append(
            {
                # Some on a whole second: rendered without a fraction.
                "timestamp": moment.replace(microsecond=0) if n % 10 == 0 else moment,
                "user_id": draw.choice([admin.id, analyst.id, None]),
                "action": draw.choice(list(Action)).value,
                "resource_type": draw.choice(list(ResourceType)).value,
                "resource_id": draw.choice(["1", "2", "3", ""]),
                "details": draw.choice(
                    [{}, {"email": "x@example.com"}, {"changes": {"role": {"old": 1, "new": 2.5}}}]
                ),
                "ip_address": draw.choice(["198.51.100.4", "2001:db8::1", None]),
                "user_agent": draw.choice(["curl/8.0", 'quote " and, comma', None, ODD_TEXT]),
                "request_id": f"req-{n}",
                "is_deleted": n % 7 == 3,
            }
        )
    await insert_entries(resources, rows)
    async with resources.engine.connect() as conn:
        ids = (await conn.execute(text("SELECT id FROM audit_logs ORDER BY id"))).scalars()
        return list(ids)


async def walk(
    client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, Any], limit: int = 7
) -> list[dict[str, Any]]:
    """Every item of a listing, following ``next_cursor`` from the first page to the end."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/api/v1/audit-logs", params=query, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        assert page["has_more"] is (cursor is not None)
        if cursor is None:
            return items
