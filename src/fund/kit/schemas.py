"""The page shape every list answers with."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import orjson
from fastapi import Response
from pydantic import BaseModel

from fund.kit.cache import Found
from fund.kit.pagination import Page

T = TypeVar("T")


class PageOut(BaseModel, Generic[T]):
    """A page as the API shows it: the lists' documented schema (``PageJSON`` renders it)."""

    items: list[T]
    next_cursor: str | None
    prev_cursor: str | None
    has_more: bool


class PageJSON(Response):
    """A page of plain rows rendered straight to JSON: the shape of ``PageOut``.

    For the lists that skip models on the way out: rows hold exactly the fields the
    item schema shows, in its order. Timestamps are aware UTC datetimes, written with
    ``Z`` and microseconds when nonzero, as pydantic writes them.
    """

    media_type = "application/json"

    def __init__(self, page: Page[dict[str, Any]]) -> None:
        super().__init__(
            orjson.dumps(
                {
                    "items": page.items,
                    "next_cursor": page.next_cursor,
                    "prev_cursor": page.prev_cursor,
                    "has_more": page.has_more,
                },
                option=orjson.OPT_UTC_Z,
            )
        )


class RowJSON(Response):
    """One plain row rendered straight to JSON, as ``PageJSON`` renders each of its items."""

    media_type = "application/json"

    def __init__(self, row: dict[str, Any]) -> None:
        super().__init__(orjson.dumps(row, option=orjson.OPT_UTC_Z))


class CachedJSON(Response):
    """A cached entity sent as the cache holds it, with ``X-Cache: hit|miss``.

    Entries are the schema's own JSON rendering (``model_dump_json``), so a hit is sent
    without being parsed and rendered again.
    """

    media_type = "application/json"

    def __init__(self, found: Found) -> None:
        super().__init__(found.value, headers={"X-Cache": "hit" if found.hit else "miss"})
