"""Fixtures: a migrated template database built once, a fresh clone of it per test, real Redis.

Each test gets its own database (``CREATE DATABASE … TEMPLATE``, about 0.1 s), so tests
commit for real, run concurrent requests and worker processes, and never see each
other's rows. Redis is flushed before each test (database 15 of the machine's Redis).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from fund.config import Environment, Settings
from fund.db import UnitOfWork, alembic_config
from fund.deps import Resources
from fund.kit.security import issue_access_token
from fund.main import create_app
from fund.models import Role
from fund.users.schemas import UserCreate, UserRead
from fund.users.service import UserService
from tests.services import PostgresServer, find_postgres, find_redis

PASSWORD = "correct horse battery staple"
SECRET = "test-secret-key-that-is-long-enough-0123456789"
_names = itertools.count()
APP_ROLE_GRANTS = Path(__file__).parents[1] / "docs" / "app_role.sql"


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    return find_postgres()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return find_redis()


@pytest.fixture(scope="session")
async def template_database(postgres: PostgresServer) -> AsyncIterator[str]:
    """Built once per run by the real migrations (``alembic upgrade head``)."""
    name = f"fund_test_{os.getpid()}_template"
    admin = await postgres.admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        from alembic import command

        await asyncio.to_thread(
            command.upgrade, alembic_config(postgres.url(name), connect_timeout=5), "head"
        )
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def clone_database(postgres: PostgresServer, template: str) -> str:
    name = f"fund_test_{os.getpid()}_{next(_names)}"
    admin = await postgres.admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return name


async def drop_database(postgres: PostgresServer, name: str) -> None:
    admin = await postgres.admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database(postgres: PostgresServer, template_database: str) -> AsyncIterator[str]:
    """A database of this test's own, migrated to head; its name."""
    name = await clone_database(postgres, template_database)
    yield name
    await drop_database(postgres, name)


@pytest.fixture
async def app_role(postgres: PostgresServer, database: str) -> AsyncIterator[str]:
    """A login role with exactly the privileges docs/app_role.sql grants the service."""
    role = f"fund_app_{os.getpid()}"
    grants = re.sub(r"\bfund_app\b", role, APP_ROLE_GRANTS.read_text())
    admin = await postgres.admin()
    conn = await asyncpg.connect(postgres.dsn(database))
    try:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute(grants)
        yield role
    finally:
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.close()
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


@pytest.fixture
def database_url(postgres: PostgresServer, database: str) -> str:
    return postgres.url(database)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def settings(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return Settings(
        env=Environment.TEST,
        database_url=database_url,
        redis_url=redis_url,
        secret_key=SECRET,
        data_dir=tmp_path_factory.mktemp("fund-data"),
        db_pool_size=5,
        log_json=True,
    )


@pytest.fixture
async def app(settings: Settings, redis: Redis) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def resources(app: FastAPI) -> Resources:
    resources: Resources = app.state.resources
    return resources


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 51234))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@dataclass(frozen=True)
class Account:
    user: UserRead
    headers: dict[str, str]
    password: str = PASSWORD

    @property
    def id(self) -> int:
        return self.user.id


async def make_account(
    resources: Resources,
    role: Role = Role.VIEWER,
    *,
    email: str | None = None,
    full_name: str | None = None,
    is_active: bool = True,
    password: str = PASSWORD,
) -> Account:
    """A user made through the service (so with its CREATE entry), and a token for it."""
    n = next(_names)
    from fund.audit.service import Actor

    async with UnitOfWork(resources.sessions) as work:
        service = UserService(work, resources.cache, resources.cursors, cache_ttl=300)
        user = await service.create(
            Actor(None, None, "tests", None),
            UserCreate(
                email=email or f"{role.value.lower()}{n}@example.com",
                password=password,
                full_name=full_name or f"{role.value.title()} {n}",
                role=role,
                is_active=is_active,
            ),
        )
        await work.commit()
    token = issue_access_token(resources.token_key, user.id, 0, 30).token  # a new account's version
    return Account(user, {"Authorization": f"Bearer {token}"}, password)


@pytest.fixture
async def admin(resources: Resources) -> Account:
    return await make_account(resources, Role.ADMIN)


@pytest.fixture
async def analyst(resources: Resources) -> Account:
    return await make_account(resources, Role.ANALYST)


@pytest.fixture
async def viewer(resources: Resources) -> Account:
    return await make_account(resources, Role.VIEWER)


@pytest.fixture
def anyio_backend() -> Iterator[str]:
    yield "asyncio"
