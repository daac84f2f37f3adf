"""``UnitOfWork``: a session only when one is needed; after-commit work only after a commit."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from starlette.requests import Request

from fund.db import UnitOfWork, unit_of_work
from fund.deps import get_work


class CountingSessions(async_sessionmaker[AsyncSession]):
    made = 0

    def __call__(self, **local_kw: Any) -> AsyncSession:
        self.made += 1
        return super().__call__(**local_kw)


async def test_a_unit_that_reads_nothing_through_the_session_makes_none(
    database_url: str,
) -> None:
    engine = create_async_engine(database_url)
    sessions = CountingSessions(engine)
    try:
        async with unit_of_work(sessions) as work:
            async with work.engine.connect() as conn:  # as a driver read outside a transaction
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
            assert not work.in_transaction()
        assert sessions.made == 0

        async with unit_of_work(sessions) as work:
            await work.session.execute(text("SELECT 1"))
            assert work.session is work.session  # one session for the whole unit
            assert work.in_transaction()
        assert sessions.made == 1
    finally:
        await engine.dispose()


async def test_after_commit_work_runs_after_the_commit_and_never_after_a_rollback(
    database_url: str,
) -> None:
    engine = create_async_engine(database_url)
    sessions = async_sessionmaker(engine)
    ran: list[str] = []
    try:
        async with UnitOfWork(sessions) as work:
            await work.session.execute(text("CREATE TEMP TABLE t (n int)"))

            async def seen_committed() -> None:
                ran.append("after commit: in transaction" if work.in_transaction() else "ok")

            work.after_commit(seen_committed)
            assert ran == []
            await work.commit()
            assert ran == ["ok"]

            work.after_commit(seen_committed)
            await work.rollback()
            await work.commit()
            assert ran == ["ok"]  # the rolled-back unit's callback was dropped
    finally:
        await engine.dispose()


async def test_an_endpoint_error_rolls_the_request_back_before_it_goes_on(app: FastAPI) -> None:
    """The request's dependency, as FastAPI drives it: the error is thrown in at the yield."""
    dependency = get_work(Request({"type": "http", "app": app}))
    work = await anext(dependency)
    await work.session.execute(text("SELECT 1"))  # a transaction is open, as after a write
    assert work.in_transaction()

    with pytest.raises(RuntimeError, match="endpoint failed"):
        await dependency.athrow(RuntimeError("endpoint failed"))

    # Rolled back and closed already: no connection left idle in transaction, holding locks.
    assert not work.in_transaction()


async def test_every_after_commit_callback_runs_even_after_one_fails(database_url: str) -> None:
    engine = create_async_engine(database_url)
    ran: list[str] = []

    async def failing() -> None:
        ran.append("first")
        raise ConnectionError("invalidation could not be recorded")

    async def second() -> None:
        ran.append("second")

    try:
        work = UnitOfWork(async_sessionmaker(engine))
        work.after_commit(failing)
        work.after_commit(second)
        with pytest.raises(ConnectionError):
            await work.commit()
        assert ran == ["first", "second"]
    finally:
        await engine.dispose()
