"""What the cache tests read: Prometheus samples and the raw cache entries."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis

from fund.users.service import CACHE_KIND
from tests.cache.conftest import Keys


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    """The sum of one metric's samples in /metrics whose labels include ``labels``."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in response.text.splitlines():
        sample, _, value = line.rpartition(" ")
        named = sample == name or sample.startswith(name + "{")
        if named and all(label in sample for label in wanted):
            total += float(value)
    return total


async def user_entry(redis: Redis, keys: Keys, user_id: int) -> bytes | None:
    value = await redis.get(keys(CACHE_KIND, user_id))
    assert value is None or isinstance(value, bytes)
    return value
