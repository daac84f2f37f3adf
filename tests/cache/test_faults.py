"""Redis stopped, frozen or unreachable from one worker: every answer stays correct and fresh."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.pool import QueuePool
from structlog.testing import capture_logs

from fund.config import Settings
from fund.deps import Resources
from fund.kit import metrics
from fund.kit.cache import (
    FAILURES_TO_OPEN,
    TOMBSTONE,
    Cache,
    CircuitOpen,
    InvalidationLog,
    create_redis,
    key,
)
from fund.models import Role
from fund.stats.service import CACHE_ID as STATS_CACHE_ID
from fund.stats.service import CACHE_KIND as STATS_CACHE_KIND
from fund.users.service import CACHE_KIND as USER_KIND
from tests.cache.conftest import Keys, PrivateRedis, client_for, free_port, running_app
from tests.cache.helpers import user_entry
from tests.conftest import Account, make_account
from tests.helpers import count_rows

COOLDOWN = 0.2  # cache_settings' breaker cooldown


async def test_with_redis_stopped_every_route_answers_from_postgres(
    cache_settings: Settings, private_redis: PrivateRedis
) -> None:
    # A cooldown longer than the test: no probe, so any Redis call after the first is a defect.
    settings = cache_settings.model_copy(update={"redis_breaker_cooldown": 600})
    async with running_app(settings) as application, client_for(application) as client:
        resources: Resources = application.state.resources
        admin = await make_account(resources, Role.ADMIN)
        viewer = await make_account(resources, Role.VIEWER)
        user_url = f"/api/v1/users/{viewer.id}"
        await client.get(user_url, headers=admin.headers)
        await client.get("/api/v1/stats", headers=admin.headers)

        private_redis.stop()
        calls = resources.cache.calls

        reads = [
            user_url,
            "/api/v1/users/me",
            "/api/v1/users",
            "/api/v1/users?include=audit_logs",
            "/api/v1/audit-logs",
            "/api/v1/stats",
        ]
        for url in reads:
            response = await client.get(url, headers=admin.headers)
            assert response.status_code == 200, (url, response.text)
        assert (await client.get(user_url, headers=admin.headers)).json()["email"] == (
            viewer.user.email
        )

        created = await client.post(
            "/api/v1/users",
            json={"email": "new@example.com", "password": "x" * 12, "full_name": "New"},
            headers=admin.headers,
        )
        assert created.status_code == 201
        patched = await client.patch(
            user_url, json={"full_name": "Changed in outage"}, headers=admin.headers
        )
        assert patched.status_code == 200
        read = await client.get(user_url, headers=admin.headers)
        assert (read.status_code, read.json()["full_name"]) == (200, "Changed in outage")
        assert (await client.delete(user_url, headers=admin.headers)).status_code == 204
        assert (await client.get(user_url, headers=admin.headers)).json()["is_active"] is False

        token = await client.post(
            "/api/v1/auth/token",
            data={"username": admin.user.email, "password": admin.password},
        )
        assert token.status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "degraded", "database": "ok", "cache": "down"}
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200

        # A few failed calls opened the breaker; nothing else was sent to the dead server.
        assert resources.cache.breaker_open
        assert resources.cache.calls - calls == FAILURES_TO_OPEN
        # The failed invalidations wait in PostgreSQL for Redis to come back.
        assert await count_rows(resources, "cache_invalidations") == 2


async def test_redis_frozen_during_a_write_then_resumed_the_next_read_is_fresh(
    keys: Keys, cache_settings: Settings, private_redis: PrivateRedis, raw_redis: Redis
) -> None:
    settings = cache_settings.model_copy(
        update={"redis_socket_timeout": Settings.model_fields["redis_socket_timeout"].default}
    )
    async with running_app(settings) as application, client_for(application) as client:
        resources: Resources = application.state.resources
        admin = await make_account(resources, Role.ADMIN)
        viewer = await make_account(resources, Role.VIEWER)
        url = f"/api/v1/users/{viewer.id}"
        await client.get(url, headers=admin.headers)
        assert (await client.get(url, headers=admin.headers)).headers["x-cache"] == "hit"
        old_entry = await user_entry(raw_redis, keys, viewer.id)
        assert old_entry is not None

        private_redis.pause()
        try:
            patched = await client.patch(url, json={"full_name": "Fresh"}, headers=admin.headers)
            assert patched.status_code == 200
            assert resources.cache.breaker_open
            assert await count_rows(resources, "cache_invalidations") == 1
        finally:
            private_redis.resume()

        # Whether or not the frozen server ran the timed-out tombstone on waking, put the old
        # entry back: the worst case, where the failed invalidation never reached Redis.
        await raw_redis.set(keys(USER_KIND, viewer.id), old_entry)
        await asyncio.sleep(COOLDOWN * 1.5)  # past the cooldown: the next read probes Redis

        read = await client.get(url, headers=admin.headers)
        assert read.json()["full_name"] == "Fresh"
        assert not resources.cache.breaker_open
        assert await user_entry(raw_redis, keys, viewer.id) == TOMBSTONE
        assert await count_rows(resources, "cache_invalidations") == 0


async def test_a_worker_that_never_saw_redis_fail_does_not_serve_the_stale_entry(
    keys: Keys,
    app: FastAPI,
    client: httpx.AsyncClient,
    cache_settings: Settings,
    admin: Account,
    viewer: Account,
    raw_redis: Redis,
) -> None:
    # Worker A cannot reach Redis (a dead port); worker B, on the live server, notices nothing.
    unreachable = cache_settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    url = f"/api/v1/users/{viewer.id}"
    await client.get(url, headers=admin.headers)
    assert (await client.get(url, headers=admin.headers)).headers["x-cache"] == "hit"
    stale = await user_entry(raw_redis, keys, viewer.id)

    async with running_app(unreachable) as worker_a, client_for(worker_a) as client_a:
        patched = await client_a.patch(url, json={"full_name": "Fresh"}, headers=admin.headers)
        assert patched.status_code == 200

    # The old entry is still in Redis: only the shared invalidation log protects worker B.
    assert await user_entry(raw_redis, keys, viewer.id) == stale
    read = await client.get(url, headers=admin.headers)
    assert read.json()["full_name"] == "Fresh"
    assert read.headers["x-cache"] == "miss"
    assert await user_entry(raw_redis, keys, viewer.id) == TOMBSTONE


async def test_readyz_reports_the_outage_and_caching_resumes_by_itself(
    client: httpx.AsyncClient, admin: Account, viewer: Account, private_redis: PrivateRedis
) -> None:
    assert (await client.get("/readyz")).json() == {
        "status": "ok",
        "database": "ok",
        "cache": "ok",
    }
    private_redis.stop()
    down = await client.get("/readyz")
    assert down.status_code == 200
    assert down.json() == {"status": "degraded", "database": "ok", "cache": "down"}
    url = f"/api/v1/users/{viewer.id}"
    assert (await client.get(url, headers=admin.headers)).headers["x-cache"] == "miss"

    private_redis.start()
    await asyncio.sleep(COOLDOWN * 1.5)

    assert (await client.get("/readyz")).json()["cache"] == "ok"
    await client.get(url, headers=admin.headers)
    again = await client.get(url, headers=admin.headers)
    assert (again.status_code, again.headers["x-cache"]) == (200, "hit")


async def test_login_throttling_works_without_redis(
    client: httpx.AsyncClient, viewer: Account, private_redis: PrivateRedis
) -> None:
    private_redis.stop()
    wrong = {"username": viewer.user.email, "password": "not the password at all"}
    for _ in range(5):  # FUND_LOGIN_MAX_FAILURES
        assert (await client.post("/api/v1/auth/token", data=wrong)).status_code == 401

    throttled = await client.post(
        "/api/v1/auth/token", data={"username": viewer.user.email, "password": viewer.password}
    )
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) > 0


async def test_a_password_reset_where_redis_was_unreachable_ends_the_sessions_everywhere(
    keys: Keys,
    app: FastAPI,
    client: httpx.AsyncClient,
    cache_settings: Settings,
    admin: Account,
    viewer: Account,
    raw_redis: Redis,
) -> None:
    """The token version travels in the cached account: a stale entry would let the old
    tokens in. Worker A resets the password without reaching Redis; worker B, whose Redis
    still holds the entry from before, must refuse them."""
    unreachable = cache_settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    assert (await client.get("/api/v1/users/me", headers=viewer.headers)).status_code == 200
    stale = await user_entry(raw_redis, keys, viewer.id)
    assert stale is not None and stale != TOMBSTONE

    async with running_app(unreachable) as worker_a, client_for(worker_a) as client_a:
        reset = await client_a.patch(
            f"/api/v1/users/{viewer.id}",
            json={"password": "reset while redis was away"},
            headers=admin.headers,
        )
        assert reset.status_code == 200

    assert await user_entry(raw_redis, keys, viewer.id) == stale
    refused = await client.get("/api/v1/users/me", headers=viewer.headers)
    assert refused.status_code == 401


async def test_statistics_rebuilt_in_an_outage_do_not_go_back_in_time_when_redis_returns(
    keys: Keys, cache_settings: Settings, private_redis: PrivateRedis, raw_redis: Redis
) -> None:
    """Redis keeps its copy from before the outage (frozen, not restarted); a worker that
    had none rebuilt newer figures meanwhile. Once Redis answers again, that worker serves
    its newer ones, and gives them to Redis, rather than the dashboard going back in time."""
    settings = cache_settings.model_copy(
        update={"redis_socket_timeout": Settings.model_fields["redis_socket_timeout"].default}
    )
    async with running_app(settings) as first, client_for(first) as client:
        admin = await make_account(first.state.resources, Role.ADMIN)
        before = await client.get(STATS, headers=admin.headers)  # built, and published
    assert await raw_redis.get(keys(STATS_CACHE_KIND, STATS_CACHE_ID)) == before.content

    async with running_app(settings) as application, client_for(application) as client:
        resources: Resources = application.state.resources
        await make_account(resources, Role.VIEWER)  # statistics only expire: Redis's copy stays
        private_redis.pause()
        try:
            during = await client.get(STATS, headers=admin.headers)  # rebuilt by this worker
        finally:
            private_redis.resume()
        assert resources.cache.breaker_open
        assert during.json()["users"]["total"] == before.json()["users"]["total"] + 1
        assert (
            await raw_redis.get(keys(STATS_CACHE_KIND, STATS_CACHE_ID)) == before.content
        )  # Redis still holds the old one

        await asyncio.sleep(COOLDOWN * 1.5)  # past the cooldown: the next read probes Redis
        after = await client.get(STATS, headers=admin.headers)

        assert after.json() == during.json()
        assert not resources.cache.breaker_open
        assert await raw_redis.get(keys(STATS_CACHE_KIND, STATS_CACHE_ID)) == during.content


STATS = "/api/v1/stats"


async def test_until_postgresql_names_the_database_redis_is_not_used(
    private_redis: PrivateRedis, raw_redis: Redis
) -> None:
    """The keys name the database; a process that could not read its name yet serves
    without the cache rather than guess a prefix, and asks again after the cooldown."""
    dead = InvalidationLog(f"postgresql://postgres@127.0.0.1:{free_port()}/fund", timeout=0.5)
    cache = Cache(create_redis(private_redis.url, 0.5), cooldown=60, invalidation_log=dead)
    try:
        await raw_redis.set(key("any", "user", 1), b"0 {}")

        assert await cache.get("user", 1) is None
        assert await cache.replace("stats", "global", b"{}", 60) is False
        with pytest.raises(CircuitOpen):
            await cache.incr_window("login_failures", "x", 60)

        assert cache.calls == 0
        assert cache.database is None
        assert await raw_redis.dbsize() == 1
    finally:
        await cache.close()


async def test_a_redis_that_cannot_close_in_time_does_not_stop_the_rest_of_the_shutdown(
    cache_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen under load: redis-py gives a socket 50 ms to close, the close timed out, and the
    worker's shutdown stopped there, leaving its pool's connections open and its metrics."""
    exited: list[bool] = []
    async with running_app(cache_settings) as application, client_for(application) as client:
        resources: Resources = application.state.resources
        admin = await make_account(resources, Role.ADMIN)
        assert (await client.get("/api/v1/users/me", headers=admin.headers)).status_code == 200
        pool = resources.engine.pool
        assert isinstance(pool, QueuePool)
        assert pool.checkedin() >= 1  # pooled, open

        async def close_timed_out() -> None:
            raise RedisTimeoutError("Timed out closing connection after 0.05")

        assert resources.cache.redis is not None
        monkeypatch.setattr(resources.cache.redis, "aclose", close_timed_out)
        monkeypatch.setattr(metrics, "worker_exited", lambda: exited.append(True))
    # The lifespan ended without raising, and went on past the failed close.
    assert pool.checkedin() == 0  # disposed: its connections closed
    assert exited == [True]


async def test_a_frozen_postgresql_is_asked_once_not_once_per_waiting_request(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen PostgreSQL accepts connections and answers nothing, so a read of the
    invalidation log lasts its whole timeout, longer than the cooldown. The requests queued
    behind it must not each read again in turn (they did: 503s 5 s apart, one by one)."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    frozen = InvalidationLog(f"postgresql://postgres@127.0.0.1:{port}/fund", timeout=0.5)
    reads = 0
    fetch = frozen.fetch

    async def counted() -> dict[str, int]:
        nonlocal reads
        reads += 1
        return await fetch()

    monkeypatch.setattr(frozen, "fetch", counted)
    cache = Cache(
        create_redis(private_redis.url, 0.5), cooldown=0.25, invalidation_log=frozen, database="t"
    )
    try:
        values = await asyncio.gather(*(cache.get("user", n) for n in range(10)))

        assert values == [None] * 10  # untrusted: every one a miss, served from PostgreSQL
        assert reads == 1
    finally:
        await cache.close()
        for writer in held:
            writer.close()
        server.close()


async def test_a_redis_database_the_server_does_not_have_is_named_in_the_warning(
    cache_settings: Settings, private_redis: PrivateRedis, admin: Account
) -> None:
    """``FUND_REDIS_URL=…/99`` passes the settings (a number) and leaves the cache down for
    the life of the process; the warning said only ``ResponseError``, which reads as an
    outage. It now carries what Redis answered."""
    assert cache_settings.redis_url is not None
    missing_db = cache_settings.redis_url.rsplit("/", 1)[0] + "/99"
    settings = cache_settings.model_copy(update={"redis_url": missing_db})
    async with running_app(settings) as app, client_for(app) as http:
        with capture_logs() as logged:  # after the app has configured logging
            for _ in range(5):  # reads through the cache, until its breaker opens
                assert (await http.get("/api/v1/users/me", headers=admin.headers)).is_success
        ready = await http.get("/readyz")

    assert ready.json()["cache"] == "down"
    warnings = [entry for entry in logged if entry["event"] == "cache_unavailable"]
    assert warnings, logged
    assert "DB index is out of range" in warnings[0]["detail"]
