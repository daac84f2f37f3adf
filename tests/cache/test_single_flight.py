"""A cold /stats key under concurrent requests costs about one rebuild."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from fund.config import Settings
from fund.deps import Resources
from fund.stats.service import CACHE_ID, CACHE_KIND, StatsService
from tests.cache.conftest import Keys, PrivateRedis, client_for, running_app
from tests.cache.helpers import metric
from tests.conftest import Account

CONCURRENT = 50


def count_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count StatsService rebuilds (each one runs the aggregate queries)."""
    builds: list[int] = []
    original: Callable[[StatsService], Awaitable[bytes]] = StatsService._build

    async def counted(self: StatsService) -> bytes:
        builds.append(1)
        return await original(self)

    monkeypatch.setattr(StatsService, "_build", counted)
    return builds


async def burst(client: httpx.AsyncClient, account: Account, n: int) -> list[httpx.Response]:
    return list(
        await asyncio.gather(
            *(client.get("/api/v1/stats", headers=account.headers) for _ in range(n))
        )
    )


async def db_queries(client: httpx.AsyncClient) -> float:
    return await metric(client, "fund_db_queries_total")


async def test_a_cold_stats_key_is_rebuilt_once_under_concurrent_requests(
    client: httpx.AsyncClient, analyst: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = count_builds(monkeypatch)
    await client.get("/api/v1/users/me", headers=analyst.headers)  # the caller, from the cache

    before = await db_queries(client)
    responses = await burst(client, analyst, CONCURRENT)
    burst_queries = await db_queries(client) - before

    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["generated_at"] for r in responses}) == 1
    assert len(builds) == 1
    assert sum(r.headers["x-cache"] == "miss" for r in responses) >= 1

    one_build = await _queries_of_one_rebuild(client, analyst)
    assert burst_queries == one_build


async def _queries_of_one_rebuild(client: httpx.AsyncClient, analyst: Account) -> float:
    app: FastAPI = client._transport.app  # type: ignore[attr-defined]
    redis = app.state.resources.cache.redis
    await redis.delete(app.state.resources.cache.key(CACHE_KIND, CACHE_ID))
    before = await db_queries(client)
    assert (await client.get("/api/v1/stats", headers=analyst.headers)).headers["x-cache"] == "miss"
    return await db_queries(client) - before


async def test_with_redis_down_concurrent_requests_share_one_rebuild(
    client: httpx.AsyncClient,
    analyst: Account,
    private_redis: PrivateRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds = count_builds(monkeypatch)
    private_redis.stop()

    responses = await burst(client, analyst, CONCURRENT)

    assert {r.status_code for r in responses} == {200}
    assert len(builds) == 1


async def test_two_workers_share_one_rebuild_through_redis(
    client: httpx.AsyncClient,
    cache_settings: Settings,
    analyst: Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds = count_builds(monkeypatch)
    async with running_app(cache_settings) as other, client_for(other) as other_client:
        responses = await asyncio.gather(
            burst(client, analyst, CONCURRENT // 2), burst(other_client, analyst, CONCURRENT // 2)
        )

    assert {r.status_code for batch in responses for r in batch} == {200}
    assert len(builds) <= 2  # one per worker at the very worst; the Redis lock makes it one


async def test_a_rebuild_that_outlived_its_lock_leaves_the_next_holders_lock_alone(
    keys: Keys, resources: Resources, raw_redis: Redis
) -> None:
    lock = keys("lock", "probe:1")

    async def slow_build() -> bytes:
        # As if this build ran past LOCK_MS: the lock expired and another process took it.
        assert await raw_redis.get(lock) is not None
        await raw_redis.set(lock, b"another process's token")
        return b"{}"

    await resources.cache.get_or_build("probe", 1, 60, slow_build)

    assert await raw_redis.get(lock) == b"another process's token"


async def test_a_rebuild_releases_its_own_lock(
    keys: Keys, resources: Resources, raw_redis: Redis
) -> None:
    async def build() -> bytes:
        assert await raw_redis.get(keys("lock", "probe:2")) is not None
        return b"{}"

    await resources.cache.get_or_build("probe", 2, 60, build)

    assert await raw_redis.get(keys("lock", "probe:2")) is None
