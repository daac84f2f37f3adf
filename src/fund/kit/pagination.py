"""Keyset pages with signed, opaque, bidirectional cursors — the one mechanism every list uses.

A page is ``ORDER BY key DESC, id DESC LIMIT limit + 1`` from a position written
as a row-value comparison ``(key, id) < (:key, :id)``, which a btree index on
``(…, key DESC, id DESC)`` answers as an index condition: no OFFSET, so a page
costs the same at any depth. The extra row tells whether anything follows.

A cursor carries the position (the sort key to the microsecond and the id), the
direction and a digest of the route and its filters, and is HMAC-signed; a
cursor that was tampered with, truncated, or made for another route or other
filters is refused as a whole with one generic error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

T = TypeVar("T")

_VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PAYLOAD = struct.Struct(">BBqq8s")  # version, direction, key µs since epoch, id, scope digest
_MAC_BYTES = 16
_MAX_TOKEN_CHARS = 128


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


def page_scope(route: str, filters: Mapping[str, Any]) -> bytes:
    """A digest of the route and its filters: a cursor only fits the query that made it."""
    canonical = json.dumps(
        {"route": route, "filters": {k: v for k, v in filters.items() if v is not None}},
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
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()

    def decode(self, scope: bytes, token: str) -> Position:
        if not token or len(token) > _MAX_TOKEN_CHARS or not token.isascii():
            raise InvalidCursor
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidCursor from exc
        if len(raw) != _PAYLOAD.size + _MAC_BYTES:
            raise InvalidCursor
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

    key: InstrumentedAttribute[datetime]
    id: InstrumentedAttribute[int]


async def keyset_page(
    session: AsyncSession,
    stmt: Select[T],
    keyset: Keyset,
    *,
    limit: int,
    position: Position | None,
    encode: Callable[[Position], str],
    key_of: Callable[[T], tuple[datetime, int]],
) -> Page[T]:
    """Run ``stmt`` (filters applied, no ORDER BY) as one page from ``position``."""
    sort = tuple_(keyset.key, keyset.id)
    if position is None or position.direction is Direction.NEXT:
        query = stmt.order_by(keyset.key.desc(), keyset.id.desc()).limit(limit + 1)
        if position is not None:
            query = query.where(sort < tuple_(position.key, position.id))
        rows = list((await session.scalars(query)).all())
        more = len(rows) > limit
        items = rows[:limit]
        return Page(
            items,
            encode(_at(key_of(items[-1]), Direction.NEXT)) if more else None,
            _prev_of_forward(position, items, encode, key_of),
        )

    query = (
        stmt.where(sort > tuple_(position.key, position.id))
        .order_by(keyset.key.asc(), keyset.id.asc())
        .limit(limit + 1)
    )
    rows = list((await session.scalars(query)).all())
    if not rows:  # nothing newer any more: the first page is the page before
        return await keyset_page(
            session, stmt, keyset, limit=limit, position=None, encode=encode, key_of=key_of
        )
    more = len(rows) > limit
    items = rows[:limit][::-1]
    return Page(
        items,
        encode(_at(key_of(items[-1]), Direction.NEXT)),
        encode(_at(key_of(items[0]), Direction.PREV)) if more else None,
    )


def _prev_of_forward(
    position: Position | None,
    items: Sequence[T],
    encode: Callable[[Position], str],
    key_of: Callable[[T], tuple[datetime, int]],
) -> str | None:
    if position is None:
        return None
    if not items:  # rows past the position vanished from the filter: go back from it
        return encode(Position(position.key, position.id, Direction.PREV))
    return encode(_at(key_of(items[0]), Direction.PREV))


def _at(key: tuple[datetime, int], direction: Direction) -> Position:
    return Position(key[0], key[1], direction)
