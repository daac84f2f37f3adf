"""Engine, sessions and migrations. ``request_session`` is the one place that commits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from alembic.config import Config
from sqlalchemy import event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from fund.config import Settings
from fund.kit import metrics

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

AfterCommit = Callable[[], Awaitable[None]]


def create_engine(url: str, settings: Settings) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        connect_args={
            "timeout": settings.db_connect_timeout,
            "command_timeout": settings.db_statement_timeout_ms / 1000 or None,
            "server_settings": {
                "application_name": "fund",
                "statement_timeout": str(settings.db_statement_timeout_ms),
            },
        },
    )
    count_statements(engine)
    refuse_closed_connections(engine)
    return engine


def refuse_closed_connections(engine: AsyncEngine) -> None:
    """Replace, at checkout, a pooled connection the server has closed (a restart).

    The same job as ``pool_pre_ping`` without its cost: the asyncpg ping is a BEGIN and a
    ROLLBACK, two round trips on every checkout. asyncpg already knows when the server closed
    the socket; a connection that dies unnoticed fails its statement, which is answered 503
    and invalidates the whole pool, so the next request gets fresh connections.
    """

    def _check(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        raw = getattr(dbapi_connection, "_connection", None)
        if raw is not None and raw.is_closed():
            raise DisconnectionError("connection closed by the server")

    event.listen(engine.sync_engine, "checkout", _check)


def count_statements(engine: AsyncEngine) -> None:
    """Count every SQL statement in ``fund_db_queries_total``."""

    def _count(*_: Any) -> None:
        metrics.DB_QUERIES.inc()

    event.listen(engine.sync_engine, "before_cursor_execute", _count)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run ``callback`` once the request's transaction has committed (cache invalidation)."""
    session.info.setdefault("after_commit", []).append(callback)


async def commit(session: AsyncSession) -> None:
    """Commit the unit of work, then run what waited for the commit."""
    callbacks: list[AfterCommit] = session.info.pop("after_commit", [])
    if session.in_transaction():
        await session.commit()
    for callback in callbacks:
        await callback()


async def request_session(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One session per request, committed exactly once when the endpoint returns."""
    async with factory() as session:
        try:
            yield session
        except BaseException:
            session.info.pop("after_commit", None)
            await session.rollback()
            raise
        await commit(session)


def asyncpg_dsn(database_url: str) -> str:
    """``postgresql+asyncpg://…`` (query ``host``/``port`` kept) → a DSN asyncpg accepts,
    for the few places that talk to the driver directly (seeding, the invalidation log)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would read '%' in a URL-encoded password.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config
