"""``/readyz`` reports PostgreSQL, not how busy the request pool is (API.md section 6)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import httpx

from fund.deps import Resources


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
