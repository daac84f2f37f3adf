"""Statements run on the driver (``fund.db.driver_fetch``) fail like any other statement.

SQLAlchemy does not see these statements, so what it would do on a failure is done here:
the connection a failed statement used is never handed out again, and the app answers
the driver's errors by SQLSTATE like SQLAlchemy's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Integer, bindparam, event, func, literal_column, make_url, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import QueuePool

from fund.db import DriverQuery, UnitOfWork, driver_fetch
from fund.deps import Resources
from tests.conftest import Account
from tests.helpers import statements_sent

PID = DriverQuery(select(literal_column("pg_backend_pid()").label("pid")))
DIVIDE = DriverQuery(select((literal_column("6") / bindparam("by", type_=Integer)).label("q")))


async def test_a_failed_statement_retires_its_connection(database_url: str) -> None:
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with UnitOfWork(async_sessionmaker(engine)) as work:
            before = (await driver_fetch(work, PID, {}))[0]["pid"]
            again = (await driver_fetch(work, PID, {}))[0]["pid"]
            assert again == before  # outside a transaction, the pooled connection is reused
            assert (await driver_fetch(work, DIVIDE, {"by": 2}))[0]["q"] == 3
            with pytest.raises(asyncpg.DivisionByZeroError):
                await driver_fetch(work, DIVIDE, {"by": 0})
            after = (await driver_fetch(work, PID, {}))[0]["pid"]
        assert after != before
    finally:
        await engine.dispose()


SORT = DriverQuery(
    select(
        literal_column("current_setting('enable_sort')").label("sort"),
        literal_column("pg_backend_pid()").label("pid"),
        literal_column("6").op("/")(bindparam("by", type_=Integer)).label("q"),
    )
)
SORT_OFF = "SELECT set_config('enable_sort', 'off', true)"


async def test_settings_apply_to_the_statement_only_and_leave_the_connection_clean(
    database_url: str,
) -> None:
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with UnitOfWork(async_sessionmaker(engine)) as work:
            with_settings = await driver_fetch(work, SORT, {"by": 2}, settings=SORT_OFF)
            assert with_settings[0]["sort"] == "off"
            # Its transaction ended: the same pooled connection is back to the defaults.
            plain = await driver_fetch(work, SORT, {"by": 2})
            assert plain[0] == {**with_settings[0], "sort": "on"}
            # A statement that fails inside that transaction retires the connection.
            with pytest.raises(asyncpg.DivisionByZeroError):
                await driver_fetch(work, SORT, {"by": 0}, settings=SORT_OFF)
            after = await driver_fetch(work, SORT, {"by": 2})
            assert after[0]["sort"] == "on"
            assert after[0]["pid"] != plain[0]["pid"]
    finally:
        await engine.dispose()


async def test_inside_a_transaction_it_reads_on_the_sessions_connection(
    database_url: str,
) -> None:
    engine = create_async_engine(database_url, pool_size=2)
    try:
        async with UnitOfWork(async_sessionmaker(engine)) as work, work.session.begin():
            session = work.session
            mine = (await session.connection()).sync_connection
            assert mine is not None
            own_pid = (await session.execute(select(literal_column("pg_backend_pid()")))).scalar()
            assert (await driver_fetch(work, PID, {}))[0]["pid"] == own_pid
    finally:
        await engine.dispose()


SLOW_PID = DriverQuery(
    select(literal_column("pg_backend_pid()").label("pid"), func.pg_sleep(1).label("slept"))
)


async def test_a_connection_beyond_the_pools_size_is_closed_when_its_read_ends(
    database_url: str,
) -> None:
    """Driver reads check connections out of the pool as they are; one a read took beyond
    the pool's size is closed when it comes back to a full pool, as any the pool lends."""
    engine = create_async_engine(database_url, pool_size=1, max_overflow=1)
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    try:
        async with UnitOfWork(async_sessionmaker(engine)) as work:
            async with engine.connect() as held:  # the pool's one connection, taken
                await held.execute(select(1))
                lent = asyncio.Event()
                event.listen(engine.sync_engine, "checkout", lambda *_: lent.set())
                reading = asyncio.ensure_future(driver_fetch(work, SLOW_PID, {}))
                await lent.wait()  # the read has the overflow connection
                assert pool.checkedout() == 2
            # The held one is back in the pool, which is full when the read's comes back.
            overflow = (await reading)[0]["pid"]
            assert pool.checkedout() == 0
            assert pool.checkedin() == 1
            again = (await driver_fetch(work, PID, {}))[0]["pid"]
        assert again != overflow  # it was closed, not kept
        async with engine.connect() as check:
            for _ in range(100):  # its server process ends a moment after the close
                alive = await check.scalar(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": overflow},
                )
                if not alive:
                    break
                await asyncio.sleep(0.05)
        assert alive == 0
    finally:
        await engine.dispose()


async def test_a_read_that_cannot_connect_raises_what_sqlalchemy_raises(
    database_url: str,
) -> None:
    """A database that refuses the connection is a ``DBAPIError`` on the driver path too, as
    through a ``Connection``: the app answers it 503 (tests/ops/test_database_restart.py)."""
    engine = create_async_engine(make_url(database_url).set(database="fund_no_such_database"))
    try:
        async with UnitOfWork(async_sessionmaker(engine)) as work:
            with pytest.raises(DBAPIError) as through_driver:
                await driver_fetch(work, PID, {})
        with pytest.raises(DBAPIError) as through_sqlalchemy:
            async with engine.connect():
                pass
        assert type(through_driver.value) is type(through_sqlalchemy.value)
        assert "fund_no_such_database" in str(through_driver.value.orig)
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (asyncpg.DivisionByZeroError("division by zero"), 422),  # class 22: the input's fault
        (asyncpg.QueryCanceledError("statement timeout"), 503),  # 57014
        (asyncpg.AdminShutdownError("terminating connection"), 503),  # 57P01
        (asyncpg.SerializationError("could not serialize"), 409),  # 40001
        (asyncpg.UndefinedColumnError("no such column"), 500),  # a bug: logged, no details out
        (asyncpg.InternalClientError("cannot switch to state 12"), 503),
    ],
)
async def test_driver_errors_are_answered_by_sqlstate(
    app: FastAPI, client: httpx.AsyncClient, error: Exception, status: int
) -> None:
    async def fails() -> None:
        raise error

    app.add_api_route("/test-driver-error", fails)
    response = await client.get("/test-driver-error")
    assert response.status_code == status
    assert set(response.json()) == {"detail"}
    assert str(error) not in response.text


async def test_a_sqlalchemy_listener_that_uses_its_connection_sees_only_sqlalchemys_statements(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    """Instrumentation (timing recipes, tracing libraries) listens to SQLAlchemy's
    ``before_cursor_execute`` and uses the ``Connection`` it is promised. Statements run on
    the driver go through none, so they are not told to it (``fund.db.on_statement`` hears
    both): a page read on the driver stays a 200, and the statement is still counted."""
    told: list[str] = []

    def instrumentation(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        conn.info.setdefault("started", []).append(statement)  # fails on None
        told.append(statement)

    sync_engine = resources.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", instrumentation)
    try:
        with statements_sent(resources.engine) as sent:
            response = await client.get("/api/v1/users?limit=5", headers=admin.headers)
    finally:
        event.remove(sync_engine, "before_cursor_execute", instrumentation)
    assert response.status_code == 200, response.text
    assert any(statement.startswith("SELECT users.id") for statement, _ in sent)
    assert not any(statement.startswith("SELECT users.id") for statement in told)
