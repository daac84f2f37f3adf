"""``/readyz`` reports PostgreSQL, not how busy the request pool is (API.md section 6)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import httpx
from redis.asyncio import Redis

from fund.config import Settings
from fund.deps import Resources
from fund.main import create_app
from tests.conftest import Account


async def test_readyz_says_the_database_is_up_while_every_pooled_connection_is_busy(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    """A load balancer takes an instance whose probe fails out of service: a pool busy with
    requests (long exports, a burst) must not read as a database that is down."""
    pool = resources.engine.sync_engine.pool
    async with AsyncExitStack() as held:
        for _ in range(resources.settings.db_pool_size + resources.settings.db_max_overflow):
            await held.enter_async_context(resources.engine.connect())
        assert pool.checkedout() == pool.size() + resources.settings.db_max_overflow  # type: ignore[attr-defined]

        ready = await asyncio.wait_for(client.get("/readyz"), timeout=10)

    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "cache": "ok"}


async def test_a_database_url_that_asks_for_tls_serves_readiness_and_the_cache(
    settings: Settings, redis: Redis, admin: Account, viewer: Account
) -> None:
    """``?sslmode=`` (OPERATIONS.md) is read as asyncpg's ``ssl=``; the places that talk to
    the driver directly must still connect: they sent ``ssl`` to PostgreSQL as a run-time
    setting, so ``/readyz`` said the database was down and the cache never started."""
    assert settings.database_url is not None
    libpq = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    tls = Settings(**{**settings.model_dump(), "database_url": libpq + "?sslmode=prefer"})
    assert tls.database_url is not None and tls.database_url.endswith("?ssl=prefer")
    application = create_app(tls)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            ready = await http.get("/readyz")
            path = f"/api/v1/users/{viewer.id}"
            first = await http.get(path, headers=admin.headers)
            second = await http.get(path, headers=admin.headers)

    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "cache": "ok"}
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
