"""The bench's own database: created beside the configured one, seeded once, reused after.

The bench never touches the developer's database: it creates ``fund_bench`` (or ``--database``)
on the same server. A comment on that database records what was seeded into it, and how long
the seeding took, so a second run with the same sizes and seed reuses the data (seeding 10M
rows takes a minute or two) and still reports the seeding figures.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from fund.config import Settings
from fund.db import alembic_config

BENCH_ADMIN_EMAIL = "fund-bench-admin@example.org"
# The bench database is local, disposable and made by the bench itself; its admin is too.
BENCH_ADMIN_PASSWORD = "fund-bench-local-password"  # noqa: S105
_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class BenchDatabase:
    url: str
    name: str
    reused: bool
    seed_seconds: float | None
    seed_phases: dict[str, float]
    seeded_at: datetime | None = None
    """When the data was seeded; on reuse, the seeding figures are that earlier run's."""


def bench_url(settings: Settings, name: str) -> str:
    if not _SAFE_NAME.match(name):
        raise ValueError(f"not a plain database name: {name!r}")
    assert settings.database_url is not None
    return make_url(settings.database_url).set(database=name).render_as_string(hide_password=False)


OWNED = "fund bench data"
"""How the comment of a database the bench made starts: the only databases it may drop."""


class NotBenchDatabase(Exception):
    """The database named for the bench exists and was not made by it: it is left alone."""


def seed_marker(users: int, audit_logs: int, seed: int) -> str:
    return f"{OWNED}: users={users} audit_logs={audit_logs} seed={seed}"


@asynccontextmanager
async def _maintenance_connection(settings: Settings) -> AsyncIterator[AsyncConnection]:
    """A connection to the server's ``postgres`` database, for database-level statements."""
    engine = create_async_engine(bench_url(settings, "postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


async def _maintenance(settings: Settings, name: str) -> tuple[bool, str | None]:
    """Whether the database exists, and its seed marker (its comment) if so."""
    async with _maintenance_connection(settings) as conn:
        marker = (
            await conn.execute(
                text(
                    "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                    "WHERE datname = :name"
                ),
                {"name": name},
            )
        ).one_or_none()
        return marker is not None, marker[0] if marker is not None else None


async def _recreate(settings: Settings, name: str) -> None:
    async with _maintenance_connection(settings) as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
        # Marked as the bench's at once, so a seed cut short can be dropped by the next run.
        await conn.execute(text(f"COMMENT ON DATABASE \"{name}\" IS '{OWNED}: seeding'"))


async def _mark(settings: Settings, name: str, marker: str) -> None:
    async with _maintenance_connection(settings) as conn:
        quoted = marker.replace("'", "''")
        await conn.execute(text(f"COMMENT ON DATABASE \"{name}\" IS '{quoted}'"))


async def drop_bench_database(settings: Settings, name: str) -> None:
    async with _maintenance_connection(settings) as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def prepare_bench_database(
    settings: Settings,
    name: str,
    *,
    users: int,
    audit_logs: int,
    seed: int,
    progress: bool,
) -> BenchDatabase:
    """The bench database at the requested sizes: reused when it holds them, else seeded anew."""
    from fund.seed import seed_database

    url = bench_url(settings, name)
    wanted = seed_marker(users, audit_logs, seed)
    exists, comment = await _maintenance(settings, name)
    marker, _, record = (comment or "").partition("\n")
    if exists and not marker.startswith(OWNED):
        raise NotBenchDatabase(
            f'database "{name}" exists and was not made by fund bench, so it is not dropped'
            " to seed: name another with --database, or drop it yourself if it is expendable"
        )
    migrations = alembic_config(url, connect_timeout=settings.db_connect_timeout)
    if exists and marker == wanted:
        await asyncio.to_thread(command.upgrade, migrations, "head")
        seconds, phases, seeded_at = _seeding_record(record)
        return BenchDatabase(url, name, True, seconds, phases, seeded_at)
    await _recreate(settings, name)
    await asyncio.to_thread(command.upgrade, migrations, "head")
    seeded_at = datetime.now(UTC)
    result = await seed_database(
        url, users=users, audit_logs=audit_logs, seed=seed, progress=progress
    )
    await _analyze(url)
    # The seeding figures travel with the data, for the reports of the runs that reuse it.
    record = json.dumps(
        {"seconds": result.seconds, "phases": result.phases, "at": seeded_at.isoformat()}
    )
    await _mark(settings, name, f"{wanted}\n{record}")
    return BenchDatabase(url, name, False, result.seconds, dict(result.phases), seeded_at)


def _seeding_record(record: str) -> tuple[float | None, dict[str, float], datetime | None]:
    """The seeding figures a marker carries (none in one written before they were kept)."""
    try:
        data = json.loads(record)
        return (
            float(data["seconds"]),
            {str(k): float(v) for k, v in data["phases"].items()},
            datetime.fromisoformat(data["at"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, {}, None


async def _analyze(url: str) -> None:
    """Fresh planner statistics: the plans measured are the plans production would get."""
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text("VACUUM (ANALYZE) users"))
            await conn.execute(text("VACUUM (ANALYZE) audit_logs"))
    finally:
        await engine.dispose()


async def ensure_bench_admin(settings: Settings, url: str) -> None:
    """The ADMIN the HTTP scenarios log in as (made once; the CLI path, so it is audited)."""
    from fund.bootstrap import CreateUserFailed, create_user

    bench_settings = settings.model_copy(update={"database_url": url})
    try:
        await create_user(
            bench_settings, BENCH_ADMIN_EMAIL, BENCH_ADMIN_PASSWORD, "ADMIN", "Bench Admin"
        )
    except CreateUserFailed as exc:
        if "already" not in str(exc).lower() and "taken" not in str(exc).lower():
            raise
