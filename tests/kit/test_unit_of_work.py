"""``UnitOfWork``: a session only when one is needed; after-commit work only after a commit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from starlette.requests import Request
from structlog.testing import capture_logs

from fund.db import UnitOfWork, unit_of_work
from fund.deps import Resources, UnitOfWorkRoute, work_of
from fund.errors import Forbidden


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


LOCK = 4242
"""An advisory lock a test endpoint takes in its transaction: held until the transaction ends."""


def _add_route(app: FastAPI, endpoint: Callable[[Request], Awaitable[None]]) -> str:
    """``endpoint`` served by the app in a ``UnitOfWorkRoute``, as the API's routes are."""
    router = APIRouter(route_class=UnitOfWorkRoute)
    router.add_api_route("/test/work", endpoint, methods=["GET"])
    app.include_router(router)
    return "/test/work"


async def _lock_is_free(engine: AsyncEngine) -> bool:
    """Whether another connection can take ``LOCK`` now (the holder's transaction ended)."""
    async with engine.connect() as conn:
        free = bool(await conn.scalar(text(f"SELECT pg_try_advisory_lock({LOCK})")))
        if free:
            await conn.execute(text(f"SELECT pg_advisory_unlock({LOCK})"))
        return free


async def test_an_endpoint_error_rolls_the_request_back_before_it_is_answered(
    app: FastAPI, client: httpx.AsyncClient, resources: Resources
) -> None:
    free_when_answered: list[bool] = []

    async def fails(request: Request) -> None:
        work = work_of(request)
        await work.session.execute(text(f"SELECT pg_advisory_xact_lock({LOCK})"))
        assert not await _lock_is_free(resources.engine)  # held: the transaction is open
        raise Forbidden

    @app.exception_handler(Forbidden)
    async def answer(request: Request, error: Forbidden) -> Response:
        free_when_answered.append(await _lock_is_free(resources.engine))
        return Response(status_code=403)

    response = await client.get(_add_route(app, fails))

    assert response.status_code == 403
    # Rolled back before the error was answered: no connection left idle in transaction,
    # holding its locks, while the error goes on.
    assert free_when_answered == [True]


async def test_a_cancelled_request_is_rolled_back(
    app: FastAPI, client: httpx.AsyncClient, resources: Resources
) -> None:
    """Cancelled mid-transaction (a shutdown that ran out of time): the rollback still runs."""
    began = asyncio.Event()

    async def waits(request: Request) -> None:
        await work_of(request).session.execute(text(f"SELECT pg_advisory_xact_lock({LOCK})"))
        began.set()
        await asyncio.Event().wait()

    request = asyncio.ensure_future(client.get(_add_route(app, waits)))
    await began.wait()
    assert not await _lock_is_free(resources.engine)
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    assert await _lock_is_free(resources.engine)


async def test_the_unit_commits_before_the_response_is_sent(
    app: FastAPI, client: httpx.AsyncClient, resources: Resources
) -> None:
    async def holds(request: Request) -> None:
        await work_of(request).session.execute(text(f"SELECT pg_advisory_xact_lock({LOCK})"))

    response = await client.get(_add_route(app, holds))

    assert response.status_code == 200
    assert await _lock_is_free(resources.engine)


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
        with capture_logs() as logged:
            await work.commit()  # the change is made: its answer must not say otherwise
        assert ran == ["first", "second"]
        [line] = [entry for entry in logged if entry["event"] == "after_commit_failed"]
        assert (line["log_level"], line["error"]) == ("error", "ConnectionError")
    finally:
        await engine.dispose()


async def test_a_request_cancelled_after_its_commit_still_runs_what_waited_for_it(
    database_url: str,
) -> None:
    """A shutdown that runs out of time cancels the requests still running. One cancelled
    between its COMMIT and its cache invalidations must still invalidate: a deactivated
    account's cached entry would otherwise keep its sessions alive on every instance."""
    engine = create_async_engine(database_url)
    ran: list[str] = []
    in_first = asyncio.Event()
    redis_answers = asyncio.Event()

    async def first() -> None:
        in_first.set()
        await redis_answers.wait()  # a slow Redis
        ran.append("first")

    async def second() -> None:
        ran.append("second")

    async def request() -> None:
        async with UnitOfWork(async_sessionmaker(engine)) as work:
            await work.session.execute(text("SELECT 1"))
            work.after_commit(first)
            work.after_commit(second)
            await work.commit()
            ran.append("answered")

    try:
        running = asyncio.ensure_future(request())
        await in_first.wait()
        running.cancel()
        await asyncio.sleep(0.05)
        running.cancel()  # and again: anyio's cancel scopes repeat theirs
        await asyncio.sleep(0.05)
        redis_answers.set()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    finally:
        await engine.dispose()

    assert running.cancelled()  # the cancellation still ends the request
    assert ran == ["first", "second"]
