"""Alembic environment: runs migrations over the async engine, one process at a time."""

import asyncio
import time

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config
target_metadata = None
"""Migrations are written by hand, and autogenerate is off (Alembic refuses ``--autogenerate``
without metadata): the models describe the columns the code reads, not the indexes, partial
indexes, CHECK constraints, triggers and statistics targets the migrations make, so a
comparison against them would propose dropping those."""

MIGRATION_LOCK = 0x66756E64_6D696772  # "fundmigr": one advisory lock key, per database
"""Held while one process migrates; others wait for it, then find nothing left to do."""
LOCK_POLL_SECONDS = 0.2


def _run(connection: Connection) -> None:
    _take_migration_lock(connection)
    try:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if not connection.invalidated:  # else the server released it with the session
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
            connection.commit()


def _take_migration_lock(connection: Connection) -> None:
    """Wait for any other process migrating this database (app servers started together,
    a deploy job beside them). Alembic reads the applied revision only once it holds the
    lock, so the second process sees the first one's work and has nothing left to do.

    Polled with ``pg_try_advisory_lock`` between short transactions, not waited for in
    one statement: a waiting statement holds a snapshot, which a ``CREATE INDEX
    CONCURRENTLY`` in the migration being waited for (008) would itself wait on, a
    deadlock PostgreSQL would break by failing one of the two.
    """
    while True:
        taken = connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({MIGRATION_LOCK})")
        held = bool(taken.scalar())
        connection.commit()  # a session-level lock outlives the transaction; the snapshot doesn't
        if held:
            return
        time.sleep(LOCK_POLL_SECONDS)


async def _run_async() -> None:
    engine = create_async_engine(
        config.get_main_option("sqlalchemy.url") or "",
        poolclass=pool.NullPool,
        connect_args={"timeout": config.attributes["connect_timeout"]},
    )
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
