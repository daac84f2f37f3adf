"""The service runs whole on the privileges docs/app_role.sql grants, and needs no more.

The operator's recipe is only as good as the routes it was tried on: here sign-in, reads, a
search, the export, writes, the soft delete, the cache and its invalidation log, and the
migration check ``fund serve`` makes when it starts all run as that role.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
from alembic import command
from redis.asyncio import Redis
from structlog.testing import capture_logs

from fund.config import Settings
from fund.db import alembic_config
from fund.deps import Resources
from fund.models import Role
from tests.cache.conftest import client_for, running_app
from tests.conftest import make_account
from tests.helpers import count_rows
from tests.services import PostgresServer


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Resources, httpx.AsyncClient]]:
    async with running_app(settings) as application, client_for(application) as client:
        yield application.state.resources, client


async def test_every_route_works_as_the_documented_application_role(
    settings: Settings, redis: Redis, postgres: PostgresServer, database: str, app_role: str
) -> None:
    as_role = settings.model_copy(update={"database_url": postgres.url(database, user=app_role)})
    # What `fund serve` does first: migrations are current, so it only reads alembic_version.
    await asyncio.to_thread(
        command.upgrade, alembic_config(as_role.database_url or "", connect_timeout=5), "head"
    )

    async with serving(as_role) as (resources, client):
        admin = await make_account(resources, Role.ADMIN)
        viewer = await make_account(resources, Role.VIEWER)
        signed_in = await client.post(
            "/api/v1/auth/token", data={"username": admin.user.email, "password": admin.password}
        )
        assert signed_in.status_code == 200, signed_in.text

        url = f"/api/v1/users/{viewer.id}"
        first, second = [await client.get(url, headers=admin.headers) for _ in range(2)]
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")

        reads = [
            "/api/v1/users",
            f"/api/v1/users?q={viewer.user.email[:8]}",  # a search first asks EXPLAIN
            "/api/v1/users?include=audit_logs",
            "/api/v1/audit-logs",
            "/api/v1/audit-logs/export?format=csv",
            "/api/v1/stats",
            "/readyz",
        ]
        for read in reads:
            response = await client.get(read, headers=admin.headers)
            assert response.status_code == 200, (read, response.text)

        created = await client.post(
            "/api/v1/users",
            json={"email": "made@example.com", "password": "x" * 12, "full_name": "Made"},
            headers=admin.headers,
        )
        assert created.status_code == 201, created.text
        patched = await client.patch(url, json={"role": "ANALYST"}, headers=admin.headers)
        assert patched.status_code == 200, patched.text
        entry = (await client.get("/api/v1/audit-logs", headers=admin.headers)).json()["items"][0]
        removed = await client.delete(f"/api/v1/audit-logs/{entry['id']}", headers=admin.headers)
        assert removed.status_code == 204, removed.text
        assert (await client.delete(url, headers=admin.headers)).status_code == 204

        # A worker that cannot reach Redis records its invalidation in PostgreSQL (INSERT);
        # this one reads the record before it serves from Redis again, then clears it.
        unreachable = as_role.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
        async with serving(unreachable) as (_, cut_off):
            renamed = await cut_off.patch(url, json={"full_name": "Renamed"}, headers=admin.headers)
            assert renamed.status_code == 200, renamed.text
        assert await count_rows(resources, "cache_invalidations") == 1
        fresh = await client.get(url, headers=admin.headers)
        assert (fresh.json()["full_name"], fresh.headers["x-cache"]) == ("Renamed", "miss")
        assert await count_rows(resources, "cache_invalidations") == 0


async def test_the_cache_works_where_the_server_keeps_its_system_identifier_to_itself(
    settings: Settings, redis: Redis, postgres: PostgresServer, database: str, app_role: str
) -> None:
    """Keys name the database by the cluster's system identifier where the role may read it
    (docs/CACHING.md); a server that revokes ``pg_control_system()`` gets the database's
    oid and name instead, and the cache still serves hits."""
    owner = await asyncpg.connect(postgres.dsn(database))
    try:
        await owner.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    finally:
        await owner.close()
    as_role = settings.model_copy(update={"database_url": postgres.url(database, user=app_role)})

    async with serving(as_role) as (resources, client):
        admin = await make_account(resources, Role.ADMIN)
        url = f"/api/v1/users/{admin.id}"
        with capture_logs() as logged:
            reads = [await client.get(url, headers=admin.headers) for _ in range(3)]

    assert [r.status_code for r in reads] == [200, 200, 200]
    assert [r.headers["x-cache"] for r in reads] == ["miss", "hit", "hit"]
    assert resources.cache.database is not None
    assert resources.cache.database.startswith("db.")
    assert [e["error"] for e in logged if e["event"] == "cache_keys_without_system_identifier"] == [
        "InsufficientPrivilegeError"
    ]
