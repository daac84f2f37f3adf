"""Cache-aside on a healthy Redis: hits, fresh reads after writes, flushes, at-once revocation."""

from __future__ import annotations

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from fund.config import Settings
from fund.deps import Resources
from fund.kit import cache as cache_module
from fund.kit.cache import TOMBSTONE
from fund.models import Role
from tests.cache.conftest import Keys, PrivateRedis, client_for, running_app
from tests.cache.helpers import metric, user_entry
from tests.conftest import Account, clone_database, drop_database, make_account
from tests.services import PostgresServer


async def test_user_read_is_a_miss_then_a_hit(
    keys: Keys, client: httpx.AsyncClient, admin: Account, viewer: Account, raw_redis: Redis
) -> None:
    first = await client.get(f"/api/v1/users/{viewer.id}", headers=admin.headers)
    second = await client.get(f"/api/v1/users/{viewer.id}", headers=admin.headers)

    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.json() == second.json()
    assert first.json()["email"] == viewer.user.email
    # The entry also holds the account's token version; neither answer shows it.
    shown = {"id", "email", "full_name", "role", "is_active", "created_at", "updated_at"}
    assert set(first.json()) == set(second.json()) == shown
    assert await user_entry(raw_redis, keys, viewer.id) is not None


async def test_a_warm_read_of_a_user_is_one_round_trip_to_redis(
    client: httpx.AsyncClient, admin: Account, viewer: Account, resources: Resources
) -> None:
    url = f"/api/v1/users/{viewer.id}"
    for caller in (admin, viewer):  # warms both entries
        assert (await client.get(url, headers=caller.headers)).status_code == 200
    calls = resources.cache.calls

    other = await client.get(url, headers=admin.headers)  # the caller's entry and the target's
    own = await client.get(url, headers=viewer.headers)  # the caller is the target

    assert (other.headers["x-cache"], own.headers["x-cache"]) == ("hit", "hit")
    assert other.json() == own.json()
    assert resources.cache.calls - calls == 2


async def test_stats_are_a_miss_then_a_hit(client: httpx.AsyncClient, analyst: Account) -> None:
    first = await client.get("/api/v1/stats", headers=analyst.headers)
    second = await client.get("/api/v1/stats", headers=analyst.headers)

    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.json() == second.json()
    assert first.json()["users"]["total"] >= 1


async def test_a_read_after_patch_and_after_delete_is_fresh(
    keys: Keys, client: httpx.AsyncClient, admin: Account, viewer: Account, raw_redis: Redis
) -> None:
    url = f"/api/v1/users/{viewer.id}"
    await client.get(url, headers=admin.headers)
    assert (await client.get(url, headers=admin.headers)).headers["x-cache"] == "hit"

    patched = await client.patch(
        url, json={"full_name": "Renamed", "role": "ANALYST"}, headers=admin.headers
    )
    assert patched.status_code == 200
    after_patch = await client.get(url, headers=admin.headers)
    assert after_patch.headers["x-cache"] == "miss"
    assert (after_patch.json()["full_name"], after_patch.json()["role"]) == ("Renamed", "ANALYST")
    # The tombstone stays, so a reader that loaded the old row cannot put it back.
    assert await user_entry(raw_redis, keys, viewer.id) == TOMBSTONE

    assert (await client.delete(url, headers=admin.headers)).status_code == 204
    after_delete = await client.get(url, headers=admin.headers)
    assert after_delete.json()["is_active"] is False


async def test_a_flushed_redis_changes_nothing_visible(
    client: httpx.AsyncClient, admin: Account, viewer: Account, raw_redis: Redis
) -> None:
    url = f"/api/v1/users/{viewer.id}"
    await client.get(url, headers=admin.headers)
    warm = await client.get(url, headers=admin.headers)
    assert warm.headers["x-cache"] == "hit"

    await raw_redis.flushall()
    after_flush = await client.get(url, headers=admin.headers)
    assert after_flush.status_code == 200
    assert after_flush.json() == warm.json()
    assert after_flush.headers["x-cache"] == "miss"
    assert (await client.get(url, headers=admin.headers)).headers["x-cache"] == "hit"

    await client.patch(url, json={"full_name": "After flush"}, headers=admin.headers)
    await raw_redis.flushall()  # the tombstone goes too: the row is still read fresh
    assert (await client.get(url, headers=admin.headers)).json()["full_name"] == "After flush"
    stats = await client.get("/api/v1/stats", headers=admin.headers)
    assert stats.status_code == 200


async def test_a_deactivated_user_is_refused_at_once_with_a_warm_cache(
    client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    own = f"/api/v1/users/{viewer.id}"
    await client.get(own, headers=viewer.headers)
    assert (await client.get(own, headers=viewer.headers)).headers["x-cache"] == "hit"

    assert (await client.delete(own, headers=admin.headers)).status_code == 204

    refused = await client.get("/api/v1/users/me", headers=viewer.headers)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"


async def test_a_demoted_admin_loses_admin_routes_at_once(
    client: httpx.AsyncClient, admin: Account, resources: Resources
) -> None:
    other = await make_account(resources, Role.ADMIN)
    for _ in range(2):  # the second request authenticates from the cache
        assert (await client.get("/api/v1/audit-logs", headers=other.headers)).status_code == 200

    demoted = await client.patch(
        f"/api/v1/users/{other.id}", json={"role": "VIEWER"}, headers=admin.headers
    )
    assert demoted.status_code == 200

    assert (await client.get("/api/v1/audit-logs", headers=other.headers)).status_code == 403


async def test_cache_metrics_move(
    client: httpx.AsyncClient, admin: Account, viewer: Account, private_redis: PrivateRedis
) -> None:
    hits = await metric(client, "fund_cache_hits_total", kind="user")
    misses = await metric(client, "fund_cache_misses_total", kind="user")
    errors = await metric(client, "fund_cache_errors_total")

    url = f"/api/v1/users/{viewer.id}"
    await client.get(url, headers=admin.headers)  # admin: hit or miss; viewer: miss
    await client.get(url, headers=admin.headers)  # both hits
    assert await metric(client, "fund_cache_misses_total", kind="user") >= misses + 1
    assert await metric(client, "fund_cache_hits_total", kind="user") >= hits + 2

    private_redis.stop()
    assert (await client.get(url, headers=admin.headers)).status_code == 200
    assert await metric(client, "fund_cache_errors_total") >= errors + 1


async def test_a_populate_that_lands_too_late_is_dropped(
    keys: Keys,
    client: httpx.AsyncClient,
    admin: Account,
    viewer: Account,
    raw_redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A populate Redis executes after its window (say it sat in a frozen server's socket) could
    # land after the tombstone of a write it predates; the script refuses it.
    monkeypatch.setattr(cache_module, "POPULATE_WINDOW_MS", -1_000)
    url = f"/api/v1/users/{viewer.id}"
    assert (await client.get(url, headers=admin.headers)).status_code == 200
    assert await user_entry(raw_redis, keys, viewer.id) is None

    monkeypatch.undo()
    await client.get(url, headers=admin.headers)
    assert await user_entry(raw_redis, keys, viewer.id) is not None


async def test_the_invalidation_logs_connection_is_named_in_pg_stat_activity(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    """One connection per process beside the engine's pool: an operator sizing
    ``max_connections`` finds it by name (docs/OPERATIONS.md, sizing the pool)."""
    assert (await client.get("/api/v1/users/me", headers=admin.headers)).status_code == 200
    async with resources.engine.connect() as conn:
        names = (
            await conn.execute(
                text(
                    "SELECT application_name FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        ).scalars()
        assert cache_module.APPLICATION_NAME in set(names)


async def test_two_databases_on_one_redis_database_never_read_each_others_entries(
    cache_settings: Settings, postgres: PostgresServer, template_database: str
) -> None:
    """Staging and production pointed at one Redis database by mistake: the same user id
    is an ADMIN in one and a VIEWER in the other, and each is served only its own."""
    other = await clone_database(postgres, template_database)
    try:
        production = cache_settings
        staging = cache_settings.model_copy(update={"database_url": postgres.url(other)})
        async with (
            running_app(production) as prod_app,
            client_for(prod_app) as prod,
            running_app(staging) as staging_app,
            client_for(staging_app) as stage,
        ):
            boss = await make_account(prod_app.state.resources, Role.ADMIN)
            tester = await make_account(staging_app.state.resources, Role.VIEWER)
            assert boss.id == tester.id  # the premise: one id in both databases

            for _ in range(2):  # the second read of each is served from Redis
                assert (await prod.get("/api/v1/users/me", headers=boss.headers)).json() == (
                    boss.user.model_dump(mode="json")
                )
                me = await stage.get("/api/v1/users/me", headers=tester.headers)
                assert me.json() == tester.user.model_dump(mode="json")
            assert (await prod.get("/api/v1/stats", headers=boss.headers)).status_code == 200
            assert (await stage.get("/api/v1/stats", headers=tester.headers)).status_code == 403
            hit = await prod.get(f"/api/v1/users/{boss.id}", headers=boss.headers)
            assert hit.headers["x-cache"] == "hit"

            prod_key = prod_app.state.resources.cache.key("user", boss.id)
            staging_key = staging_app.state.resources.cache.key("user", tester.id)
            assert prod_key != staging_key
    finally:
        await drop_database(postgres, other)
