"""``GET /api/v1/stats``: every count right, and all of them from one snapshot."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text

from fund.audit.repository import AuditRepository
from fund.deps import Resources
from fund.models import Role
from tests.conftest import Account, make_account
from tests.helpers import statements_sent


async def test_every_count_is_what_the_tables_hold(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    await make_account(resources, Role.ANALYST)
    await make_account(resources, Role.VIEWER)
    await make_account(resources, Role.VIEWER, is_active=False)
    async with resources.engine.begin() as conn:
        # An entry from two days ago: in the total, not in the last 24 hours.
        await conn.execute(
            text(
                "INSERT INTO audit_logs (timestamp, action, resource_type, resource_id, details)"
                " VALUES (now() - interval '2 days', 'LOGIN_FAILED', 'user', '', '{}')"
            )
        )

    response = await client.get("/api/v1/stats", headers=admin.headers)

    assert response.status_code == 200
    body = response.json()
    assert body["users"] == {
        "total": 4,
        "active": 3,
        "by_role": {"ADMIN": 1, "ANALYST": 1, "VIEWER": 2},
    }
    assert body["audit_logs"] == {
        "total": 5,  # four CREATE entries and the old failed login
        "last_24h": 4,
        # Every action and role is named, one with no rows as 0: a stable shape.
        "by_action": {"CREATE": 4, "UPDATE": 0, "DELETE": 0, "LOGIN": 0, "LOGIN_FAILED": 1},
    }
    assert body["generated_at"].endswith("Z")


async def test_the_counts_are_read_in_one_read_only_snapshot(
    client: httpx.AsyncClient, admin: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    original = AuditRepository.counts

    async def observed(self: AuditRepository) -> dict[str, Any]:
        settings = await self.session.execute(
            text(
                "SELECT current_setting('transaction_isolation'),"
                " current_setting('transaction_read_only')"
            )
        )
        seen.append(tuple(settings.one()))
        return await original(self)

    monkeypatch.setattr(AuditRepository, "counts", observed)

    assert (await client.get("/api/v1/stats", headers=admin.headers)).status_code == 200
    assert seen == [("repeatable read", "on")]


async def test_each_table_is_counted_in_one_pass(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    """At 10M entries a pass over the audit trail takes about half a second: the total is
    the breakdown's sum, not a pass of its own, and the last 24 hours are a range of the
    time index (docs/CACHING.md)."""
    with statements_sent(resources.engine) as sent:
        assert (await client.get("/api/v1/stats", headers=admin.headers)).status_code == 200

    def counting(table: str) -> list[str]:
        return [s for s, _ in sent if "count(*)" in s and f"FROM {table}" in s]

    [users] = counting("users")
    assert "GROUP BY users.role" in users
    whole, ranged = sorted(counting("audit_logs"), key=lambda s: "WHERE" in s)
    assert "WHERE" not in whole
    assert "GROUP BY audit_logs.action" in whole
    assert "WHERE audit_logs.timestamp >=" in ranged
