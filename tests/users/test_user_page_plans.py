"""Query plans of every ``GET /users`` page over 200k users: index-bounded at any depth.

The statements are the repository's own (captured as they are sent), explained with
ANALYZE on a database loaded once for the module, server-side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

from fund.db import UnitOfWork
from fund.kit.pagination import Direction, Position
from fund.models import Role
from fund.users.repository import UserRepository
from fund.users.schemas import UserFilters
from tests.conftest import clone_database, drop_database
from tests.helpers import prepared_plans, statements_sent
from tests.services import PostgresServer

pytestmark = pytest.mark.slow

USERS = 200_000
DEPTH = 150_000
LIMIT = 20
# A rare substring, as real search terms are: 17 of the rows, on both sides of DEPTH.
RARE = "12345"


@dataclass(frozen=True)
class Loaded:
    engine: AsyncEngine
    deep: tuple[datetime, int]


@pytest.fixture(scope="module")
async def loaded(postgres: PostgresServer, template_database: str) -> AsyncIterator[Loaded]:
    name = await clone_database(postgres, template_database)
    engine = create_async_engine(postgres.url(name))
    try:
        async with engine.begin() as conn:
            # Three rows share each created_at: ties are broken by id, as in production.
            await conn.execute(
                text(
                    "INSERT INTO users (email, full_name, hashed_password, role, is_active,"
                    " created_at, updated_at)"
                    " SELECT 'user' || i || '@plans.test', 'Person ' || md5(i::text), 'x',"
                    "  (CASE WHEN i % 50 = 0 THEN 'ADMIN' WHEN i % 3 = 0 THEN 'ANALYST'"
                    "   ELSE 'VIEWER' END)::user_role,"
                    "  i % 30 <> 0,"
                    "  timestamptz '2025-01-01' + (i / 3) * interval '1 millisecond', now()"
                    " FROM generate_series(1, :n) AS i"
                ),
                {"n": USERS},
            )
        async with engine.connect() as conn:
            # As autovacuum leaves a loaded table: statistics, visibility map, and the GIN
            # pending list merged (pending entries make a trigram scan look dearer).
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE users"))
            deep = (
                await conn.execute(
                    text(
                        "SELECT created_at, id FROM users ORDER BY created_at DESC, id DESC"
                        " OFFSET :depth LIMIT 1"
                    ),
                    {"depth": DEPTH},
                )
            ).one()
        yield Loaded(engine, (deep[0], deep[1]))
    finally:
        await engine.dispose()
        await drop_database(postgres, name)


async def explain(engine: AsyncEngine, filters: UserFilters, position: Position | None) -> Any:
    """The plan of what ``UserRepository.page_rows`` sends (``GET /users``), with row counts."""
    async with UnitOfWork(async_sessionmaker(engine)) as work:
        sent = await page_statements(work, engine, filters, position)
    async with engine.connect() as conn, conn.begin():
        return await explain_sent(conn, sent)


async def page_statements(
    work: UnitOfWork,
    engine: AsyncEngine | AsyncConnection,
    filters: UserFilters,
    position: Position | None,
) -> list[tuple[str, Any]]:
    """What ``page_rows`` sends for this page, in order."""
    with statements_sent(engine if isinstance(engine, AsyncEngine) else engine.engine) as sent:
        page = await UserRepository(work).page_rows(
            filters, limit=LIMIT, position=position, encode=lambda _: "cursor"
        )
    assert page.items
    assert any(s.startswith("SELECT set_config") for s, _ in sent) or filters.q is None
    return sent


def page_read(sent: list[tuple[str, Any]]) -> tuple[str, Any]:
    """The one statement that reads the page, among what the repository sent."""
    # Planner settings, estimates and the look at the rows nearby: how the page is read.
    bookkeeping = (
        "SELECT set_config",
        "EXPLAIN",
        "SAVEPOINT",
        "RELEASE SAVEPOINT",
        "SELECT count(*) AS matches \nFROM (SELECT nearby.",
    )
    reads = [(s, p) for s, p in sent if not s.startswith(bookkeeping)]
    assert len(reads) == 1  # one statement reads the page, whatever the path
    return reads[0]


async def explain_sent(conn: AsyncConnection, sent: list[tuple[str, Any]]) -> Any:
    """The page's SELECT explained in ``conn``'s transaction, after the planner settings the
    repository gave its own (a search settles how it reads, ``SEARCH_FEW``)."""
    settings = [(s, p) for s, p in sent if s.startswith("SELECT set_config")]
    statement, parameters = page_read(sent)
    assert "OFFSET" not in statement.upper()
    for setting, values in settings:
        await conn.exec_driver_sql(setting, values)
    result = await conn.exec_driver_sql(
        f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, FORMAT JSON) {statement}", parameters
    )
    return result.scalar_one()[0]["Plan"]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


# Rare values: only the index made for the filter reads a page and nothing else.
FILTERS = {
    "none": (UserFilters(), "idx_users_created_at_desc"),
    "role": (UserFilters(role=Role.ADMIN), "idx_users_role"),
    "is_active": (UserFilters(is_active=False), "idx_users_created_at_is_active"),
    "role+is_active": (
        UserFilters(role=Role.ADMIN, is_active=False),
        "idx_users_role_is_active",
    ),
}
# Common values: the planner may walk a shorter index and skip the few misses.
COMMON = {
    "role": UserFilters(role=Role.VIEWER),
    "is_active": UserFilters(is_active=True),
    "role+is_active": UserFilters(role=Role.VIEWER, is_active=True),
}
WHERE = ["first", "deep-next", "deep-prev"]


def position_at(where: str, loaded: Loaded) -> Position | None:
    if where == "first":
        return None
    direction = Direction.NEXT if where == "deep-next" else Direction.PREV
    return Position(loaded.deep[0], loaded.deep[1], direction)


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("name", list(FILTERS))
async def test_filtered_pages_are_index_scans_that_read_one_page(
    loaded: Loaded, name: str, where: str
) -> None:
    filters, index = FILTERS[name]
    plan = await explain(loaded.engine, filters, position_at(where, loaded))
    kinds = [n["Node Type"] for n in nodes(plan)]
    assert "Seq Scan" not in kinds
    assert "Sort" not in kinds
    scans = [n for n in nodes(plan) if n["Node Type"] in ("Index Scan", "Index Only Scan")]
    # The page itself comes from the filter's own index, every row read kept: filters and
    # the keyset position are index conditions.
    page = max(scans, key=lambda n: n["Actual Rows"])
    assert page["Actual Rows"] == LIMIT + 1
    assert page["Index Name"] == index
    assert page.get("Rows Removed by Filter", 0) == 0
    for scan in scans:  # the one-row probe may take any index, and reads a few rows at most
        assert scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0) <= 4 * (LIMIT + 1)
        if where != "first":
            assert "created_at, id) " in scan["Index Cond"]


async def test_pages_are_planned_once_per_connection_not_per_page(loaded: Loaded) -> None:
    """PostgreSQL may keep a prepared statement's generic plan only when it costs no more
    than the custom ones; a ``LIMIT`` sent as a value it prices at a tenth of the table, and
    every page was planned again. With the row count in the text the plan is kept."""
    engine = create_async_engine(loaded.engine.url, pool_size=1, max_overflow=0)
    deep = Position(*loaded.deep, Direction.NEXT)
    try:
        for filters in (UserFilters(), UserFilters(role=Role.ADMIN)):
            for position in (None, deep):
                for _ in range(7):  # past PostgreSQL's five custom plans before it may switch
                    async with UnitOfWork(async_sessionmaker(engine)) as work:
                        page = await UserRepository(work).page_rows(
                            filters, limit=LIMIT, position=position, encode=lambda _: "cursor"
                        )
                    assert len(page.items) == LIMIT
        async with engine.connect() as conn:  # the one pooled connection that ran them all
            plans = await prepared_plans(conn, "ORDER BY users.created_at DESC")
    finally:
        await engine.dispose()
    assert len(plans) == 4, plans  # two shapes, page one and from a cursor
    for statement, (generic, custom) in plans.items():
        assert generic + custom == 7, statement
        assert custom <= 5 and generic >= 2, (statement, generic, custom)  # the last runs reused


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("name", list(COMMON))
async def test_common_filter_values_read_about_one_page_from_an_index(
    loaded: Loaded, name: str, where: str
) -> None:
    plan = await explain(loaded.engine, COMMON[name], position_at(where, loaded))
    kinds = [n["Node Type"] for n in nodes(plan)]
    assert "Seq Scan" not in kinds
    assert "Sort" not in kinds
    scans = [n for n in nodes(plan) if n["Node Type"] in ("Index Scan", "Index Only Scan")]
    assert scans
    read = sum(n["Actual Rows"] + n.get("Rows Removed by Filter", 0) for n in scans)
    assert read <= 4 * (LIMIT + 1)


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize(
    "filters",
    [UserFilters(q=RARE), UserFilters(q=RARE, role=Role.VIEWER)],
    ids=["q", "q+role"],
)
async def test_search_pages_use_the_trigram_indexes(
    loaded: Loaded, filters: UserFilters, where: str
) -> None:
    plan = await explain(loaded.engine, filters, position_at(where, loaded))
    kinds = [n["Node Type"] for n in nodes(plan)]
    assert "Seq Scan" not in kinds
    bitmap_indexes = {n["Index Name"] for n in nodes(plan) if n["Node Type"] == "Bitmap Index Scan"}
    # The trigram indexes and nothing else: deep pages too read the matches alone.
    assert bitmap_indexes == {"idx_users_email_trgm", "idx_users_full_name_trgm"}
    # The matches are sorted, not the table: a sort never sees more rows than matched.
    heaps = [n for n in nodes(plan) if n["Node Type"] == "Bitmap Heap Scan"]
    assert heaps
    assert all(n["Actual Rows"] < USERS // 1000 for n in heaps)


@pytest.mark.parametrize("where", WHERE)
async def test_a_common_search_term_walks_the_time_index_and_stops_after_a_page(
    loaded: Loaded, where: str
) -> None:
    # Every row matches: reading the newest rows until a page is full beats sorting them all.
    plan = await explain(loaded.engine, UserFilters(q="@plans."), position_at(where, loaded))
    kinds = [n["Node Type"] for n in nodes(plan)]
    assert "Seq Scan" not in kinds
    assert "Sort" not in kinds
    scans = [n for n in nodes(plan) if n["Node Type"] == "Index Scan"]
    assert {n["Index Name"] for n in scans} == {"idx_users_created_at_desc"}
    assert all(n["Actual Rows"] <= LIMIT + 1 for n in scans)


async def test_a_search_whose_matches_are_all_old_sorts_them_rather_than_walk_to_them(
    loaded: Loaded,
) -> None:
    # 3,000 matches (1.5%), all among the oldest users. Assuming them spread evenly, the
    # planner would walk created_at expecting a match every ~70 rows, and meet the first
    # after 197,000. The repository sorts the few matches instead.
    async with loaded.engine.connect() as conn, conn.begin():
        await conn.execute(
            text("UPDATE users SET full_name = 'Clustered ' || full_name WHERE id <= 3000")
        )
        await conn.execute(text("ANALYZE users"))
        middle = (
            await conn.execute(
                text("SELECT created_at, id FROM users WHERE id = 1500")  # among the matches
            )
        ).one()
        plans = []
        for position in (None, Position(middle[0], middle[1], Direction.NEXT)):
            savepoints = async_sessionmaker(bind=conn, join_transaction_mode="create_savepoint")
            async with UnitOfWork(savepoints) as work:  # a search reads in a transaction
                sent = await page_statements(work, conn, UserFilters(q="clustered"), position)
            async with conn.begin_nested():
                plans.append(await explain_sent(conn, sent))
        await conn.rollback()
    for plan in plans:  # page one and deep among the matches
        kinds = [n["Node Type"] for n in nodes(plan)]
        assert "Bitmap Heap Scan" in kinds
        scans = [n for n in nodes(plan) if n["Node Type"] in ("Index Scan", "Bitmap Heap Scan")]
        assert sum(n["Actual Rows"] + n.get("Rows Removed by Filter", 0) for n in scans) <= 3000
        bitmaps = {n["Index Name"] for n in nodes(plan) if n["Node Type"] == "Bitmap Index Scan"}
        assert bitmaps == {"idx_users_email_trgm", "idx_users_full_name_trgm"}


@pytest.mark.parametrize(
    ("ids", "read"),
    [
        (list(range(1, 6)), "scan"),
        (list(range(USERS - 4, USERS + 1)), "scan"),
        (list(range(USERS - 29, USERS + 1)), "walk"),
    ],
    ids=["five-oldest-scan", "five-newest-scan", "thirty-newest-walk"],
)
async def test_a_search_without_a_trigram_walks_only_a_window_else_scans(
    loaded: Loaded, ids: list[int], read: str
) -> None:
    """``q=zq`` has no trigram for an index to look up. Walking to a page's worth of its
    matches could read the whole table (five matches: all of it, wherever they are), so a
    walk is taken only when the ``SEARCH_WINDOW`` rows beyond the position hold a page's
    worth; otherwise the table is scanned once. No page reads more than either."""
    async with loaded.engine.connect() as conn, conn.begin():
        await conn.execute(
            text("UPDATE users SET full_name = 'Zq ' || full_name WHERE id = ANY(:ids)"),
            {"ids": ids},
        )
        await conn.execute(text("ANALYZE users"))
        pages: list[tuple[Any, Sequence[dict[str, Any]], str]] = []
        for after_second in (False, True):
            at = None
            if after_second:
                second = pages[0][1][1]
                at = Position(second["created_at"], second["id"], Direction.NEXT)
            savepoints = async_sessionmaker(bind=conn, join_transaction_mode="create_savepoint")
            async with UnitOfWork(savepoints) as work:  # a search reads in a transaction
                sent = await page_statements(work, conn, UserFilters(q="zq"), at)
                page = await UserRepository(work).page_rows(
                    UserFilters(q="zq"), limit=LIMIT, position=at, encode=lambda _: "c"
                )
            async with conn.begin_nested():
                pages.append((await explain_sent(conn, sent), page.items, page_read(sent)[0]))
        await conn.rollback()
    newest_first = sorted(ids, reverse=True)
    assert [row["id"] for row in pages[0][1]] == newest_first[:LIMIT]
    assert [row["id"] for row in pages[1][1]] == newest_first[2 : 2 + LIMIT]
    for plan, _, statement in pages:
        assert f"/* q: {read} */" in statement
        kinds = {n["Node Type"] for n in nodes(plan)}
        rows_read = sum(
            n["Actual Rows"] + n.get("Rows Removed by Filter", 0)
            for n in nodes(plan)
            if n["Node Type"] in ("Index Scan", "Seq Scan")
        )
        if read == "scan":  # every row once, in no order: no index walked
            assert "Index Scan" not in kinds
            assert rows_read <= USERS + 1
        else:  # the newest rows, until a page's worth of matches
            assert "Seq Scan" not in kinds
            assert rows_read <= 4 * (LIMIT + 1)


async def test_the_two_ways_of_reading_a_search_are_two_statements(loaded: Loaded) -> None:
    # A cached generic plan would otherwise outlive the planner settings it was made under.
    pages = {}
    for term in (RARE, "@plans."):
        async with UnitOfWork(async_sessionmaker(loaded.engine)) as work:
            sent = await page_statements(work, loaded.engine, UserFilters(q=term), None)
        pages[term] = page_read(sent)[0]
    assert "/* q: sort */" in pages[RARE]
    assert "/* q: walk */" in pages["@plans."]


# Sorted through the trigram indexes; walked; scanned (no trigram, no match nearby).
@pytest.mark.parametrize("term", [RARE, "@pl", "zq"])
async def test_after_a_search_page_the_transaction_plans_as_before(
    database_url: str, term: str
) -> None:
    """``include=audit_logs`` reads each user's entries after the page, in its transaction:
    with index scans still off, that LATERAL would scan each user's whole history."""
    engine = create_async_engine(database_url)
    settings = (
        "SELECT current_setting('enable_indexscan'), current_setting('enable_bitmapscan'),"
        " current_setting('enable_seqscan')"
    )
    try:
        async with UnitOfWork(async_sessionmaker(engine)) as work:
            await UserRepository(work).page_rows(
                UserFilters(q=term),
                limit=LIMIT,
                position=None,
                encode=lambda _: "cursor",
                reads_on=True,
            )
            assert work.in_transaction()
            assert tuple((await work.session.execute(text(settings))).one()) == ("on",) * 3
    finally:
        await engine.dispose()
