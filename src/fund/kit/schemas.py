"""The page shape every list answers with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from fund.kit.pagination import Page

T = TypeVar("T")


class PageOut(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None
    prev_cursor: str | None
    has_more: bool

    @classmethod
    def of(cls, page: Page[Any], item: Callable[[Any], T]) -> PageOut[T]:
        return cls(
            items=[item(row) for row in page.items],
            next_cursor=page.next_cursor,
            prev_cursor=page.prev_cursor,
            has_more=page.has_more,
        )

    @classmethod
    def from_items(cls, page: Page[Any], items: Sequence[T]) -> PageOut[T]:
        return cls(
            items=list(items),
            next_cursor=page.next_cursor,
            prev_cursor=page.prev_cursor,
            has_more=page.has_more,
        )
