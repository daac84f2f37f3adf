"""Audit rules: what an entry says, who may see it, and the soft delete."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from ipaddress import ip_address
from typing import Any

from fund.audit import export
from fund.audit.repository import AuditRepository
from fund.audit.schemas import AuditFilters, ExportFormat
from fund.db import UnitOfWork
from fund.errors import ExportsBusy, NotFound
from fund.kit.pagination import CursorCodec, Page
from fund.kit.security import TokenSubject
from fund.kit.slots import NoSlot, Slots
from fund.models import Action, AuditLog, ResourceType


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change and from where: the context every audit entry records."""

    user_id: int | None
    ip_address: str | None
    user_agent: str | None
    request_id: str | None
    session: TokenSubject | None = None
    """The access token the change was made with; not recorded."""

    def as_user(self, user_id: int, session: TokenSubject | None = None) -> Actor:
        return Actor(user_id, self.ip_address, self.user_agent, self.request_id, session)


def _valid_ip(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ip_address(value))
    except ValueError:
        return None


class AuditTrail:
    """The trail as the other domains use it: they write their entries to it, in their own
    unit of work, and read a user's latest (``include=audit_logs``). No cursors: its own
    pages are ``AuditService``'s."""

    def __init__(self, work: UnitOfWork) -> None:
        self.repository = AuditRepository(work)

    async def record(
        self,
        actor: Actor,
        action: Action,
        resource_type: ResourceType,
        resource_id: str | int,
        details: dict[str, Any] | None = None,
        *,
        at: datetime | None = None,
    ) -> AuditLog:
        """Write an entry in the caller's transaction: it commits or rolls back with the change.

        ``at``: when the change it records was written, the changed row's own timestamp
        (``created_at``, ``updated_at``), so that the two agree to the microsecond. Without
        it, the time the entry is written. Either is taken after the change waited for its
        row's lock, never the transaction's start: the entries of one resource follow the
        order its changes were applied (migration 010).
        """
        written = {} if at is None else {"timestamp": at}
        return await self.repository.add(
            AuditLog(
                user_id=actor.user_id,
                action=action.value,
                resource_type=resource_type.value,
                resource_id=str(resource_id),
                details=details or {},
                ip_address=_valid_ip(actor.ip_address),
                user_agent=actor.user_agent[:512] if actor.user_agent else None,
                request_id=actor.request_id,
                **written,
            )
        )

    async def latest_by_actors(
        self, user_ids: Sequence[int], per_user: int
    ) -> list[dict[str, Any]]:
        """Each actor's ``per_user`` newest entries (hidden ones left out), as rows of
        ``AuditLogRead``'s fields: by actor, newest first."""
        return await self.repository.latest_rows_by_actors(user_ids, per_user)


class AuditService:
    """The trail's own routes: reading, paging, exporting and soft-deleting entries."""

    def __init__(self, work: UnitOfWork, cursors: CursorCodec) -> None:
        self.repository = AuditRepository(work)
        self.trail = AuditTrail(work)
        self.cursors = cursors

    async def get(self, entry_id: int) -> AuditLog:
        entry = await self.repository.get(entry_id)
        if entry is None:
            raise NotFound("Audit log entry not found")
        return entry

    async def get_row(self, entry_id: int) -> dict[str, Any]:
        """``GET /audit-logs/{id}``: the entry as a row of ``AuditLogRead``'s fields."""
        row = await self.repository.get_row(entry_id)
        if row is None:
            raise NotFound("Audit log entry not found")
        return row

    async def page(
        self, filters: AuditFilters, *, limit: int, cursor: str | None
    ) -> Page[dict[str, Any]]:
        """A page of entries as rows of exactly the fields ``AuditLogRead`` shows."""
        start = self.cursors.start("audit-logs", filters.model_dump(mode="json"), cursor)
        return await self.repository.page_rows(
            filters, limit=limit, position=start.position, encode=start.encode
        )

    async def soft_delete(self, actor: Actor, entry_id: int) -> None:
        """Hide an entry from default listings; the row stays and the deletion is itself audited."""
        if not await self.repository.soft_delete(entry_id):
            await self.get(entry_id)  # 404 when it does not exist
            return  # already deleted: idempotent, nothing new to record
        await self.trail.record(actor, Action.DELETE, ResourceType.AUDIT_LOG, entry_id)

    async def export(
        self, filters: AuditFilters, export_format: ExportFormat, *, slots: Slots
    ) -> AsyncGenerator[bytes, None]:
        """The export's body, in chunks: a CSV export starts with its header row.

        The first chunk comes from the database (the header travels with it), so a caller
        that awaits it knows the export could start: an HTTP answer can still be an error,
        ``ExportsBusy`` among them when ``slots`` has no turn for it in time. The turn is
        taken before the unit of work's connection, and held until the body ends.
        """
        try:
            await slots.take()
        except NoSlot:
            raise ExportsBusy from None
        try:
            header = export.csv_header() if export_format is ExportFormat.CSV else b""
            # aclosing: a reader that leaves closes the lines' generator then and there (not
            # when collected), so the COPY ends and its connection is retired before this
            # unit closes.
            async with aclosing(self.repository.copy_lines(filters, export_format)) as chunks:
                async for chunk in chunks:
                    yield header + chunk if header else chunk
                    header = b""
            if header:  # no entry matched: the header alone
                yield header
        finally:
            slots.give_back()
