"""All SQL on ``audit_logs``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Select,
    Text,
    bindparam,
    cast,
    func,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from fund.audit.schemas import AuditFilters
from fund.db import DriverQuery, driver_batches
from fund.kit.pagination import Keyset, Page, Position, keyset_page
from fund.models import AuditLog

KEYSET = Keyset(AuditLog.timestamp, AuditLog.id)
EXPORT_BATCH = 5_000
# Audit reads come in index order or not at all: with sorts priced out, the planner must walk an
# ordered (…, timestamp DESC, id DESC) index and stop after the page. Left to its cost model it
# answers small or underestimated match sets with a bitmap scan and a sort of the whole match set,
# and a full export with a scan and a sort (docs/AUDIT.md, "Query plans"). Transaction-local.
INDEX_ORDER_ONLY = (
    "SELECT set_config('enable_sort', 'off', true), "
    "set_config('enable_incremental_sort', 'off', true)"
)
EXPORT_COLUMNS = (
    "id",
    "timestamp",
    "user_id",
    "action",
    "resource_type",
    "resource_id",
    "details",
    "ip_address",
    "user_agent",
    "request_id",
    "is_deleted",
)


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, entry: AuditLog) -> AuditLog:
        self.session.add(entry)
        # Written now, inside the change's transaction: if it cannot be written the change fails.
        await self.session.flush()
        return entry

    async def get(self, entry_id: int) -> AuditLog | None:
        return await self.session.get(AuditLog, entry_id)

    async def soft_delete(self, entry_id: int) -> bool:
        """Mark an entry deleted; False when it does not exist or already is."""
        result = await self.session.execute(
            update(AuditLog)
            .where(AuditLog.id == entry_id, AuditLog.is_deleted.is_(False))
            .values(is_deleted=True)
            .returning(AuditLog.id)
        )
        return result.scalar_one_or_none() is not None

    def _filtered(self, filters: AuditFilters) -> Select[AuditLog]:
        stmt = select(AuditLog)
        if not filters.include_deleted:
            stmt = stmt.where(AuditLog.is_deleted.is_(False))
        if filters.user_id is not None:
            stmt = stmt.where(AuditLog.user_id == filters.user_id)
        if filters.action is not None:
            stmt = stmt.where(AuditLog.action == filters.action.value)
        if filters.resource_type is not None:
            stmt = stmt.where(AuditLog.resource_type == filters.resource_type.value)
        if filters.resource_id is not None:
            stmt = stmt.where(AuditLog.resource_id == filters.resource_id)
        if filters.since is not None:
            stmt = stmt.where(AuditLog.timestamp >= filters.since)
        if filters.until is not None:
            stmt = stmt.where(AuditLog.timestamp < filters.until)
        return stmt

    async def page(
        self, filters: AuditFilters, *, limit: int, position: Position | None, encode: Any
    ) -> Page[AuditLog]:
        await self.session.execute(text(INDEX_ORDER_ONLY))
        return await keyset_page(
            self.session,
            self._filtered(filters),
            KEYSET,
            limit=limit,
            position=position,
            encode=encode,
            key_of=lambda e: (e.timestamp, e.id),
        )

    def export_statement(self, filters: AuditFilters) -> Select[Any]:
        """The export's query: the page query's filters and order, plain columns, no limit.

        ``details`` and ``ip_address`` come as PostgreSQL's own text (``abbrev`` is inet's
        display form): decoding JSON and addresses per row only to encode them again halved
        the rows a second the export could read.
        """
        table = AuditLog.__table__
        as_text = {
            "details": cast(table.c.details, Text).label("details"),
            "ip_address": func.abbrev(table.c.ip_address).label("ip_address"),
        }
        columns = [as_text.get(name, table.c[name]) for name in EXPORT_COLUMNS]
        return (
            self._filtered(filters)
            .with_only_columns(*columns)
            .order_by(AuditLog.timestamp.desc(), AuditLog.id.desc())
        )

    async def stream_rows(
        self, filters: AuditFilters, *, batch: int = EXPORT_BATCH
    ) -> AsyncGenerator[Sequence[Any], None]:
        """Every matching entry in page order, as plain rows in batches from a server-side cursor.

        On the driver (``fund.db.driver_batches``): rows are read as asyncpg records, with no
        per-row SQLAlchemy result processing (measured: 12 -> 5 µs of CPU a row), and nothing
        accumulates, so memory stays flat. One transaction, so the export is one consistent
        snapshot however long it streams.
        """
        await self.session.execute(text(INDEX_ORDER_ONLY))  # begins the transaction
        query = DriverQuery(self.export_statement(filters))  # filter values compiled in
        async for rows in driver_batches(self.session, query, {}, size=batch):
            yield rows

    async def latest_by_actors(self, user_ids: Sequence[int], per_user: int) -> list[AuditLog]:
        """Each actor's ``per_user`` newest entries, in one statement (LATERAL, index-backed)."""
        if not user_ids:
            return []
        ids = bindparam("ids", value=list(user_ids), type_=ARRAY(BigInteger))
        actors = func.unnest(ids).table_valued("id").render_derived(name="actor")
        latest = (
            select(AuditLog)
            .where(AuditLog.user_id == actors.c.id, AuditLog.is_deleted.is_(False))
            .order_by(AuditLog.timestamp.desc(), AuditLog.id.desc())
            .limit(per_user)
            .lateral("latest")
        )
        entry = aliased(AuditLog, latest)
        result = await self.session.scalars(
            select(entry)
            .select_from(actors)
            .join(latest, true())
            # Stated, not left to the join: at most per_user * len(user_ids) rows to order.
            .order_by(entry.user_id, entry.timestamp.desc(), entry.id.desc())
        )
        return list(result.all())

    async def counts(self) -> dict[str, Any]:
        total, last_24h = (
            await self.session.execute(
                select(
                    func.count(),
                    func.count().filter(AuditLog.timestamp >= func.now() - timedelta(hours=24)),
                ).select_from(AuditLog)
            )
        ).one()
        rows = await self.session.execute(
            select(AuditLog.action, func.count()).group_by(AuditLog.action)
        )
        by_action: dict[str, int] = dict(rows.all())
        return {"total": total, "last_24h": last_24h, "by_action": by_action}
