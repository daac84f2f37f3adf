"""Query parameters every list shares."""

from typing import Annotated

from fastapi import Path, Query

Limit = Annotated[int, Query(ge=1, le=100, description="Page size, 1..100")]
Cursor = Annotated[
    str | None,
    Query(
        description="`next_cursor` or `prev_cursor` of a previous page of the same query; "
        "anything else, the empty string included, is refused with 400",
        # Documented, not enforced here: a cursor that is not one is a 400 (API.md), not a 422.
        json_schema_extra={"minLength": 1},
    ),
]
PathId = Annotated[int, Path(ge=1, le=2**63 - 1)]
