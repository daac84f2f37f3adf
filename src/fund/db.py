"""Engine, units of work and migrations. ``unit_of_work`` is the one place a change commits."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO
from weakref import WeakKeyDictionary

import anyio
import asyncpg
import orjson
import structlog
from alembic.config import Config
from sqlalchemy import ClauseElement, Engine, event, make_url
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import greenlet_spawn

from fund.config import Settings
from fund.kit import metrics

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

AfterCommit = Callable[[], Awaitable[None]]

log = structlog.get_logger(__name__)


def create_engine(url: str, settings: Settings) -> AsyncEngine:
    engine = create_async_engine(
        url,
        # A statement's values never reach a log or a traceback: they hold password hashes,
        # emails and audit details.
        hide_parameters=True,
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
    and replaces it (the whole pool, when the statement went through a session), so the
    requests after it get fresh connections.
    """

    def _check(_dbapi_connection: Any, _record: Any, proxy: Any) -> None:
        raw = proxy.driver_connection  # the asyncpg connection under SQLAlchemy's adapter
        if raw is not None and raw.is_closed():
            raise DisconnectionError("connection closed by the server")

    event.listen(engine.sync_engine, "checkout", _check)


def count_statements(engine: AsyncEngine) -> None:
    """Count every SQL statement in ``fund_db_queries_total``."""

    def _count(_statement: str, _parameters: Any) -> None:
        metrics.DB_QUERIES.inc()

    on_statement(engine, _count)


StatementListener = Callable[[str, Any], None]
"""Told each statement about to be sent, and its parameters."""
_DRIVER_LISTENERS: WeakKeyDictionary[Engine, list[StatementListener]] = WeakKeyDictionary()


def on_statement(engine: AsyncEngine, listener: StatementListener) -> Callable[[], None]:
    """Call ``listener(statement, parameters)`` before every statement ``engine`` sends,
    and return what stops it: those SQLAlchemy runs (its ``before_cursor_execute`` event)
    and those run on the driver itself (``driver_fetch``, ``driver_copy``,
    ``driver_estimate``), which SQLAlchemy does not see. The driver's statements are not
    told to SQLAlchemy's event: its listeners (instrumentation libraries among them) are
    promised a ``Connection``, and these run through none.
    """
    sync_engine = engine.sync_engine

    def sqlalchemy_listener(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any
    ) -> None:
        listener(statement, parameters)

    event.listen(sync_engine, "before_cursor_execute", sqlalchemy_listener)
    driver_listeners = _DRIVER_LISTENERS.setdefault(sync_engine, [])
    driver_listeners.append(listener)

    def stop() -> None:
        event.remove(sync_engine, "before_cursor_execute", sqlalchemy_listener)
        driver_listeners.remove(listener)

    return stop


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class UnitOfWork:
    """One request's (or one command's) database work, committed at one point.

    Its ``AsyncSession`` is made on first use. Most reads never need one: they run on
    the driver (``driver_fetch``) or come from the cache, and making and closing an
    unused session cost a worker 0.14 ms of CPU a request (measured: more than the
    caller's Redis read and token check together).
    """

    __slots__ = ("_after_commit", "_session", "_sessions")

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._session: AsyncSession | None = None
        self._after_commit: list[AfterCommit] = []

    @property
    def engine(self) -> AsyncEngine:
        """The engine the sessions are bound to, for reads outside a transaction."""
        bind = self._sessions.kw["bind"]
        if not isinstance(bind, AsyncEngine):
            raise TypeError("reads outside a transaction need sessions bound to an engine")
        return bind

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            self._session = self._sessions()
        return self._session

    def in_transaction(self) -> bool:
        return self._session is not None and self._session.in_transaction()

    async def read_one_snapshot(self) -> None:
        """Make this unit's transaction read one snapshot (REPEATABLE READ, READ ONLY), so
        that several statements agree with one another; before its first statement."""
        await self.session.connection(
            execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        )

    def after_commit(self, callback: AfterCommit) -> None:
        """Run ``callback`` once the transaction has committed (cache invalidation)."""
        self._after_commit.append(callback)

    async def commit(self) -> None:
        """Commit, then run what waited for the commit: every callback, even after one fails
        (each is an invalidation no other may skip).

        A callback's failure is logged, not raised: the change is committed, with its audit
        entry, and an error answer would tell the client to retry a change that was made
        (a retried password change would be made and audited twice).
        """
        callbacks, self._after_commit = self._after_commit, []
        if not callbacks and not self.in_transaction():
            return  # a read outside a transaction: nothing to commit, no task to make
        # In a task of its own, which the request's cancellation (a shutdown that ran out of
        # FUND_SHUTDOWN_TIMEOUT) does not reach: once COMMIT is on its way, the invalidations
        # after it must run, or a deactivated account's cached entry keeps its sessions alive
        # for the entry's lifetime. (anyio's shield does not stop asyncio's task.cancel().)
        committing = asyncio.ensure_future(self._commit_then_run(callbacks))
        cancelled: asyncio.CancelledError | None = None
        while not committing.done():
            try:
                await asyncio.shield(committing)
            except asyncio.CancelledError as exc:
                cancelled = exc  # noted, and raised once the commit and its callbacks are done
        committing.result()
        if cancelled is not None:
            raise cancelled

    async def _commit_then_run(self, callbacks: list[AfterCommit]) -> None:
        if self._session is not None and self._session.in_transaction():
            await self._session.commit()
        for callback in callbacks:
            try:
                await callback()
            except Exception as exc:
                log.error("after_commit_failed", error=type(exc).__name__, detail=str(exc))

    async def rollback(self) -> None:
        """Undo the transaction; what waited for a commit will not run."""
        self._after_commit = []
        if self._session is not None:
            await self._session.rollback()

    async def __aenter__(self) -> UnitOfWork:
        return self

    async def __aexit__(self, *_: object) -> None:
        """Close the session, if one was made (rolling back what was not committed)."""
        session, self._session = self._session, None
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.close()


class Repository:
    """Where a table's SQL lives: it reads and writes through a unit of work, whose session
    is made only if a statement needs one (driver reads outside a transaction do not)."""

    def __init__(self, work: UnitOfWork) -> None:
        self.work = work

    @property
    def session(self) -> AsyncSession:
        return self.work.session


@asynccontextmanager
async def unit_of_work(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[UnitOfWork]:
    """One unit of work per request, committed exactly once when the endpoint returns, and
    rolled back and closed before the error goes on when it raises."""
    async with UnitOfWork(sessions) as work:
        try:
            yield work
        except BaseException:
            # Also when the request is cancelled: the rollback must finish, or the connection
            # goes back idle in a transaction that holds its locks.
            with anyio.CancelScope(shield=True):
                await work.rollback()
            raise
        await work.commit()


class DriverQuery:
    """A Core statement compiled once for asyncpg, to run on the driver itself.

    For the hottest reads: the statement is a shape whose variable parts are named
    placeholders (``bindparam("role")``), compiled here once; each run only orders its
    values. No ORM, no per-statement compilation or result processing, and outside a
    transaction one statement is one round trip (0.13 ms against 0.68 ms through a session,
    measured on this machine kind).
    Values go to asyncpg as they are, so they must be what it encodes: ``str`` for an
    enum, an aware ``datetime`` for a timestamp.
    """

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=_ASYNCPG)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        self._names = tuple(compiled.positiontup or ())
        # Constants the statement carries itself (LIMIT 1 of a probe), fixed at compile time.
        self._fixed = {
            name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required
        }

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        return [self._fixed[n] if n in self._fixed else values[n] for n in self._names]


_ASYNCPG = asyncpg_dialect()  # type: ignore[no-untyped-call]


async def driver_fetch(
    work: UnitOfWork,
    query: DriverQuery,
    values: Mapping[str, Any],
    *,
    settings: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``query`` as dicts.

    Inside the request's transaction when one has begun. Otherwise the statement runs on
    a pooled connection: alone, without a transaction of its own (one statement reads
    one snapshot, so a read-only request costs one round trip and no session
    bookkeeping); or, with ``settings`` (one ``SELECT set_config(…, true)`` statement of
    planner settings), in a read-only transaction of its own whose ``BEGIN`` travels with
    the settings in one round trip. The engine's ``on_statement`` listeners hear the
    settings and the statement like any other: counted, and can be captured.
    """
    args = query.args(values)
    if work.in_transaction():
        # The session's connection: on a failure, its rollback deals with it as with any.
        connection = await work.session.connection()
        driver = await _driver(connection)
        if settings is not None:
            _heard(connection.engine, settings, [])
            await driver.execute(settings)
        _heard(connection.engine, query.sql, args)
        return [dict(row) for row in await driver.fetch(query.sql, *args)]
    async with _own_connection(work.engine, settings) as driver:
        _heard(work.engine, query.sql, args)
        rows = await driver.fetch(query.sql, *args)
    return [dict(row) for row in rows]


@asynccontextmanager
async def _own_connection(engine: AsyncEngine, settings: str | None) -> AsyncIterator[Any]:
    """The asyncpg driver of a pooled connection, for statements run outside the session;
    with ``settings``, in a read-only transaction of its own whose ``BEGIN`` travels with
    them (simple-query protocol: several statements, one round trip), committed when the
    block ends.

    The connection is checked out of the engine's pool as it is, with no SQLAlchemy
    ``Connection`` made around it, which nothing here uses: a checkout and return cost a
    worker 32 µs of CPU instead of 54 µs (measured on this machine kind), on every page
    of the lists. The pool's checkout listeners still run (``refuse_closed_connections``).

    SQLAlchemy does not run these statements, so it cannot know what a failure left behind
    (a cancelled fetch or COPY leaves the protocol mid-operation, a failed one its
    transaction open), and it began no transaction to roll back on check-in: on any
    failure, or a block left early, the connection is retired rather than handed out
    again. Errors here are rare (values are validated); a reconnect is cheap.
    """
    pooled = await _checkout(engine)
    driver: Any = pooled.driver_connection
    try:
        if settings is not None:
            _heard(engine, settings, [])
            await driver.execute(f"BEGIN READ ONLY; {settings}")
        yield driver
        if settings is not None:
            await driver.execute("COMMIT")
    except BaseException:
        # Closed at once: SQLAlchemy's invalidation first tries a graceful close, which
        # waits 2 s on a connection mid-COPY while PostgreSQL goes on writing the rows.
        driver.terminate()
        with anyio.CancelScope(shield=True):
            await greenlet_spawn(pooled.invalidate)  # the pool forgets it, and opens another
        raise
    # Back to the pool, in a greenlet as the pool may close it (one beyond the pool's size),
    # which is the only case that waits: shielded from the request's cancel scopes. A
    # native cancellation then aborts that connection, and the pool counts it out anyway.
    # (``greenlet_spawn`` is how SQLAlchemy's own asyncio layer runs pool code.)
    with anyio.CancelScope(shield=True):
        await greenlet_spawn(pooled.close)


async def _checkout(engine: AsyncEngine) -> PoolProxiedConnection:
    """A connection from the engine's pool; a failure to connect raised as
    ``engine.connect()`` raises it, a ``DBAPIError`` (answered 503, as any lost database)."""
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        return await engine.raw_connection()
    except dbapi_error as error:
        raise DBAPIError.instance(
            None,
            None,
            error,
            dbapi_error,
            hide_parameters=engine.sync_engine.hide_parameters,
            connection_invalidated=engine.dialect.is_disconnect(error, None, None),
            dialect=engine.dialect,
        ) from error


async def driver_estimate(work: UnitOfWork, query: DriverQuery, values: Mapping[str, Any]) -> float:
    """The rows PostgreSQL expects ``query`` to return, from its plan (``EXPLAIN``, not run).

    In the session's transaction, which must have begun (its planner settings apply).
    """
    if not work.in_transaction():
        raise RuntimeError("driver_estimate needs the session's transaction to have begun")
    args = query.args(values)
    explain = "EXPLAIN (FORMAT JSON) " + query.sql
    connection = await work.session.connection()
    _heard(connection.engine, explain, args)
    document = await (await _driver(connection)).fetchval(explain, *args)
    # The dialect decodes json columns on its connections; a plain asyncpg one would not.
    plans = orjson.loads(document) if isinstance(document, str | bytes) else document
    return float(plans[0]["Plan"]["Plan Rows"])


async def driver_copy(
    work: UnitOfWork,
    query: DriverQuery,
    values: Mapping[str, Any],
    *,
    settings: str,
    chunk_bytes: int,
    time_limit: float,
) -> AsyncGenerator[bytes, None]:
    """The output of ``COPY (query) TO STDOUT`` (text format), in chunks of whole rows of
    about ``chunk_bytes``; ``unescape_copy_text`` turns a chunk back into the values.

    One statement on a pooled connection of its own, in a read-only transaction whose
    ``BEGIN`` travels with ``settings`` (which must also lift ``statement_timeout``: the
    statement is the whole read). It is one snapshot however long it streams. PostgreSQL
    sends the rows as COPY data, with no cursor round trips and no row decoding here.

    asyncpg hands COPY data to a callback; a task runs the COPY into a queue of one chunk,
    so a reader that stops reading stops the COPY (TCP back-pressure to PostgreSQL), and
    memory holds about two chunks. A reader that leaves early, or a failure, cancels the
    COPY and retires the connection (the protocol is mid-COPY). ``time_limit`` bounds the
    whole COPY on the client side too.
    """
    args = query.args(values)
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
    buffer = bytearray()

    async def sink(data: bytes) -> None:
        buffer.extend(data)
        if len(buffer) >= chunk_bytes:
            cut = buffer.rfind(b"\n") + 1  # rows stay whole, and so do their escapes
            if cut:
                await chunks.put(bytes(buffer[:cut]))
                del buffer[:cut]

    async with _own_connection(work.engine, settings) as driver:

        async def copy() -> None:
            _heard(work.engine, query.sql, args)
            await driver.copy_from_query(query.sql, *args, output=sink, timeout=time_limit)
            if buffer:
                await chunks.put(bytes(buffer))
            await chunks.put(None)

        copying = asyncio.ensure_future(copy())
        chunk: asyncio.Future[bytes | None] | None = None
        try:
            while True:
                chunk = asyncio.ensure_future(chunks.get())
                await asyncio.wait((chunk, copying), return_when=asyncio.FIRST_COMPLETED)
                if not chunk.done():  # the COPY ended first: it failed, or its end is queued
                    chunk.cancel()
                    copying.result()  # its error, if any
                    continue
                data = chunk.result()
                if data is None:
                    break
                yield data
            await copying
        finally:
            if chunk is not None and not chunk.done():  # left while waiting for a chunk
                chunk.cancel()
            if not copying.done():  # the reader left, or failed: the COPY ends before the
                copying.cancel()  # connection is retired
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([copying])


# COPY's text format writes a backslash before a backslash, the column delimiter (tab) and
# these control characters as letters; no other escape appears in its output.
_COPY_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_COPY_LETTERS = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def unescape_copy_text(data: bytes) -> bytes:
    """Whole rows of one text column, as ``driver_copy`` gives them, back to the values
    (each row still ended by its line feed). Most rows hold no backslash at all."""
    if b"\\" not in data:
        return data
    return _COPY_ESCAPE.sub(lambda m: _COPY_LETTERS.get(m.group(1), m.group(1)), data)


async def database_answers(dsn: str, within: float) -> bool:
    """Whether PostgreSQL runs a statement within ``within`` seconds, connecting included.

    On a connection of its own, not one of the request pool's: a pool that requests keep
    busy is not a database that is down, and a readiness probe that said so would have a
    load balancer take a busy instance out of service, sending its load to the others. A
    connection a second costs PostgreSQL a backend start (about a millisecond); probes
    come every few seconds. Run as a task of its own that is left behind when it is late:
    on a server that has stopped answering, closing waits as long again.
    """

    async def select_one() -> None:
        conn = await asyncpg.connect(dsn, timeout=within, server_settings=_PROBE_SETTINGS)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            conn.terminate()  # nothing to say goodbye with: the statement has answered

    probe = asyncio.ensure_future(select_one())
    done, _ = await asyncio.wait({probe}, timeout=within)
    if not done:
        probe.cancel()
        probe.add_done_callback(_retrieved)  # it ends in the background, whenever it can
        return False
    return probe.exception() is None


_PROBE_SETTINGS = {"application_name": "fund-readyz"}


def _retrieved(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


async def _driver(connection: AsyncConnection) -> Any:
    """The asyncpg connection under ``connection``."""
    return (await connection.get_raw_connection()).driver_connection


def _heard(engine: AsyncEngine, sql: str, args: list[Any]) -> None:
    """Tell the engine's ``on_statement`` listeners of a statement about to run on the
    driver (counted in metrics, capturable in tests)."""
    for listener in _DRIVER_LISTENERS.get(engine.sync_engine, ()):
        listener(sql, tuple(args))


def asyncpg_dsn(database_url: str) -> str:
    """``postgresql+asyncpg://…`` (query ``host``/``port`` kept) → a DSN asyncpg accepts,
    for the few places that talk to the driver directly (seeding, the invalidation log,
    ``/readyz``).

    The settings spell TLS ``ssl=`` (SQLAlchemy hands URL queries to ``asyncpg.connect`` as
    keywords); a DSN spells it ``sslmode=``, as libpq does. Left as ``ssl``, asyncpg sends it
    to the server as a run-time setting and every connection is refused ("parameter "ssl"
    cannot be changed now").
    """
    url = make_url(database_url)
    query = dict(url.query)
    if "ssl" in query:
        query.setdefault("sslmode", query.pop("ssl"))
    return url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


def alembic_config(url: str, *, connect_timeout: float, stdout: TextIO = sys.stdout) -> Config:
    """Alembic's configuration for ``url``; its connection gives up after ``connect_timeout``
    seconds (``FUND_DB_CONNECT_TIMEOUT``), as the service's do, not asyncpg's 60."""
    config = Config(stdout=stdout)
    config.attributes["connect_timeout"] = connect_timeout
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would read '%' in a URL-encoded password.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config
