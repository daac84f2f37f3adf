"""Database scenarios, measured as PostgreSQL's own execution time (EXPLAIN ANALYZE, BUFFERS).

The statements measured are the ones the application sends: each scenario runs the real
repository method once while recording its SQL and parameters, then replays exactly that
statement under EXPLAIN. "Without the indexes" drops them inside a transaction that is rolled
back (DDL is transactional in PostgreSQL), so the data is never changed.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fund.audit.repository import AuditRepository
from fund.audit.schemas import AuditFilters
from fund.db import UnitOfWork, create_sessionmaker, on_statement
from fund.kit.pagination import Direction, Position, rows_to_read
from fund.models import Action, ResourceType, Role
from fund.users.repository import UserRepository
from fund.users.schemas import UserFilters

PAGE = 20
DEPTHS = (0, 10_000, 100_000, 500_000, 900_000)
DEEP = 900_000
Statement = tuple[str, tuple[Any, ...]]
RunPage = Callable[[UnitOfWork, Position | None], Awaitable[object]]


@dataclass(frozen=True)
class Plan:
    execution_ms: float
    planning_ms: float
    buffers: int
    """Shared buffers hit plus read by the whole plan: the work, whatever the cache state."""
    scan: str
    """The node that reads the table: how the query is answered."""


@dataclass(frozen=True)
class SearchResult:
    table: str
    name: str
    indexed: Plan
    deep: Plan
    depth: int
    unindexed: Plan


@dataclass(frozen=True)
class DepthResult:
    table: str
    depth: int
    offset: Plan
    cursor: Plan


@dataclass(frozen=True)
class NPlusOneResult:
    page_size: int
    naive_ms: float
    naive_statements: int
    include_ms: float
    include_statements: int


def _noop_encode(_: Position) -> str:
    return ""


@contextmanager
def recorded_statements(engine: AsyncEngine) -> Iterator[list[Statement]]:
    """Every statement the engine sends while the block runs, with its parameters."""
    seen: list[Statement] = []

    def record(statement: str, parameters: Any) -> None:
        seen.append((statement, tuple(parameters or ())))

    stop = on_statement(engine, record)
    try:
        yield seen
    finally:
        stop()


@dataclass(frozen=True)
class PageQuery:
    """What a repository page sends: settings for its transaction (and, for a search with
    no trigram, a look at the rows nearby), then the page's SELECT."""

    setup: tuple[Statement, ...]
    statement: Statement

    def with_statement(self, statement: Statement) -> PageQuery:
        return PageQuery(self.setup, statement)

    @property
    def reads(self) -> tuple[Statement, ...]:
        """The setup statements that read rows: timed with the page, as part of its cost.
        Planner settings and estimates (``EXPLAIN`` without running) are not."""
        return tuple(
            (sql, params) for sql, params in self.setup if not sql.startswith(_BOOKKEEPING)
        )


_BOOKKEEPING = ("SELECT set_config", "EXPLAIN")


async def capture(engine: AsyncEngine, run: RunPage, position: Position | None) -> PageQuery:
    """The statements a repository page sends; the last one reads the page."""
    with recorded_statements(engine) as seen:
        async with UnitOfWork(create_sessionmaker(engine)) as work:
            await run(work, position)
    if not seen:
        raise RuntimeError("the page sent no statement")
    return PageQuery(tuple(seen[:-1]), seen[-1])


def _index_names(node: dict[str, Any]) -> list[str]:
    names = [node["Index Name"]] if "Index Name" in node else []
    for child in node.get("Plans", []):
        names += _index_names(child)
    return names


def _scan_node(node: dict[str, Any]) -> str:
    if "Relation Name" in node:
        name = node["Node Type"]
        # A bitmap heap scan names its indexes in the bitmap index scans beneath it.
        indexes = _index_names(node)
        if indexes:
            return f"{name} using {' + '.join(dict.fromkeys(indexes))}"
        return f"{name} on {node['Relation Name']}"
    for child in node.get("Plans", []):
        found = _scan_node(child)
        if found:
            return found
    return ""


async def explain(conn: AsyncConnection, statement: Statement) -> Plan:
    sql, params = statement
    result = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
    raw = result.scalar_one()
    document = json.loads(raw) if isinstance(raw, str) else raw
    top = document[0]
    plan = top["Plan"]
    return Plan(
        execution_ms=float(top["Execution Time"]),
        planning_ms=float(top["Planning Time"]),
        buffers=int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0)),
        scan=_scan_node(plan),
    )


def _median_plan(plans: Sequence[Plan]) -> Plan:
    ordered = sorted(plans, key=lambda p: p.execution_ms)
    return ordered[len(ordered) // 2]


async def measure(
    engine: AsyncEngine, query: PageQuery, *, repeats: int, drop: Sequence[str] = ()
) -> Plan:
    """Median of ``repeats`` runs after one warm-up run; ``drop`` lists indexes to do without."""
    async with engine.connect() as conn:
        transaction = await conn.begin()
        try:
            for index in drop:
                await conn.exec_driver_sql(f'DROP INDEX "{index}"')
            plans = []
            sent_reads = query.reads
            for _ in range(repeats + 1):
                # In the order sent: each read under the planner settings it was sent under.
                reads = []
                for statement in query.setup:
                    if statement in sent_reads:
                        reads.append(await explain(conn, statement))
                    else:  # e.g. planner settings local to the transaction
                        await conn.exec_driver_sql(*statement)
                plans.append(_with_reads(await explain(conn, query.statement), reads))
        finally:
            await transaction.rollback()  # the indexes come back untouched
    return _median_plan(plans[1:])


def _with_reads(page: Plan, reads: Sequence[Plan]) -> Plan:
    """The page's plan, its time and buffers including what it read before it."""
    return Plan(
        execution_ms=page.execution_ms + sum(r.execution_ms for r in reads),
        planning_ms=page.planning_ms + sum(r.planning_ms for r in reads),
        buffers=page.buffers + sum(r.buffers for r in reads),
        scan=page.scan,
    )


async def secondary_indexes(engine: AsyncEngine, table: str) -> list[str]:
    """The table's indexes that back no constraint (the primary key and uniques stay)."""
    async with engine.connect() as conn:
        rows = await conn.exec_driver_sql(
            "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_class t ON t.oid = x.indrelid WHERE t.relname = $1 "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid) "
            "ORDER BY i.relname",
            (table,),
        )
        return [r[0] for r in rows]


def _with_limit(query: PageQuery, limit: int) -> Statement:
    """The first page's statement reading ``limit`` rows: its row count is in its text, last
    (``fund.kit.pagination.keyset_statement``)."""
    sql, params = query.statement
    counted = _LAST_LIMIT.search(sql)
    if counted is None or int(counted.group(1)) != rows_to_read(PAGE):
        raise RuntimeError("the page statement is expected to end with its LIMIT")
    return f"{sql[: counted.start()]}LIMIT {int(limit)}", params


_LAST_LIMIT = re.compile(r"LIMIT (\d+)\s*$")


async def matching_rows(engine: AsyncEngine, first_page: PageQuery, cap: int) -> int:
    """How many rows the query matches, counted up to ``cap``."""
    sql, params = _with_limit(first_page, cap)
    async with engine.connect() as conn:
        result = await conn.exec_driver_sql(f"SELECT count(*) FROM ({sql}) AS q", params)
        return int(result.scalar_one())


async def position_at(
    engine: AsyncEngine, first_page: PageQuery, key: str, depth: int
) -> Position | None:
    """The keyset position after ``depth`` rows of the query, as a next-page cursor holds it."""
    if depth == 0:
        return None
    sql, params = _with_limit(first_page, depth)
    async with engine.connect() as conn:
        result = await conn.exec_driver_sql(
            f'SELECT q."{key}", q.id FROM ({sql}) AS q ORDER BY q."{key}", q.id LIMIT 1', params
        )
        row: Any = result.one_or_none()
    if row is None:
        return None
    return Position(row[0], int(row[1]), Direction.NEXT)


def users_page(filters: UserFilters) -> RunPage:
    async def run(work: UnitOfWork, position: Position | None) -> object:
        # The statement GET /users sends (the ORM path of include=audit_logs has the same SQL).
        return await UserRepository(work).page_rows(
            filters, limit=PAGE, position=position, encode=_noop_encode
        )

    return run


def audit_page(filters: AuditFilters) -> RunPage:
    async def run(work: UnitOfWork, position: Position | None) -> object:
        # The statement GET /audit-logs sends.
        return await AuditRepository(work).page_rows(
            filters, limit=PAGE, position=position, encode=_noop_encode
        )

    return run


@dataclass(frozen=True)
class Probe:
    """Values picked from the data so that each filter matches real rows."""

    search_term: str
    heavy_actor: int
    resource_id: str
    day: datetime


async def probe(engine: AsyncEngine) -> Probe:
    async with engine.connect() as conn:
        email = (
            await conn.exec_driver_sql(
                "SELECT email FROM users ORDER BY id OFFSET (SELECT count(*) / 2 FROM users) "
                "LIMIT 1"
            )
        ).scalar_one()
        # The actor with the most entries among a sample: the "user with many entries".
        actor = (
            await conn.exec_driver_sql(
                "SELECT user_id FROM (SELECT user_id FROM audit_logs WHERE user_id IS NOT NULL "
                "ORDER BY id LIMIT 100000) s GROUP BY user_id ORDER BY count(*) DESC LIMIT 1"
            )
        ).scalar_one()
        middle_entry: Any = (
            await conn.exec_driver_sql(
                "SELECT resource_id, timestamp FROM audit_logs "
                "ORDER BY id OFFSET (SELECT count(*) / 2 FROM audit_logs) LIMIT 1"
            )
        ).one()
        resource_id, day = middle_entry
    local = str(email).split("@", 1)[0]
    middle = len(local) // 2
    return Probe(local[max(0, middle - 3) : middle + 3], int(actor), str(resource_id), day)


NO_TRIGRAM = "zq"
"""A search term with no run of three letters or digits, which seeded names and emails
never hold: no index narrows it (``fund.users.repository.SEARCH_WINDOW``)."""


def search_cases(found: Probe) -> list[tuple[str, str, str, RunPage]]:
    """(table, name, sort key, page) for every filter the list endpoints offer."""
    since = found.day.replace(hour=0, minute=0, second=0, microsecond=0)
    return [
        ("users", "newest first", "created_at", users_page(UserFilters())),
        ("users", "role=ANALYST", "created_at", users_page(UserFilters(role=Role.ANALYST))),
        (
            "users",
            "role=ADMIN, is_active=true",
            "created_at",
            users_page(UserFilters(role=Role.ADMIN, is_active=True)),
        ),
        ("users", "is_active=false", "created_at", users_page(UserFilters(is_active=False))),
        (
            "users",
            f"q={found.search_term!r} (substring)",
            "created_at",
            users_page(UserFilters(q=found.search_term)),
        ),
        (
            "users",
            f"q={NO_TRIGRAM!r} (no trigram, no match)",
            "created_at",
            users_page(UserFilters(q=NO_TRIGRAM)),
        ),
        ("audit_logs", "newest first", "timestamp", audit_page(AuditFilters())),
        (
            "audit_logs",
            "action=UPDATE",
            "timestamp",
            audit_page(AuditFilters(action=Action.UPDATE)),
        ),
        (
            "audit_logs",
            "action=LOGIN_FAILED",
            "timestamp",
            audit_page(AuditFilters(action=Action.LOGIN_FAILED)),
        ),
        (
            "audit_logs",
            "resource_type=user, one day",
            "timestamp",
            audit_page(
                AuditFilters(
                    resource_type=ResourceType.USER, since=since, until=since + timedelta(days=1)
                )
            ),
        ),
        (
            "audit_logs",
            "user_id (a heavy actor)",
            "timestamp",
            audit_page(AuditFilters(user_id=found.heavy_actor)),
        ),
        (
            "audit_logs",
            "resource_id",
            "timestamp",
            audit_page(AuditFilters(resource_id=found.resource_id)),
        ),
        (
            "audit_logs",
            "include_deleted=true",
            "timestamp",
            audit_page(AuditFilters(include_deleted=True)),
        ),
    ]


async def search_scenario(
    engine: AsyncEngine, *, repeats: int, log: Callable[[str], None]
) -> list[SearchResult]:
    found = await probe(engine)
    dropped = {t: await secondary_indexes(engine, t) for t in ("users", "audit_logs")}
    results = []
    for table, name, key, run in search_cases(found):
        first = await capture(engine, run, None)
        matches = await matching_rows(engine, first, DEEP + PAGE)
        depth = min(DEEP, max(0, matches - PAGE))
        deep_position = await position_at(engine, first, key, depth)
        deep = await capture(engine, run, deep_position)
        results.append(
            SearchResult(
                table=table,
                name=name,
                indexed=await measure(engine, first, repeats=repeats),
                deep=await measure(engine, deep, repeats=repeats),
                depth=depth if deep_position is not None else 0,
                unindexed=await measure(
                    engine, first, repeats=min(repeats, 2), drop=dropped[table]
                ),
            )
        )
        log(f"search {table} {name}: {results[-1].indexed.execution_ms:.3f} ms")
    return results


async def depth_scenario(
    engine: AsyncEngine, *, repeats: int, log: Callable[[str], None]
) -> list[DepthResult]:
    """OFFSET against keyset at each depth, on the two default listings."""
    results = []
    for table, key, run in (
        ("users", "created_at", users_page(UserFilters())),
        ("audit_logs", "timestamp", audit_page(AuditFilters())),
    ):
        first = await capture(engine, run, None)
        rows = await matching_rows(engine, first, max(DEPTHS) + PAGE)
        for depth in sorted({min(d, max(0, rows - PAGE)) for d in DEPTHS}):
            sql, params = first.statement
            offset = first.with_statement((f"{sql} OFFSET {int(depth)}", params))
            keyset = await capture(engine, run, await position_at(engine, first, key, depth))
            results.append(
                DepthResult(
                    table=table,
                    depth=depth,
                    offset=await measure(engine, offset, repeats=repeats),
                    cursor=await measure(engine, keyset, repeats=repeats),
                )
            )
            log(f"depth {table} {depth}: offset {results[-1].offset.execution_ms:.2f} ms")
    return results


async def _timed(
    engine: AsyncEngine, run: Callable[[UnitOfWork], Awaitable[object]], repeats: int
) -> tuple[float, int]:
    """Median wall time (ms) of ``run`` in a fresh session, and the statements it sent."""
    timings = []
    statements = 0
    for attempt in range(repeats + 1):
        with recorded_statements(engine) as seen:
            started = time.perf_counter()
            async with UnitOfWork(create_sessionmaker(engine)) as work:
                await run(work)
            elapsed = time.perf_counter() - started
        if attempt:  # the first run only warms caches and the prepared-statement cache
            timings.append(elapsed * 1000)
            statements = len(seen)
    return statistics.median(timings), statements


async def n_plus_one_scenario(
    engine: AsyncEngine, *, page_sizes: Sequence[int], repeats: int
) -> list[NPlusOneResult]:
    """A page of users with each one's 5 newest entries: one query per user, or one in all."""
    results = []
    for size in page_sizes:

        async def naive(work: UnitOfWork, size: int = size) -> None:
            page = await UserRepository(work).page_rows(
                UserFilters(), limit=size, position=None, encode=_noop_encode
            )
            audit = AuditRepository(work)
            for user in page.items:  # the N in N+1
                await audit.page_rows(
                    AuditFilters(user_id=user["id"]), limit=5, position=None, encode=_noop_encode
                )

        async def include(work: UnitOfWork, size: int = size) -> None:
            page = await UserRepository(work).page_rows(
                UserFilters(), limit=size, position=None, encode=_noop_encode
            )
            await AuditRepository(work).latest_rows_by_actors([u["id"] for u in page.items], 5)

        naive_ms, naive_statements = await _timed(engine, naive, repeats)
        include_ms, include_statements = await _timed(engine, include, repeats)
        results.append(
            NPlusOneResult(size, naive_ms, naive_statements, include_ms, include_statements)
        )
    return results
