"""``GET /users`` pages: walks under concurrent change, constant queries, bad parameters.

Every page is checked against an oracle computed in Python from the table as it
stood when the page was read, so the tests state the contract of section 5 row by row.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from fund.deps import Resources
from tests.conftest import Account
from tests.helpers import statements_sent

BASE = datetime(2025, 1, 1, tzinfo=UTC)
ROLES = ("ADMIN", "ANALYST", "VIEWER")
MARK = "zz"  # a substring only some full names carry; emails never contain a "z"
FILTERS: tuple[dict[str, str], ...] = (
    {},
    {"role": "VIEWER"},
    {"is_active": "true"},
    {"role": "ANALYST", "is_active": "false"},
    {"q": MARK},
    {"q": MARK.upper(), "role": "VIEWER"},
)
_emails = itertools.count()

Key = tuple[datetime, int]


@dataclass(frozen=True)
class Row:
    id: int
    created_at: datetime
    email: str
    full_name: str
    role: str
    is_active: bool

    @property
    def key(self) -> Key:
        return (self.created_at, self.id)

    def matches(self, filters: dict[str, str]) -> bool:
        if "role" in filters and self.role != filters["role"]:
            return False
        if "is_active" in filters and self.is_active != (filters["is_active"] == "true"):
            return False
        q = filters.get("q", "").lower()
        return q in self.email.lower() or q in self.full_name.lower()


@dataclass(frozen=True)
class NewRow:
    """A user inserted between page fetches, anywhere in the order (ties included)."""

    offset_us: int
    role: str
    is_active: bool
    marked: bool


@dataclass(frozen=True)
class Change:
    """A PATCH of an existing user between page fetches, through the API."""

    pick: int
    role: str | None
    is_active: bool | None
    marked: bool | None


# Offsets within 40 µs: many identical created_at values, the rest a microsecond apart.
offsets = st.integers(min_value=0, max_value=40)
new_rows = st.builds(NewRow, offsets, st.sampled_from(ROLES), st.booleans(), st.booleans())
changes = st.builds(
    Change,
    st.integers(min_value=0, max_value=10_000),
    st.none() | st.sampled_from(ROLES),
    st.none() | st.booleans(),
    st.none() | st.booleans(),
)
steps = st.lists(st.lists(new_rows | changes, min_size=1, max_size=3), min_size=2, max_size=12)


async def insert_rows(resources: Resources, rows: list[NewRow]) -> None:
    if not rows:
        return
    async with resources.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (email, full_name, hashed_password, role, is_active,"
                " created_at, updated_at) VALUES (:email, :full_name, 'x',"
                " CAST(:role AS user_role), :is_active, :created_at, :created_at)"
            ),
            [
                {
                    "email": f"u{next(_emails)}@pages.test",
                    "full_name": f"{MARK} n" if row.marked else "n",
                    "role": row.role,
                    "is_active": row.is_active,
                    "created_at": BASE + timedelta(microseconds=row.offset_us),
                }
                for row in rows
            ],
        )


async def table(resources: Resources) -> list[Row]:
    async with resources.engine.connect() as conn:
        result = await conn.execute(
            text("SELECT id, created_at, email, full_name, role::text, is_active FROM users")
        )
        return [Row(*r) for r in result.all()]


async def apply(
    client: httpx.AsyncClient, resources: Resources, admin: Account, step: list[NewRow | Change]
) -> None:
    for op in step:
        if isinstance(op, NewRow):
            await insert_rows(resources, [op])
            continue
        others = sorted(r.id for r in await table(resources) if r.id != admin.id)
        if not others:
            continue
        body: dict[str, Any] = {}
        if op.role is not None:
            body["role"] = op.role
        if op.is_active is not None:
            body["is_active"] = op.is_active
        if op.marked is not None:
            body["full_name"] = f"{MARK} n" if op.marked else "n"
        target = others[op.pick % len(others)]
        response = await client.patch(f"/api/v1/users/{target}", json=body, headers=admin.headers)
        assert response.status_code == 200, response.text


@dataclass(frozen=True)
class Expected:
    ids: list[int]
    has_next: bool
    has_prev: bool


def oracle(members: list[Row], at: Key | None, forward: bool, limit: int) -> Expected:
    """The page section 5 promises, from the rows that match the filter right now."""
    newest_first = sorted(members, key=lambda r: r.key, reverse=True)
    if at is None:
        return Expected([r.id for r in newest_first[:limit]], len(newest_first) > limit, False)
    if forward:
        beyond = [r for r in newest_first if r.key < at]
        others = any(r.key >= at for r in members)
        return Expected([r.id for r in beyond[:limit]], len(beyond) > limit, others)
    beyond = [r for r in reversed(newest_first) if r.key > at]
    others = any(r.key <= at for r in members)
    return Expected([r.id for r in beyond[:limit]][::-1], others, len(beyond) > limit)


class Walker:
    """Fetches pages and checks each against the oracle of the moment it was read."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        resources: Resources,
        admin: Account,
        filters: dict[str, str],
        limit: int,
        ops: Iterator[list[NewRow | Change]],
    ) -> None:
        self.client, self.resources, self.admin = client, resources, admin
        self.filters, self.limit, self.ops = filters, limit, ops
        self.keys: dict[int, Key] = {}
        self.snapshots: list[set[int]] = []

    async def fetch(self, cursor: str | None, at: Key | None, forward: bool) -> dict[str, Any]:
        await apply(self.client, self.resources, self.admin, next(self.ops, []))
        members = [r for r in await table(self.resources) if r.matches(self.filters)]
        self.keys.update((r.id, r.key) for r in members)
        self.snapshots.append({r.id for r in members})
        params: dict[str, Any] = {**self.filters, "limit": self.limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = await self.client.get("/api/v1/users", params=params, headers=self.admin.headers)
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        expected = oracle(members, at, forward, self.limit)
        assert [u["id"] for u in page["items"]] == expected.ids
        assert (page["next_cursor"] is not None) is expected.has_next
        assert (page["prev_cursor"] is not None) is expected.has_prev
        assert page["has_more"] is (page["next_cursor"] is not None)
        return page

    def ids(self, page: dict[str, Any]) -> list[int]:
        return [u["id"] for u in page["items"]]

    async def forward(self) -> list[dict[str, Any]]:
        pages = [await self.fetch(None, None, forward=True)]
        while pages[-1]["next_cursor"] is not None:
            last = self.ids(pages[-1])[-1]
            pages.append(await self.fetch(pages[-1]["next_cursor"], self.keys[last], True))
        return pages

    async def backward(self, start: dict[str, Any], boundary: Key) -> list[dict[str, Any]]:
        """Follow ``prev_cursor`` from ``start``, whose newest row (or position) is ``boundary``."""
        pages: list[dict[str, Any]] = []
        page, at = start, boundary
        while page["prev_cursor"] is not None:
            ids = self.ids(page)
            at = self.keys[ids[0]] if ids else at
            page = await self.fetch(page["prev_cursor"], at, forward=False)
            pages.append(page)
        return pages


def exactly_once_in_order(walk: list[int], keys: dict[int, Key], stable: set[int]) -> None:
    assert len(set(walk)) == len(walk)  # no row twice, steady or not
    assert [keys[i] for i in walk] == sorted((keys[i] for i in walk), reverse=True)
    seen = Counter(walk)
    assert all(seen[i] == 1 for i in stable), {i: seen[i] for i in stable if seen[i] != 1}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    initial=st.lists(new_rows, min_size=5, max_size=18),
    filters=st.sampled_from(FILTERS),
    limit=st.integers(min_value=1, max_value=5),
    during=steps,
)
# Found by a CI run: the only VIEWER shown so far becomes ADMIN, so the next page has
# nothing before it (its prev_cursor is null, as for a first page).
@example(
    initial=[NewRow(0, "ADMIN", False, False), NewRow(1, "VIEWER", False, False)]
    + [NewRow(0, "ADMIN", False, False)] * 3,
    filters={"role": "VIEWER"},
    limit=1,
    during=[[NewRow(0, "VIEWER", False, False)], [Change(1, "ADMIN", None, None)]],
)
async def test_walks_see_every_steady_row_once_while_rows_are_added_and_changed(
    client: httpx.AsyncClient,
    resources: Resources,
    admin: Account,
    initial: list[NewRow],
    filters: dict[str, str],
    limit: int,
    during: list[list[NewRow | Change]],
) -> None:
    async with resources.engine.begin() as conn:
        await conn.execute(text("DELETE FROM users WHERE id <> :id"), {"id": admin.id})
    await insert_rows(resources, initial)
    walker = Walker(client, resources, admin, filters, limit, iter(during))

    # Forward to the end while rows are inserted and patched between fetches.
    pages = await walker.forward()
    walk = [i for page in pages for i in walker.ids(page)]
    exactly_once_in_order(walk, walker.keys, set.intersection(*walker.snapshots))
    assert pages[0]["prev_cursor"] is None
    # A later page leads back while a row shown before it still matches; when every such row
    # has left the filter, nothing precedes it any more and it is the list's first page.
    shown: set[int] = set()
    for page, members in zip(pages, walker.snapshots, strict=True):
        if shown & members:
            assert page["prev_cursor"] is not None
        shown.update(walker.ids(page))

    # Back to the start from the last page, still under change.
    last = pages[-1]
    if walker.ids(last):
        boundary = walker.keys[walker.ids(last)[0]]
    elif walk:  # an empty last page sits just past the row before it, inclusive
        boundary = (walker.keys[walk[-1]][0], walker.keys[walk[-1]][1] - 1)
    else:
        assert last["prev_cursor"] is None  # nothing at all matches
        return
    walker.snapshots.clear()
    back = await walker.backward(last, boundary)
    back_walk = [i for page in reversed(back) for i in walker.ids(page)]
    steady = set.intersection(*walker.snapshots) if back else set()
    exactly_once_in_order(back_walk, walker.keys, {i for i in steady if walker.keys[i] > boundary})

    # Once nothing changes, walking back retraces the forward pages exactly.
    walker.ops = iter(())
    still = await walker.forward()
    if len(still) > 1:
        retraced = await walker.backward(still[-1], walker.keys[walker.ids(still[-1])[0]])
        assert [walker.ids(p) for p in retraced] == [walker.ids(p) for p in reversed(still[:-1])]
        assert retraced[-1]["prev_cursor"] is None


async def test_recent_audit_logs_cost_the_same_statements_at_any_page_size(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    async with resources.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (email, full_name, hashed_password, created_at)"
                " SELECT 'a' || i || '@pages.test', 'n', 'x',"
                "  CAST(:base AS timestamptz) + i * interval '1 second'"
                " FROM generate_series(1, 120) AS i"
            ),
            {"base": BASE},
        )
        # Seven entries each (two more than shown), the newest first by timestamp then id.
        await conn.execute(
            text(
                "INSERT INTO audit_logs (user_id, action, resource_type, resource_id, timestamp)"
                " SELECT u.id, 'LOGIN', 'user', u.id::text,"
                "  CAST(:base AS timestamptz) + (j / 2) * interval '1 ms'"
                " FROM users u CROSS JOIN generate_series(1, 7) AS j WHERE u.email LIKE 'a%'"
            ),
            {"base": BASE},
        )

    async def fetch(limit: int, sent: list[tuple[str, Any]]) -> tuple[int, dict[str, Any]]:
        sent.clear()
        response = await client.get(
            "/api/v1/users",
            params={"limit": limit, "include": "audit_logs"},
            headers=admin.headers,
        )
        assert response.status_code == 200, response.text
        return len(sent), response.json()

    with statements_sent(resources.engine) as statements:
        await fetch(1, statements)  # warms the cached caller: both measured requests alike
        small, small_page = await fetch(5, statements)
        large, large_page = await fetch(100, statements)

    assert len(small_page["items"]) == 5
    assert len(large_page["items"]) == 100
    assert small == large
    for user in large_page["items"]:
        if user["id"] == admin.id:
            continue
        entries = user["recent_audit_logs"]
        assert len(entries) == 5
        assert {e["user_id"] for e in entries} == {user["id"]}
        order = [(e["timestamp"], e["id"]) for e in entries]
        assert order == sorted(order, reverse=True)


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "", "1.5"])
async def test_limit_outside_1_to_100_is_422(
    client: httpx.AsyncClient, admin: Account, limit: str
) -> None:
    response = await client.get("/api/v1/users", params={"limit": limit}, headers=admin.headers)
    assert response.status_code == 422


@pytest.mark.parametrize("limit", ["1", "100"])
async def test_limit_bounds_are_accepted(
    client: httpx.AsyncClient, admin: Account, limit: str
) -> None:
    response = await client.get("/api/v1/users", params={"limit": limit}, headers=admin.headers)
    assert response.status_code == 200


async def _viewers(resources: Resources, count: int) -> list[int]:
    """``count`` viewers one microsecond apart; their ids, newest first."""
    await insert_rows(resources, [NewRow(i, "VIEWER", True, False) for i in range(count)])
    rows = [r for r in await table(resources) if r.role == "VIEWER"]
    return [r.id for r in sorted(rows, key=lambda r: r.key, reverse=True)]


async def _page(
    client: httpx.AsyncClient, admin: Account, cursor: str | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {"role": "VIEWER", "limit": 1}
    if cursor is not None:
        params["cursor"] = cursor
    response = await client.get("/api/v1/users", params=params, headers=admin.headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def _leave_filter(client: httpx.AsyncClient, admin: Account, *ids: int) -> None:
    for user_id in ids:
        response = await client.patch(
            f"/api/v1/users/{user_id}", json={"role": "ANALYST"}, headers=admin.headers
        )
        assert response.status_code == 200


async def test_prev_cursor_is_null_on_a_page_that_nothing_precedes_any_more(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    a, b, _c = await _viewers(resources, 3)
    first = await _page(client, admin)
    assert [u["id"] for u in first["items"]] == [a]
    await _leave_filter(client, admin, a)
    second = await _page(client, admin, first["next_cursor"])
    assert [u["id"] for u in second["items"]] == [b]
    assert second["prev_cursor"] is None
    assert second["has_more"] is True


async def test_a_backward_walk_that_finds_nothing_before_gets_an_empty_first_page(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    a, b, c = await _viewers(resources, 3)
    page = await _page(client, admin)
    page = await _page(client, admin, page["next_cursor"])
    page = await _page(client, admin, page["next_cursor"])
    assert [u["id"] for u in page["items"]] == [c]
    await _leave_filter(client, admin, a, b)
    before = await _page(client, admin, page["prev_cursor"])
    assert before["items"] == []
    assert before["prev_cursor"] is None
    assert before["has_more"] is True
    # Its next page starts at the row the walk came back from: nothing skipped, nothing twice.
    again = await _page(client, admin, before["next_cursor"])
    assert [u["id"] for u in again["items"]] == [c]
    assert again["next_cursor"] is None
    assert again["prev_cursor"] is None


async def test_a_next_page_whose_rows_left_the_filter_is_empty_and_leads_back(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    a, b, c = await _viewers(resources, 3)
    first = await _page(client, admin)
    await _leave_filter(client, admin, b, c)
    empty = await _page(client, admin, first["next_cursor"])
    assert empty["items"] == []
    assert empty["next_cursor"] is None
    assert empty["has_more"] is False
    back = await _page(client, admin, empty["prev_cursor"])
    assert [u["id"] for u in back["items"]] == [a]
    assert back["prev_cursor"] is None
    assert back["next_cursor"] is None
