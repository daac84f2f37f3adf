"""Query parameters every list shares."""

from typing import Annotated

from fastapi import Path, Query

Limit = Annotated[int, Query(ge=1, le=100, description="Page size, 1..100")]
Cursor = Annotated[
    str | None,
    Query(description="`next_cursor` or `prev_cursor` of a previous page of the same query"),
]
PathId = Annotated[int, Path(ge=1, le=2**63 - 1)]
