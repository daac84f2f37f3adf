"""At 200k entries: every filter combination is answered in index order, and the export streams
in constant memory.

The rows are generated server-side once for the module, with the spread a real trail has: a few
busy actors and many quiet ones, mostly logins, a small share of soft-deleted entries, a year of
timestamps rising with the id.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import sys
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from fund.audit import repository as audit_repository
from fund.audit.repository import EXPORT_CHUNK_BYTES, AuditRepository
from fund.audit.schemas import AuditFilters, ExportFormat
from fund.config import Environment, Settings
from fund.db import UnitOfWork
from fund.deps import Resources
from fund.kit.pagination import Direction, Position
from fund.main import create_app
from fund.models import Action, AuditLog, ResourceType, Role
from tests.conftest import SECRET, clone_database, drop_database, make_account
from tests.helpers import prepared_plans, statements_sent
from tests.services import PostgresServer

pytestmark = pytest.mark.slow

ROWS = 200_000
ACTORS = 500

LOAD_SQL = f"""
SELECT setseed(0.42);
INSERT INTO users (email, full_name, hashed_password, role)
SELECT 'actor' || g || '@example.com', 'Actor ' || g, 'not-a-hash',
       (ARRAY['ADMIN', 'ANALYST', 'VIEWER'])[1 + g % 3]::user_role
FROM generate_series(1, {ACTORS}) AS g;
INSERT INTO audit_logs (timestamp, user_id, action, resource_type, resource_id, details,
                        ip_address, user_agent, request_id, is_deleted)
SELECT timestamptz '2025-01-01 00:00:00+00' + g * interval '157 seconds'
           + floor(r.jitter * 1000000) * interval '1 microsecond',
       CASE WHEN r.kind BETWEEN 0.50 AND 0.53 THEN NULL
            ELSE 1 + floor(power(r.who, 2) * {ACTORS})::int END,
       (CASE WHEN r.kind < 0.50 THEN 'LOGIN' WHEN r.kind < 0.62 THEN 'LOGIN_FAILED'
            WHEN r.kind < 0.80 THEN 'UPDATE' WHEN r.kind < 0.92 THEN 'CREATE' ELSE 'DELETE'
            END)::audit_action,
       (CASE WHEN r.kind > 0.97 THEN 'audit_log' ELSE 'user' END)::audit_resource_type,
       CASE WHEN r.kind BETWEEN 0.50 AND 0.53 THEN ''
            WHEN r.kind > 0.97 THEN greatest(1, g - 1 - floor(r.jitter * 500)::int)::text
            ELSE (1 + floor(r.target * {ACTORS})::int)::text END,
       CASE WHEN r.kind BETWEEN 0.62 AND 0.80
            THEN '{{"changes": {{"role": {{"old": "VIEWER", "new": "ANALYST"}}}}}}'::jsonb
            ELSE '{{}}'::jsonb END,
       ('10.0.' || floor(r.who * 255)::int || '.' || floor(r.target * 255)::int)::inet,
       'Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0',
       md5(g::text),
       r.deleted < 0.01
FROM generate_series(1, {ROWS}) AS g,
     LATERAL (SELECT random() AS kind, random() AS who, random() AS target,
                     random() AS jitter, random() AS deleted, g AS anchor) AS r;
"""

# Values with matches in the generated data: a middling actor, a minority action, the rare
# resource type, a common resource id and a month in the middle of the year.
VALUES: dict[str, Any] = {
    "user_id": 40,
    "action": Action.LOGIN_FAILED,
    "resource_type": ResourceType.AUDIT_LOG,
    "resource_id": "42",
    "since": datetime(2025, 6, 1, tzinfo=UTC),
    "until": datetime(2025, 7, 1, 0, 0, 0, 1, tzinfo=UTC),
}


def every_combination() -> Iterator[AuditFilters]:
    names = list(VALUES)
    for size in range(len(names) + 1):
        for chosen in itertools.combinations(names, size):
            for include_deleted in (False, True):
                yield AuditFilters(
                    **{name: VALUES[name] for name in chosen}, include_deleted=include_deleted
                )


@pytest.fixture(scope="module")
async def big_database(postgres: PostgresServer, template_database: str) -> AsyncIterator[str]:
    name = await clone_database(postgres, template_database)
    import asyncpg

    conn = await asyncpg.connect(postgres.dsn(name))
    try:
        await conn.execute(LOAD_SQL)
        await conn.execute("ANALYZE users")
        await conn.execute("ANALYZE audit_logs")
    finally:
        await conn.close()
    yield name
    await drop_database(postgres, name)


@pytest.fixture(scope="module")
async def engine(postgres: PostgresServer, big_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(postgres.url(big_database))
    yield engine
    await engine.dispose()


def sql_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text_value = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text_value.replace("'", "''") + "'"


async def explain(session: AsyncSession, statement: str, parameters: Any) -> dict[str, Any]:
    """The plan PostgreSQL runs ``statement`` with, for these values, in this transaction.

    Prepared, as asyncpg prepares the application's statements: under the transaction's
    ``plan_cache_mode`` a generic plan shows as the one that runs.
    """
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver: Any = raw.driver_connection
    await driver.execute(f"PREPARE fund_explained AS {statement}")
    try:
        # EXECUTE takes no protocol parameters: the values go in as literals, each coerced to
        # its placeholder's type as PREPARE inferred it.
        arguments = ", ".join(sql_literal(value) for value in parameters)
        document = await driver.fetchval(
            f"EXPLAIN (FORMAT JSON) EXECUTE fund_explained{f'({arguments})' if arguments else ''}"
        )
    finally:
        await driver.execute("DEALLOCATE fund_explained")
    # SQLAlchemy's asyncpg dialect installs a json codec on its connections; plain asyncpg has none.
    decoded = json.loads(document) if isinstance(document, str) else document
    plan: dict[str, Any] = decoded[0]["Plan"]
    return plan


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def refusals(plan: dict[str, Any]) -> list[str]:
    """What makes a plan not index-ordered: a scan of the table, or a sort of the match set."""
    found = []
    for node in nodes(plan):
        kind = node["Node Type"]
        on_audit = node.get("Relation Name") == "audit_logs"
        if "Sort" in kind or (on_audit and kind in {"Seq Scan", "Bitmap Heap Scan"}):
            found.append(kind)
    if not any(n.get("Index Name", "").startswith("idx_audit_logs") for n in nodes(plan)):
        found.append("no audit_logs index")
    return found


async def deep_position(work: UnitOfWork, filters: AuditFilters) -> Position:
    """The entry 90% of the way down this filter's match set (or mid-year when none match)."""
    session = work.session
    values = audit_repository._values(filters)
    conditions = audit_repository._conditions(values, include_deleted=filters.include_deleted)
    query = select(AuditLog).where(*conditions).params(values).subquery()
    total = await session.scalar(select(func.count()).select_from(query))
    if not total:
        return Position(datetime(2025, 6, 15, tzinfo=UTC), ROWS // 2, Direction.NEXT)
    row = (
        await session.execute(
            select(query.c.timestamp, query.c.id)
            .order_by(query.c.timestamp.desc(), query.c.id.desc())
            .offset(total * 9 // 10)
            .limit(1)
        )
    ).one()
    return Position(row.timestamp, row.id, Direction.NEXT)


async def test_every_filter_combination_pages_from_an_index_at_any_depth(
    engine: AsyncEngine,
) -> None:
    bad: list[str] = []
    checked = 0
    async with UnitOfWork(async_sessionmaker(engine)) as work:
        session = work.session
        repository = AuditRepository(work)
        for filters in every_combination():
            deep = await deep_position(work, filters)
            positions = [None, deep, Position(deep.key, deep.id, Direction.PREV)]
            for position in positions:
                with statements_sent(engine) as sent:
                    await repository.page_rows(filters, limit=20, position=position, encode=str)
                reads = [(s, p) for s, p in sent if "FROM audit_logs" in s]
                assert reads, sent
                # Explained under the planner settings the page ran with.
                settings = [s for s, _ in sent if s.startswith("SELECT set_config")]
                assert settings, sent
                for setting in settings:
                    await session.execute(text(setting))
                for statement, parameters in reads:
                    plan = await explain(session, statement, parameters)
                    checked += 1
                    if problems := refusals(plan):
                        bad.append(f"{filters!r} at {position}: {problems}")
    assert checked >= 3 * 128
    assert not bad, "\n".join(bad)


async def test_the_default_listing_walks_only_the_entries_it_shows(engine: AsyncEngine) -> None:
    """Without equality filters or ``include_deleted``, a page reads the partial index of the
    entries not deleted (migration 008): no ``is_deleted`` filter, so no soft-deleted entry
    is walked and dropped on the way, at page one and from a cursor, in either direction."""
    read: list[tuple[str | None, str | None]] = []
    async with UnitOfWork(async_sessionmaker(engine)) as work:
        session = work.session
        repository = AuditRepository(work)
        for filters in (AuditFilters(), AuditFilters(since=VALUES["since"])):
            deep = await deep_position(work, filters)
            for position in (None, deep, Position(deep.key, deep.id, Direction.PREV)):
                with statements_sent(engine) as sent:
                    await repository.page_rows(filters, limit=20, position=position, encode=str)
                for statement, _ in sent:
                    if statement.startswith("SELECT set_config"):
                        await session.execute(text(statement))
                for statement, parameters in sent:
                    if "FROM audit_logs" in statement:
                        plan = await explain(session, statement, parameters)
                        read += [
                            (node.get("Index Name"), node.get("Filter"))
                            for node in nodes(plan)
                            if node.get("Relation Name") == "audit_logs"
                        ]
    assert len(read) >= 2 * 5  # page one: one read; from a cursor: the page and its probe
    assert set(read) == {("idx_audit_logs_is_deleted_timestamp", None)}, read


async def test_only_pages_without_equality_filters_reuse_one_plan(
    postgres: PostgresServer, big_database: str
) -> None:
    engine = create_async_engine(postgres.url(big_database), pool_size=1, max_overflow=0)
    sessions = async_sessionmaker(engine)
    try:
        async with engine.connect() as conn:
            middle = (
                await conn.execute(
                    select(AuditLog.timestamp, AuditLog.id).where(AuditLog.id == ROWS // 2)
                )
            ).one()
        deep = Position(middle[0], middle[1], Direction.NEXT)
        for filters in (AuditFilters(), AuditFilters(action=Action.UPDATE)):
            for position in (None, deep):
                for _ in range(7):  # past PostgreSQL's five custom plans before it may switch
                    async with UnitOfWork(sessions) as work:
                        await AuditRepository(work).page_rows(
                            filters, limit=20, position=position, encode=str
                        )
        async with engine.connect() as conn:  # the one pooled connection that ran them all
            plans = await prepared_plans(conn, "audit_logs.request_id")  # the pages' statements
    finally:
        await engine.dispose()
    assert len(plans) == 4, plans  # two shapes, page one and from a cursor
    for statement, (generic, custom) in plans.items():
        if "audit_logs.action = " in statement:
            assert (generic, custom) == (0, 7), statement  # planned for each value
        else:
            assert (generic, custom) == (7, 0), statement  # planned once


async def test_every_filter_combination_exports_from_an_index(engine: AsyncEngine) -> None:
    bad: list[str] = []
    for export_format in ExportFormat:
        for filters in every_combination():
            async with UnitOfWork(async_sessionmaker(engine)) as work:
                session = work.session
                repository = AuditRepository(work)
                with statements_sent(engine) as sent:
                    stream = repository.copy_lines(filters, export_format, chunk_bytes=1)
                    async for _ in stream:
                        break
                    await stream.aclose()
                selects = [(s, p) for s, p in sent if "FROM audit_logs" in s]
                assert len(selects) == 1, sent
                # Explained under the planner settings the export ran with.
                settings = [s for s, _ in sent if s.startswith("SELECT set_config")]
                assert settings, sent
                for setting in settings:
                    await session.execute(text(setting))
                plan = await explain(session, *selects[0])
                if problems := refusals(plan):
                    bad.append(f"{export_format} {filters!r}: {problems}")
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
async def big_app(
    postgres: PostgresServer,
    big_database: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[FastAPI]:
    settings = Settings(
        env=Environment.TEST,
        database_url=postgres.url(big_database),
        redis_url=redis_url,
        secret_key=SECRET,
        data_dir=tmp_path_factory.mktemp("fund-audit-scale"),
        db_pool_size=2,
        log_json=True,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@dataclass
class Streamed:
    status: int = 0
    size: int = 0
    lines: int = 0
    first_line: bytes = b""
    blocks: list[int] = field(default_factory=list)
    """Memory blocks the interpreter holds, sampled at every body chunk."""


async def stream_export(app: FastAPI, query: str, authorization: str) -> Streamed:
    """Run one export through the ASGI app, counting and discarding the body as it arrives.

    Driven by hand rather than through httpx, whose ASGI transport buffers a whole response.
    """
    out = Streamed()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/audit-logs/export",
        "raw_path": b"/api/v1/audit-logs/export",
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"test"), (b"authorization", authorization.encode())],
        "client": ("203.0.113.7", 51234),
        "server": ("test", 80),
    }
    requested = False

    async def receive() -> MutableMapping[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected until the body ends
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out.status = message["status"]
        elif message["type"] == "http.response.body":
            body: bytes = message.get("body", b"")
            if not out.first_line and body:
                out.first_line = body.split(b"\n", 1)[0]
            out.size += len(body)
            out.lines += body.count(b"\n")
            out.blocks.append(sys.getallocatedblocks())

    await app(scope, receive, send)
    return out


# What an export may hold at once, in interpreter memory blocks (objects, buffers): a few
# chunks of bytes (measured: ~600 blocks above the baseline). Holding the 200k rows themselves
# would take over 2M (a Row, a record and the values of its eleven fields each).
HELD_BLOCKS_BOUND = 20_000


async def test_export_streams_in_constant_memory(big_app: FastAPI, engine: AsyncEngine) -> None:
    resources: Resources = big_app.state.resources
    admin = await make_account(resources, Role.ADMIN)
    authorization = admin.headers["Authorization"]
    async with engine.connect() as conn:
        live = await conn.scalar(
            select(func.count()).select_from(AuditLog).where(AuditLog.is_deleted.is_(False))
        )
        quarter_since = await conn.scalar(
            select(AuditLog.timestamp).order_by(AuditLog.id.desc()).offset(ROWS // 4).limit(1)
        )
    assert live is not None and live >= ROWS * 0.98
    assert quarter_since is not None
    since = quarter_since.isoformat().replace("+00:00", "Z")

    # The first export also warms what any request builds once (statement caches, pools).
    part = await stream_export(big_app, f"format=jsonl&since={since}", authorization)
    gc.collect()
    baseline = sys.getallocatedblocks()
    whole = await stream_export(big_app, "format=jsonl", authorization)

    assert part.status == whole.status == 200
    assert whole.lines == live  # every live entry, the admin's own CREATE entry first
    assert json.loads(whole.first_line)["user_id"] is None
    assert ROWS // 5 < part.lines < ROWS // 3
    assert whole.size > 40 * 2**20  # what holding the body would cost in bytes alone
    # Sent as it was read, chunk after chunk, not assembled first.
    assert len(whole.blocks) >= whole.size // (2 * EXPORT_CHUNK_BYTES)
    # Memory held stays at about two chunks, and is no higher at the end than early on.
    assert max(whole.blocks) - baseline < HELD_BLOCKS_BOUND, (baseline, max(whole.blocks))
    half = len(whole.blocks) // 2
    assert max(whole.blocks[half:]) < max(whole.blocks[:half]) + 20_000, whole.blocks
    assert max(whole.blocks) < max(part.blocks) + 20_000, (part.blocks, whole.blocks)
