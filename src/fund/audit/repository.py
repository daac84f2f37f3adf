"""All SQL on ``audit_logs``."""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from contextlib import aclosing
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Text,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql import FromClause

from fund.audit.schemas import AuditFilters, ExportFormat
from fund.db import DriverQuery, Repository, driver_copy, driver_fetch, unescape_copy_text
from fund.kit.pagination import (
    Keyset,
    Page,
    Position,
    driver_keyset_page,
)
from fund.models import Action, AuditLog

KEYSET = Keyset(AuditLog.timestamp, AuditLog.id)
EXPORT_CHUNK_BYTES = 256 * 1024
"""The export leaves PostgreSQL's COPY in body chunks of about this size."""
EXPORT_TIME_LIMIT = 3600
"""Seconds an export may stream: it is one statement, so the statement timeout of the API's
requests (FUND_DB_STATEMENT_TIMEOUT_MS) cannot be its bound."""
# Audit reads come in index order or not at all: with sorts priced out, the planner must walk an
# ordered (…, timestamp DESC, id DESC) index and stop after the page. Left to its cost model it
# answers small or underestimated match sets with a bitmap scan and a sort of the whole match set,
# and a full export with a scan and a sort (docs/AUDIT.md, "Query plans"). Transaction-local.
INDEX_ORDER_ONLY = (
    "SELECT set_config('enable_sort', 'off', true), "
    "set_config('enable_incremental_sort', 'off', true)"
)
# A page without equality filters (newest first, maybe within since/until) has one right plan
# whatever the values: the timestamp index, walked from the position. Planned afresh for each
# page, it cost 0.04 ms for page one and 0.12 ms for a page from a cursor, whose statement
# has two halves: more than running it (0.02 / 0.04 ms), and with two workers a cursor page
# served ~13 % fewer requests than page one. Such pages use the statement's generic plan,
# made once per connection, with JIT off (a plan made without the values must not be
# compiled for the worst case).
_PLANNED_ONCE = (
    f"{INDEX_ORDER_ONLY}, set_config('plan_cache_mode', 'force_generic_plan', true), "
    "set_config('jit', 'off', true)"
)
# Pages with equality filters are planned for their values, every time: the plan sees how
# rare the filtered value is (resource_type=audit_log is 1 % of the entries), and which of
# two filters' indexes to walk depends on both values (a busy actor and a rare action).
_PLANNED_PER_PAGE = f"{INDEX_ORDER_ONLY}, set_config('plan_cache_mode', 'force_custom_plan', true)"
_RANGE_ONLY = frozenset({"since", "until"})
_EXPORT_SETTINGS = (
    f"{INDEX_ORDER_ONLY}, set_config('statement_timeout', '{EXPORT_TIME_LIMIT * 1000}', true)"
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


def _values(filters: AuditFilters) -> dict[str, Any]:
    """The filters that are set, as the values of their placeholders (``_conditions``)."""
    given = {
        "user_id": filters.user_id,
        "action": filters.action.value if filters.action is not None else None,
        "resource_type": filters.resource_type.value if filters.resource_type is not None else None,
        "resource_id": filters.resource_id,
        "since": filters.since,
        "until": filters.until,
    }
    return {name: value for name, value in given.items() if value is not None}


_TIME = AuditLog.timestamp.type
# Each filter's condition, on a placeholder named like its value in ``_values``.
_CONDITION: dict[str, Callable[[], ColumnElement[bool]]] = {
    "user_id": lambda: AuditLog.user_id == bindparam("user_id"),
    "action": lambda: AuditLog.action == bindparam("action"),
    "resource_type": lambda: AuditLog.resource_type == bindparam("resource_type"),
    "resource_id": lambda: AuditLog.resource_id == bindparam("resource_id"),
    "since": lambda: AuditLog.timestamp >= bindparam("since", type_=_TIME),
    "until": lambda: AuditLog.timestamp < bindparam("until", type_=_TIME),
}


def _conditions(names: Iterable[str], *, include_deleted: bool) -> list[ColumnElement[bool]]:
    """The conditions of the filters named (the keys of ``_values``): with
    ``include_deleted``, the statement's shape."""
    hidden = [] if include_deleted else [AuditLog.is_deleted.is_(False)]
    return hidden + [_CONDITION[name]() for name in names]


def _shown_columns() -> list[ColumnElement[Any]]:
    """``AuditLogRead``'s fields in its order (also the export's): ``details`` and
    ``ip_address`` as PostgreSQL's own text (``abbrev`` is inet's display form)."""
    table = AuditLog.__table__
    as_text = {
        "details": cast(table.c.details, Text).label("details"),
        "ip_address": func.abbrev(table.c.ip_address).label("ip_address"),
    }
    return [as_text.get(name, table.c[name]) for name in EXPORT_COLUMNS]


def _sql_string(value: str) -> ColumnElement[str]:
    """A constant of this module written into the statement (not a placeholder)."""
    return literal_column("'" + value.replace("'", "''") + "'", Text)


def _rfc3339() -> ColumnElement[str]:
    """``fund.audit.schemas.rfc3339`` in SQL: UTC, ``Z``, microseconds only when set."""
    utc = func.timezone(_sql_string("UTC"), AuditLog.timestamp)
    whole_second = func.date_trunc(_sql_string("second"), utc) == utc
    return case(
        (whole_second, func.to_char(utc, _sql_string('YYYY-MM-DD"T"HH24:MI:SS"Z"'))),
        else_=func.to_char(utc, _sql_string('YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
    )


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
"""First characters that make a spreadsheet read a CSV cell as a formula (OWASP's list), and
the quote that marks a guarded cell: a free-text cell starting with one gets a ``'`` put in
front. Dropping a leading ``'`` gives the value back."""


def _csv_cell(value: ColumnElement[Any], *, free_text: bool) -> ColumnElement[str]:
    """A text value as Python's ``csv`` module writes a cell: quoted, quotes doubled, when it
    holds a comma, a quote or a line break; null as nothing. A ``free_text`` cell (what a
    client could have typed) is guarded first (``FORMULA_STARTS``)."""
    value = func.coalesce(value, _sql_string(""))
    if free_text:
        starts = [_sql_string(start) for start in FORMULA_STARTS]
        first = func.left(value, literal_column("1"))  # written in, not a placeholder
        value = case((first.in_(starts), _sql_string("'") + value), else_=value)
    quoted = _sql_string('"') + func.replace(value, _sql_string('"'), _sql_string('""'))
    quoted = quoted + _sql_string('"')
    return case((value.op("~")(_sql_string('[",\\r\\n]')), quoted), else_=value)


@functools.cache
def _export_query(
    export_format: ExportFormat, include_deleted: bool, names: tuple[str, ...]
) -> DriverQuery:
    """The export's query for the filters named: the page query's filters and order, no
    limit, one line a row; compiled once per filter shape, like the pages.

    Each entry is written as its line by PostgreSQL, beside the scan: JSON Lines by
    ``row_to_json`` over the API's fields (compact, in the API's order, ``details``
    embedded as stored), CSV as those fields' text cells. ``copy_lines`` sends that one
    column as COPY data; decoding eleven columns and encoding them again in Python held
    the export to about 100k rows a second (docs/AUDIT.md).
    """
    table = AuditLog.__table__
    fields: dict[str, ColumnElement[Any]] = {name: table.c[name] for name in EXPORT_COLUMNS}
    fields["timestamp"] = _rfc3339()
    fields["ip_address"] = func.abbrev(table.c.ip_address)
    source: FromClause = table
    if export_format is ExportFormat.JSONL:
        entry = (
            select(*(value.label(name) for name, value in fields.items()))
            .correlate(table)
            .lateral("entry")
        )
        source = table.join(entry, true())
        line: ColumnElement[Any] = func.row_to_json(entry.table_valued())
    else:
        line = func.concat_ws(
            _sql_string(","),
            *(
                func.coalesce(cast(value, Text), _sql_string(""))
                if name in _PLAIN_CELLS
                else _csv_cell(cast(value, Text), free_text=name in _FREE_TEXT_CELLS)
                for name, value in fields.items()
            ),
        )
    return DriverQuery(
        select(cast(line, Text).label("line"))
        .select_from(source)
        .where(*_conditions(names, include_deleted=include_deleted))
        .order_by(AuditLog.timestamp.desc(), AuditLog.id.desc())
    )


_PLAIN_CELLS = frozenset({"id", "timestamp", "user_id", "ip_address", "is_deleted"})
"""Cells that never hold a comma, a quote or a line break: numbers, times, addresses."""
_FREE_TEXT_CELLS = frozenset({"resource_id", "user_agent", "request_id"})
"""Cells whose text came from a client (``details`` is a JSON object, always ``{``…)."""


@functools.cache
def _by_id() -> DriverQuery:
    return DriverQuery(select(*_shown_columns()).where(AuditLog.id == bindparam("entry_id")))


@functools.cache
def _latest_by_actors() -> DriverQuery:
    """``include=audit_logs``'s read: for each id of ``ids``, its ``per_user`` newest entries
    (``idx_audit_logs_user_id_timestamp``, walked and stopped), as the page's rows.

    Built and compiled once: made afresh for each page, the ORM's adaptation of the
    aliased LATERAL cost more of a worker's CPU than the rest of the request together.
    """
    actors = func.unnest(bindparam("ids", type_=ARRAY(BigInteger))).table_valued("id")
    actors = actors.render_derived(name="actor")
    latest = (
        select(*_shown_columns())
        .where(AuditLog.user_id == actors.c.id, AuditLog.is_deleted.is_(False))
        .order_by(AuditLog.timestamp.desc(), AuditLog.id.desc())
        .limit(bindparam("per_user", type_=BigInteger))
        .lateral("latest")
    )
    return DriverQuery(
        select(*(latest.c[name] for name in EXPORT_COLUMNS))
        .select_from(actors)
        .join(latest, true())
        # Stated, not left to the join: at most per_user * len(ids) rows to order.
        .order_by(latest.c.user_id, latest.c.timestamp.desc(), latest.c.id.desc())
    )


class AuditRepository(Repository):
    async def add(self, entry: AuditLog) -> AuditLog:
        self.session.add(entry)
        # Written now, inside the change's transaction: if it cannot be written the change fails.
        await self.session.flush()
        return entry

    async def get(self, entry_id: int) -> AuditLog | None:
        return await self.session.get(AuditLog, entry_id)

    async def get_row(self, entry_id: int) -> dict[str, Any] | None:
        """One entry as a row of ``AuditLogRead``'s fields, like ``page_rows``', on the driver:
        one round trip, where the session's read is three (BEGIN, SELECT, COMMIT)."""
        rows = await driver_fetch(self.work, _by_id(), {"entry_id": entry_id})
        if not rows:
            return None
        row = rows[0]
        row["details"] = orjson.loads(row["details"])
        return row

    async def soft_delete(self, entry_id: int) -> bool:
        """Mark an entry deleted; False when it does not exist or already is."""
        result = await self.session.execute(
            update(AuditLog)
            .where(AuditLog.id == entry_id, AuditLog.is_deleted.is_(False))
            .values(is_deleted=True)
            .returning(AuditLog.id)
        )
        return result.scalar_one_or_none() is not None

    async def page_rows(
        self, filters: AuditFilters, *, limit: int, position: Position | None, encode: Any
    ) -> Page[dict[str, Any]]:
        """A page of entries, as plain rows of ``AuditLogRead``'s fields, on the driver.

        ``GET /audit-logs``: one compiled statement per filter shape and direction, in a
        read-only transaction that prices sorts out (``INDEX_ORDER_ONLY``) and begins in
        the same round trip as those settings (``fund.db.driver_fetch``), its rows
        rendered without models. ``details`` arrives as JSON text and is parsed (orjson)
        so the page writes it exactly as the single-entry route does.
        """
        values = _values(filters)
        page = await driver_keyset_page(
            self.work,
            lambda: select(*_shown_columns()).where(
                *_conditions(values, include_deleted=filters.include_deleted)
            ),
            KEYSET,
            shape=("audit_logs", filters.include_deleted, *values),
            limit=limit,
            position=position,
            encode=encode,
            params=values,
            settings=_PLANNED_ONCE if _RANGE_ONLY.issuperset(values) else _PLANNED_PER_PAGE,
        )
        for row in page.items:
            row["details"] = orjson.loads(row["details"])
        return page

    async def copy_lines(
        self,
        filters: AuditFilters,
        export_format: ExportFormat,
        *,
        chunk_bytes: int = EXPORT_CHUNK_BYTES,
    ) -> AsyncGenerator[bytes, None]:
        """Every matching entry in page order, one line each in ``export_format``: the
        body's own bytes, in chunks of whole lines.

        PostgreSQL writes each line (``_export_query``) and sends it as COPY data
        (``fund.db.driver_copy``): one statement, so one snapshot however long it streams,
        with no cursor round trips and no rows decoded here. COPY's text format escapes
        backslashes and control characters; the line feeds it ends rows with are the only
        raw ones, so a CSV export makes them CRLF before the values are unescaped (a line
        break inside a quoted cell stays as it was). Measured on 1M entries read by asyncpg
        alone: 157k to 257k rows a second through a server-side cursor, about 295k through
        COPY, at 0.87 µs of this process's CPU a row against 1.4.
        """
        values = _values(filters)
        query = _export_query(export_format, filters.include_deleted, tuple(values))
        chunks = driver_copy(
            self.work,
            query,
            values,
            settings=_EXPORT_SETTINGS,
            chunk_bytes=chunk_bytes,
            time_limit=EXPORT_TIME_LIMIT,
        )
        crlf = export_format is ExportFormat.CSV
        # Closed as soon as this generator is, even when cancelled: the COPY must end with it.
        async with aclosing(chunks):
            async for chunk in chunks:
                yield unescape_copy_text(chunk.replace(b"\n", b"\r\n") if crlf else chunk)

    async def latest_rows_by_actors(
        self, user_ids: Sequence[int], per_user: int
    ) -> list[dict[str, Any]]:
        """Each actor's ``per_user`` newest entries, in one statement (LATERAL, index-backed),
        as rows of ``AuditLogRead``'s fields like ``page_rows``'; by actor, newest first."""
        if not user_ids:
            return []
        rows = await driver_fetch(
            self.work, _latest_by_actors(), {"ids": list(user_ids), "per_user": per_user}
        )
        for row in rows:
            row["details"] = orjson.loads(row["details"])
        return rows

    async def counts(self) -> dict[str, Any]:
        """Entries by action (one pass over ``idx_audit_logs_action``, index only; the total
        is their sum) and in the last 24 hours (a range of ``idx_audit_logs_timestamp``).
        Counting the total and the last day in one more pass over every entry took as long
        again: 0.58 s at 10M entries, besides the 0.58 s of the breakdown."""
        rows = await self.session.execute(
            select(AuditLog.action, func.count()).group_by(AuditLog.action)
        )
        # Every action named, none seen counted 0: a dashboard reads a stable shape.
        seen: dict[str, int] = dict(rows.all())
        by_action = dict.fromkeys((action.value for action in Action), 0) | seen
        last_24h = await self.session.scalar(
            select(func.count()).where(AuditLog.timestamp >= func.now() - timedelta(hours=24))
        )
        total = sum(by_action.values())
        return {"total": total, "last_24h": last_24h, "by_action": by_action}
