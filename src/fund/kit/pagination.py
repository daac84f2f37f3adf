"""Keyset pages with signed, opaque, bidirectional cursors — the one mechanism every list uses.

A page is ``ORDER BY key DESC, id DESC LIMIT limit + 1`` from a position written
as a row-value comparison ``(key, id) < (:key, :id)``, which a btree index on
``(…, key DESC, id DESC)`` answers as an index condition: no OFFSET, so a page
costs the same at any depth. The extra row tells whether anything follows.

A page read from a cursor is one statement of two index-bounded halves joined by
``UNION ALL``: the page (``limit + 1`` rows beyond the position) and a one-row
probe the other way (does anything lie before the page?). So ``next_cursor`` is
null exactly when nothing follows the page and ``prev_cursor`` exactly when
nothing precedes it, both read in one snapshot, in every path.

A cursor carries the position (the sort key to the microsecond and the id), the
direction and a digest of the route and its filters, and is HMAC-signed; a
cursor that was tampered with, truncated, or made for another route or other
filters is refused as a whole with one generic error.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import struct
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Generic, TypeVar, TypeVarTuple

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Integer,
    Select,
    bindparam,
    literal_column,
    tuple_,
    union_all,
)
from sqlalchemy.orm import InstrumentedAttribute

from fund.db import DriverQuery, UnitOfWork, driver_fetch

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PAYLOAD = struct.Struct(">BBqq8s")  # version, direction, key µs since epoch, id, scope digest
_MAC_BYTES = 16
# 42 bytes are exactly 56 base64 characters with no spare bits: one spelling per cursor.
_TOKEN = re.compile(rf"[A-Za-z0-9_-]{{{(_PAYLOAD.size + _MAC_BYTES) * 4 // 3}}}")


class Direction(Enum):
    NEXT = 0x4E  # "N": rows after the position (older)
    PREV = 0x50  # "P": rows before the position (newer)


class InvalidCursor(Exception):
    """The cursor is malformed, tampered with, or belongs to another query."""


@dataclass(frozen=True, slots=True)
class Position:
    key: datetime
    id: int
    direction: Direction


@dataclass(frozen=True, slots=True)
class PageStart:
    """A page request's cursor, read: its position (None: the first page) and the
    encoder of the cursors the answer carries (same route, same filters)."""

    position: Position | None
    encode: Callable[[Position], str]


def page_scope(route: str, filters: Mapping[str, Any]) -> bytes:
    """A digest of the route and its filters: a cursor only fits the query that made it.

    Every page request makes one, mostly for the same few filters: remembered (the JSON
    and the hash cost a worker 20 µs a request, 3 % of ``GET /users``).
    """
    # Each value with its type: True and 1 are equal keys, but not the same filter. (The
    # filters' order only makes another entry: the digest sorts them itself.)
    present = tuple((k, type(v), v) for k, v in filters.items() if v is not None)
    try:
        return _scope_digest(route, present)
    except TypeError:  # a value that cannot be a cache key (a list): digested every time
        return _scope_digest.__wrapped__(route, present)


@functools.lru_cache(maxsize=1024)
def _scope_digest(route: str, filters: tuple[tuple[str, type, Any], ...]) -> bytes:
    canonical = json.dumps(
        {"route": route, "filters": {name: value for name, _, value in filters}},
        sort_keys=True,
        default=str,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).digest()[:8]


class CursorCodec:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def encode(self, scope: bytes, position: Position) -> str:
        micros = (position.key - _EPOCH) // timedelta(microseconds=1)
        payload = _PAYLOAD.pack(_VERSION, position.direction.value, micros, position.id, scope)
        return self._seal(payload)

    def _seal(self, payload: bytes) -> str:
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(payload + mac).decode()

    def start(self, route: str, filters: Mapping[str, Any], cursor: str | None) -> PageStart:
        """Where a page of ``route`` under ``filters`` starts (``InvalidCursor`` if it cannot),
        and how that query's next cursors are written."""
        scope = page_scope(route, filters)
        position = self.decode(scope, cursor) if cursor is not None else None
        return PageStart(position, functools.partial(self.encode, scope))

    def decode(self, scope: bytes, token: str) -> Position:
        # The lenient base64 decoder skips foreign characters; only the one exact spelling passes.
        if not _TOKEN.fullmatch(token):
            raise InvalidCursor
        raw = base64.urlsafe_b64decode(token)
        payload, mac = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            raise InvalidCursor
        version, direction, micros, row_id, cursor_scope = _PAYLOAD.unpack(payload)
        if version != _VERSION or not hmac.compare_digest(cursor_scope, scope):
            raise InvalidCursor
        try:
            return Position(_EPOCH + timedelta(microseconds=micros), row_id, Direction(direction))
        except (ValueError, OverflowError) as exc:
            raise InvalidCursor from exc


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_cursor: str | None
    prev_cursor: str | None

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None


@dataclass(frozen=True, slots=True)
class Keyset:
    """The sort of a list: a timestamp column, newest first, with the id as tie-breaker."""

    key: InstrumentedAttribute[datetime] | ColumnElement[datetime]
    id: InstrumentedAttribute[int] | ColumnElement[int]
    """Columns of a table, or of a CTE the page reads from."""

    @property
    def names(self) -> tuple[str, str]:
        """The two columns' names, as a row of the page carries them."""
        key, row_id = self.key.key, self.id.key
        assert key is not None and row_id is not None
        return key, row_id


# The names of the keyset's own placeholders; a filter's placeholders must not reuse them.
CURSOR_KEY = "cursor_key"
CURSOR_ID = "cursor_id"


def keyset_statement(
    stmt: Select[T], keyset: Keyset, *, direction: Direction | None, rows: int
) -> Select[T] | CompoundSelect[Any]:
    """The one statement of a page, as a shape: the position is a placeholder.

    A shape is the same text for every page of its size in that direction, so a compiled
    form can be reused (``fund.db.DriverQuery``); ``keyset_values`` gives the values to
    run it with. From a position it is two index-bounded halves joined by ``UNION ALL``:
    the page beyond the position and a one-row probe behind it.

    The row counts are written into the text, not sent as values (``rows_to_read``).
    PostgreSQL plans a prepared statement's first runs for their values, then compares
    that cost with a generic plan's and keeps the generic one if it is no dearer; an
    unknown ``LIMIT`` it prices at a tenth of the table, so with ``LIMIT $n`` it never did
    and planned every page again: under load (``wrk``, two workers), PostgreSQL spent
    184-201 µs of CPU per ``GET /users`` page one, 124-126 µs with the count in the text;
    298-301 against 140-148 µs per page from a cursor. The generic plan of a page is the
    page's own plan: each filter has an index that leads with its column and ends in the
    sort (migration 002).
    """
    page = keyset_beyond(stmt, keyset, direction=direction, rows=rows)
    if direction is None:
        return page
    sort, at = _sort_and_position(keyset)
    if direction is Direction.NEXT:
        probe = stmt.where(sort >= at).order_by(keyset.key.asc(), keyset.id.asc())
    else:
        probe = stmt.where(sort <= at).order_by(keyset.key.desc(), keyset.id.desc())
    return union_all(page, probe.limit(row_count(1)))


def keyset_beyond(
    stmt: Select[*Ts], keyset: Keyset, *, direction: Direction | None, rows: int
) -> Select[*Ts]:
    """At most ``rows`` rows beyond the position (a placeholder) in ``direction``, nearest
    first: the page half of ``keyset_statement``, or from the start when ``direction`` is
    None."""
    newest_first = (keyset.key.desc(), keyset.id.desc())
    if direction is None:
        return stmt.order_by(*newest_first).limit(row_count(rows))
    sort, at = _sort_and_position(keyset)
    if direction is Direction.NEXT:
        return stmt.where(sort < at).order_by(*newest_first).limit(row_count(rows))
    return stmt.where(sort > at).order_by(keyset.key.asc(), keyset.id.asc()).limit(row_count(rows))


def _sort_and_position(keyset: Keyset) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """The keyset as a row value, and the position's placeholders as one."""
    # Typed placeholders: a bigint id must not be cast to integer, and the row comparison
    # must match the index columns' types to stay an index condition.
    at = tuple_(
        bindparam(CURSOR_KEY, type_=keyset.key.type), bindparam(CURSOR_ID, type_=keyset.id.type)
    )
    return tuple_(keyset.key, keyset.id), at


def row_count(rows: int) -> ColumnElement[int]:
    """A row count written into a statement's text, not sent as a value (``keyset_statement``)."""
    return literal_column(str(int(rows)), Integer)


def keyset_values(position: Position | None) -> dict[str, Any]:
    """The values of ``keyset_statement``'s placeholders for a page from ``position``."""
    if position is None:
        return {}
    return {CURSOR_KEY: position.key, CURSOR_ID: position.id}


async def driver_keyset_page(
    work: UnitOfWork,
    stmt: Callable[[], Select[Any]],
    keyset: Keyset,
    *,
    shape: Hashable,
    limit: int,
    position: Position | None,
    encode: Callable[[Position], str],
    params: Mapping[str, Any],
    settings: str | None = None,
) -> Page[dict[str, Any]]:
    """One page of plain rows, run on the driver (``fund.db.driver_fetch``, which applies
    ``settings``, planner settings for the page's statement).

    ``stmt`` builds the filtered select, its filters on named placeholders whose values
    are ``params``; ``shape`` must name that statement (which filters it has). The page
    statement is compiled on the first page of each shape, direction and size, then reused.
    """
    direction = position.direction if position is not None else None
    rows = rows_to_read(limit)
    query = _DRIVER_PAGES.get((shape, direction, rows))
    if query is None:
        query = DriverQuery(keyset_statement(stmt(), keyset, direction=direction, rows=rows))
        _DRIVER_PAGES[(shape, direction, rows)] = query
        if len(_DRIVER_PAGES) > DRIVER_PAGES_KEPT:
            del _DRIVER_PAGES[next(iter(_DRIVER_PAGES))]  # the one compiled longest ago
    values = keyset_values(position) | dict(params)
    found = await driver_fetch(work, query, values, settings=settings)
    key, row_id = keyset.names
    return page_of_rows(
        found, limit=limit, position=position, encode=encode, key_of=lambda r: (r[key], r[row_id])
    )


READ_SIZES = (11, 21, 51, 101)
"""The row counts a page statement reads (``rows_to_read``)."""


def rows_to_read(limit: int) -> int:
    """The rows a page of ``limit`` reads: at least ``limit + 1``, rounded up to one of a few
    sizes, so the sizes clients ask for (1 to 100) make four statement texts per shape and
    direction, not a hundred, for PostgreSQL's and asyncpg's per-connection statement
    caches. The extra rows are never shown: ``page_of_rows`` keeps the ``limit`` nearest
    the position, and one more tells whether anything follows.
    """
    return next((size for size in READ_SIZES if size > limit), limit + 1)


DRIVER_PAGES_KEPT = 1024
"""Compiled page statements kept, at most: route filter combinations times three directions
times four sizes. Past this many, the one compiled longest ago goes (and is compiled again
if asked for again)."""
_DRIVER_PAGES: dict[tuple[Hashable, Direction | None, int], DriverQuery] = {}


def page_of_rows(
    rows: Sequence[T],
    *,
    limit: int,
    position: Position | None,
    encode: Callable[[Position], str],
    key_of: Callable[[T], tuple[datetime, int]],
) -> Page[T]:
    """The page, with its cursors, from the rows ``keyset_statement`` returned.

    The page holds the ``limit`` rows nearest the position in its direction, newest
    first; a backward walk that reaches the start gets the rows that remain, like the
    last page of a forward walk.
    """
    if position is None:
        items = rows[:limit]
        more = len(rows) > limit
        return Page(items, encode(_at(key_of(items[-1]), Direction.NEXT)) if more else None, None)

    here = (position.key, position.id)
    forward = position.direction is Direction.NEXT
    # UNION ALL promises no order across its halves: split and sort by the key itself.
    beyond = sorted(
        (r for r in rows if (key_of(r) < here if forward else key_of(r) > here)),
        key=key_of,
        reverse=forward,
    )
    behind = len(beyond) < len(rows)  # the probe found a row on the other side
    more = len(beyond) > limit
    nearest = beyond[:limit]
    if forward:
        return Page(
            nearest,
            encode(_at(key_of(nearest[-1]), Direction.NEXT)) if more else None,
            _edge_cursor(_first(nearest), position, Direction.PREV, encode, key_of)
            if behind
            else None,
        )
    newer_first = nearest[::-1]
    return Page(
        newer_first,
        _edge_cursor(_last(newer_first), position, Direction.NEXT, encode, key_of)
        if behind
        else None,
        encode(_at(key_of(newer_first[0]), Direction.PREV)) if more else None,
    )


def _edge_cursor(
    item: T | None,
    position: Position,
    direction: Direction,
    encode: Callable[[Position], str],
    key_of: Callable[[T], tuple[datetime, int]],
) -> str:
    """The cursor past ``item`` (the page's edge) in ``direction``.

    With no item, the page came back empty (its rows left the filter meanwhile): the
    cursor then starts at the position itself, inclusive; ids are integers, so
    "> id - 1" is ">= id" and "< id + 1" is "<= id".
    """
    if item is not None:
        return encode(_at(key_of(item), direction))
    step = -1 if direction is Direction.PREV else 1
    return encode(Position(position.key, position.id + step, direction))


def _first(items: Sequence[T]) -> T | None:
    return items[0] if items else None


def _last(items: Sequence[T]) -> T | None:
    return items[-1] if items else None


def _at(key: tuple[datetime, int], direction: Direction) -> Position:
    return Position(key[0], key[1], direction)
