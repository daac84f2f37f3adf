"""The cursor codec alone: exact round trips, and refusal of anything it did not make."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fund.kit.pagination import CursorCodec, Direction, InvalidCursor, Position, page_scope

CODEC = CursorCodec(b"k" * 32)
SCOPE = page_scope("users", {"role": "VIEWER"})

positions = st.builds(
    Position,
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    st.integers(min_value=1, max_value=2**63 - 1),
    st.sampled_from(Direction),
)


@given(positions)
def test_a_cursor_gives_back_its_position_to_the_microsecond(position: Position) -> None:
    token = CODEC.encode(SCOPE, position)
    assert CODEC.decode(SCOPE, token) == position
    assert len(token) == 56
    assert token.isascii()
    assert all(c.isalnum() or c in "-_" for c in token)  # URL-safe, no padding


@given(positions)
def test_a_cursor_fits_only_its_scope_and_its_key(position: Position) -> None:
    token = CODEC.encode(SCOPE, position)
    with pytest.raises(InvalidCursor):
        CODEC.decode(page_scope("users", {"role": "ADMIN"}), token)
    with pytest.raises(InvalidCursor):
        CODEC.decode(page_scope("audit-logs", {"role": "VIEWER"}), token)
    with pytest.raises(InvalidCursor):
        CursorCodec(b"j" * 32).decode(SCOPE, token)


def test_microsecond_neighbours_and_directions_make_different_cursors() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    tokens = {
        CODEC.encode(SCOPE, Position(at + timedelta(microseconds=us), row_id, direction))
        for us in (0, 1, 2)
        for row_id in (1, 2)
        for direction in Direction
    }
    assert len(tokens) == 12


def test_the_scope_is_the_route_and_the_filters_that_are_set() -> None:
    assert page_scope("users", {"role": "VIEWER", "q": None}) == page_scope(
        "users", {"role": "VIEWER"}
    )
    assert page_scope("users", {"a": 1, "b": 2}) == page_scope("users", {"b": 2, "a": 1})
    assert page_scope("users", {}) != page_scope("audit-logs", {})
    assert page_scope("users", {"is_active": True}) != page_scope("users", {"is_active": False})
    assert page_scope("users", {"q": "ab"}) != page_scope("users", {"q": "abc"})


def test_a_remembered_scope_is_the_one_made_afresh() -> None:
    """``page_scope`` remembers its digests: asked again, or for a value that is an equal
    key of another type (True and 1), it answers as it would the first time."""
    first = page_scope("users", {"role": "ADMIN", "is_active": True})
    assert page_scope("users", {"is_active": True, "role": "ADMIN"}) == first
    assert page_scope("users", {"role": "ADMIN", "is_active": 1}) != first
    assert page_scope("users", {"role": "ADMIN", "is_active": True}) == first
    # A value that cannot be remembered (unhashable) is digested all the same.
    assert page_scope("users", {"ids": [1, 2]}) == page_scope("users", {"ids": [1, 2]})
    assert page_scope("users", {"ids": [1, 2]}) != page_scope("users", {"ids": [2, 1]})


@given(positions)
def test_a_page_starts_where_its_cursor_points_and_writes_cursors_of_its_own_query(
    position: Position,
) -> None:
    first = CODEC.start("users", {"role": "VIEWER"}, None)
    assert first.position is None
    token = first.encode(position)
    assert CODEC.start("users", {"role": "VIEWER", "q": None}, token).position == position
    with pytest.raises(InvalidCursor):
        CODEC.start("users", {"role": "ADMIN"}, token)
    with pytest.raises(InvalidCursor):
        CODEC.start("audit-logs", {"role": "VIEWER"}, token)
