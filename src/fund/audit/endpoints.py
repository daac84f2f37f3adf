"""``/api/v1/audit-logs``: search, read, soft-delete and export the trail (ADMIN only)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, status
from fastapi.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from fund.audit import export
from fund.audit.schemas import (
    AUDIT_EXPORT_QUERY,
    AUDIT_LIST_QUERY,
    AuditExportQuery,
    AuditListQuery,
    AuditLogRead,
)
from fund.auth.dependencies import AdminActor, AdminUser
from fund.deps import AuditServiceDep, ResourcesDep, UnitOfWorkRoute, audit_export
from fund.errors import (
    BadCursor,
    ExportsBusy,
    Forbidden,
    NotAuthenticated,
    NotFound,
    Unavailable,
    documented,
    method_not_allowed,
)
from fund.kit.params import PathId
from fund.kit.request_context import StreamInterrupted
from fund.kit.schemas import PageJSON, PageOut, RowJSON

log = structlog.get_logger(__name__)
router = APIRouter(
    route_class=UnitOfWorkRoute,
    prefix="/audit-logs",
    tags=["audit"],
    responses=documented(NotAuthenticated, Forbidden, Unavailable),
)


@router.get(
    "",
    response_model=PageOut[AuditLogRead],
    responses=documented(BadCursor),
    openapi_extra=AUDIT_LIST_QUERY.openapi,
)
async def list_audit_logs(
    _: AdminUser,
    query: Annotated[AuditListQuery, Depends(AUDIT_LIST_QUERY)],
    audit: AuditServiceDep,
) -> PageJSON:
    """Newest first (`timestamp DESC, id DESC`); `since` inclusive, `until` exclusive."""
    return PageJSON(await audit.page(query.filters, limit=query.limit, cursor=query.cursor))


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Every matching entry: one JSON object per line, or CSV with a header",
            "content": {media_type: {} for media_type in export.MEDIA_TYPES.values()},
        },
        **documented(ExportsBusy),
    },
    openapi_extra=AUDIT_EXPORT_QUERY.openapi,
)
async def export_audit_logs(
    _: AdminUser,
    query: Annotated[AuditExportQuery, Depends(AUDIT_EXPORT_QUERY)],
    resources: ResourcesDep,
) -> StreamingResponse:
    """Every matching entry in page order, streamed in constant memory."""
    chunks = audit_export(resources, query.filters, query.format)
    try:
        # Before the status line: an export that cannot start (the database is down, say)
        # is answered with its error status, not with a 200 and a broken body.
        first = await anext(chunks, b"")
    except BaseException:
        await chunks.aclose()
        raise
    return _ExportResponse(
        chunks,
        first,
        media_type=export.MEDIA_TYPES[query.format],
        headers={"Content-Disposition": f'attachment; filename="audit-logs.{query.format.value}"'},
    )


router.add_api_route(
    "/export", method_not_allowed, methods=["DELETE"], include_in_schema=False, response_model=None
)


@router.get("/{entry_id}", response_model=AuditLogRead, responses=documented(NotFound))
async def read_audit_log(entry_id: PathId, _: AdminUser, audit: AuditServiceDep) -> RowJSON:
    return RowJSON(await audit.get_row(entry_id))


@router.delete(
    "/{entry_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,  # no body, so no Content-Type either
    responses=documented(NotFound),
)
async def soft_delete_audit_log(
    entry_id: PathId, actor: AdminActor, audit: AuditServiceDep
) -> None:
    """Soft delete: the entry stays, flagged `is_deleted`; the deletion is audited."""
    await audit.soft_delete(actor, entry_id)


EXPORT_STALL_SECONDS = 60.0
"""A client that takes nothing of an export for this long is let go: its export ends, and
with it its turn (``FUND_EXPORTS_PER_WORKER``), its COPY and its pooled connection. Without
it, a client that stops reading would hold them until the export's own time limit."""


class _ExportResponse(StreamingResponse):
    """``first``, then the rest of ``chunks``; ``chunks`` (its COPY, its pooled connection) is
    closed when the response ends, however it ends: also when the client leaves before the
    first byte or while a chunk is being sent, which leave the body's generator suspended
    until the garbage collector finds it, or stalls (``EXPORT_STALL_SECONDS``)."""

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        first: bytes,
        *,
        media_type: str,
        headers: dict[str, str],
    ) -> None:
        super().__init__(_body(chunks, first), media_type=media_type, headers=headers)
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_in_time(message: Message) -> None:
            try:
                async with asyncio.timeout(EXPORT_STALL_SECONDS):
                    await send(message)  # the server waits while the client reads nothing
            except TimeoutError:
                log.warning("export_stalled", seconds=EXPORT_STALL_SECONDS)
                raise StreamInterrupted from None

        try:
            await super().__call__(scope, receive, send_in_time)
        finally:
            await self.chunks.aclose()


async def _body(chunks: AsyncGenerator[bytes, None], first: bytes) -> AsyncIterator[bytes]:
    yield first
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as error:
        # The status line and part of the body are out: no error answer can follow.
        log.warning(
            "export_interrupted",
            error=type(error).__name__,
            sqlstate=getattr(error, "sqlstate", None),
        )
        raise StreamInterrupted from error
