"""All SQL on ``users``."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    text,
)

from fund.db import DriverQuery, Repository, driver_estimate, driver_fetch
from fund.kit.pagination import (
    Direction,
    Keyset,
    Page,
    Position,
    driver_keyset_page,
    keyset_beyond,
    keyset_values,
    row_count,
    rows_to_read,
)
from fund.models import Role, User
from fund.users.schemas import UserFilters

T = TypeVar("T")

KEYSET = Keyset(User.created_at, User.id)


def _like_pattern(text: str) -> str:
    """``text`` as a LIKE pattern matching it anywhere; lowered by PostgreSQL (``_search``)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _values(filters: UserFilters) -> dict[str, Any]:
    """The filters that are set, as the values of their placeholders (``_conditions``)."""
    values: dict[str, Any] = {}
    if filters.role is not None:
        values["role"] = filters.role.value
    if filters.is_active is not None:
        values["is_active"] = filters.is_active
    if filters.q:
        values["pattern"] = _like_pattern(filters.q)
    return values


def _search(
    email: ColumnElement[str] = User.__table__.c.email,
    full_name: ColumnElement[str] = User.__table__.c.full_name,
) -> ColumnElement[bool]:
    # PostgreSQL's lower() on both sides of a comparison: Python's differs for some letters (a
    # word-final Σ, a dotted İ), and a term typed as it is stored must find it.
    pattern = func.lower(bindparam("pattern", type_=String))
    # Both sides are answered by trigram GIN indexes (migration 004).
    return or_(
        email.like(pattern, escape="\\"),
        func.lower(full_name).like(pattern, escape="\\"),
    )


# Each filter's condition, on a placeholder named like its value in ``_values``.
_CONDITION: dict[str, Callable[[], ColumnElement[bool]]] = {
    "role": lambda: User.role == bindparam("role"),
    "is_active": lambda: User.is_active == bindparam("is_active"),
    "pattern": _search,
}


def _conditions(names: Iterable[str]) -> list[ColumnElement[bool]]:
    """The conditions of the filters named (the keys of ``_values``): the statement's shape."""
    return [_CONDITION[name]() for name in names]


SEARCH_FEW = 10_000
"""Up to this many expected matches, a substring search sorts its matches; beyond, it walks.

A page of ``q`` can be read two ways: collect every match through the trigram indexes and
keep the newest (cost grows with the matches), or walk ``created_at`` newest first and
keep what matches until the page is full (cost grows with the rows between matches). The
planner weighs them assuming matches are spread evenly in time, and people are not: a
term matching ~1,300 of 1M users, all created in one stretch of time, made it walk
400k rows (141 ms, docs/benchmarks/REPORT.md) where sorting the matches takes 4 ms. So
the repository takes the planner's estimate of the matches (``EXPLAIN``, not run) and
chooses itself: sorting a few thousand matches is cheap wherever they lie; with many,
the walk meets one every few rows.
"""
# Transaction-local planner settings for a search page.
_SORT_MATCHES = (
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_indexscan', 'off', true)"
)
_WALK_TIME = (
    "SELECT set_config('enable_indexscan', 'on', true),"
    " set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)"
)
_SCAN_TABLE = (
    "SELECT set_config('enable_seqscan', 'on', true),"
    " set_config('enable_indexscan', 'off', true), set_config('enable_bitmapscan', 'off', true)"
)
# After a search page, what the rest of the transaction reads (include=audit_logs) is planned
# as ever: the three settings back at the values the session started the transaction with.
_PLANNER_AS_BEFORE = (
    "SELECT set_config(name, reset_val, true) FROM pg_settings"
    " WHERE name IN ('enable_indexscan', 'enable_bitmapscan', 'enable_seqscan')"
)
# Without a run of three letters or digits a pattern has no trigram to look up, and the
# indexes would be read whole (``SEARCH_WINDOW``).
_TRIGRAM = re.compile(r"[^\W_]{3}")

SEARCH_WINDOW = 50_000
"""Rows a search without a trigram (``q=zz``, ``q=%``) may walk; beyond, it scans.

No index narrows such a term: its page walks ``created_at`` and keeps what matches, fast
when matches are common, but through the whole table when they are few or none (0.47 s
warm, 1.4 s cold at 1M users), where a sequential scan, in parallel, reads it all in
0.14 s. The planner's estimate cannot tell these apart (a term its sample misses is put at
~200 matches, whether it has none or 500). So the walk is tried first on the
``SEARCH_WINDOW`` rows beyond the position, counting matches up to a page's worth (~20 ms
when there are none): a page's worth there, and the page is walked, within the window;
fewer, and the table is scanned for its matches. No page of such a search costs more than
the window's walk or one scan.
"""


def _marked(stmt: Select[T], read: str | None) -> Select[T]:
    """A search page's statement, its text marked with how it is read.

    A prepared statement's plan may be cached and reused (PostgreSQL's generic plans)
    whatever the transaction's planner settings are by then: the two ways of reading a
    search are two statements, each planned under its own settings.
    """
    return stmt if read is None else stmt.prefix_with(f"/* q: {read} */")


@functools.cache
def _rows_source(names: tuple[str, ...], read: str | None) -> tuple[Select[Any], Keyset]:
    """What a page of rows reads for the filters named, read as ``_plan_search`` chose.

    A search that sorts (or scans for) its matches reads them behind a materialized CTE, so
    the cursor's position applies to the matches only; on the table it could also become a
    bitmap of the ``created_at`` range behind the cursor, intersected with the trigram
    bitmap (``BitmapAnd``), which grows with the depth.
    """
    filtered = select(*SHOWN).where(*_conditions(names))
    if read not in ("sort", "scan"):
        return _marked(filtered, read), KEYSET
    matches = filtered.cte("matches").prefix_with("MATERIALIZED")
    return _marked(select(matches), read), Keyset(matches.c.created_at, matches.c.id)


@functools.cache
def _matches(names: tuple[str, ...]) -> DriverQuery:
    """Every user the filters named match, for the planner's estimate of how many."""
    return DriverQuery(select(User.id).where(*_conditions(names)))


@functools.cache
def _matches_nearby(names: tuple[str, ...], direction: Direction | None, rows: int) -> DriverQuery:
    """How many of the ``SEARCH_WINDOW`` rows nearest beyond the position match, counted
    up to ``rows``."""
    others = [name for name in names if name != "pattern"]
    nearby = keyset_beyond(
        select(User.email, User.full_name).where(*_conditions(others)),
        KEYSET,
        direction=direction,
        rows=SEARCH_WINDOW,
    ).subquery("nearby")
    found = (
        select(nearby.c.email)
        .where(_search(nearby.c.email, nearby.c.full_name))
        .limit(row_count(rows))
        .subquery("found")
    )
    return DriverQuery(select(func.count().label("matches")).select_from(found))


_users = User.__table__.c
SHOWN = (
    _users.id,
    _users.email,
    _users.full_name,
    _users.role,
    _users.is_active,
    _users.created_at,
    _users.updated_at,
)
"""The columns a page or a cache entry of users reads: what ``UserRead`` shows, in its order
(a test holds the two together), never the password hash or the token version."""


ADMIN_REMOVAL_LOCK = 0x66756E64_61646D6E
"""The advisory lock key (``"fundadmn"``, one per database) that orders the changes taking
away an active ADMIN, so that each sees the one before it committed (``UserService``)."""
# Bound as a BIGINT: the key is beyond the INTEGER a Python int is bound as.
_ADMIN_REMOVAL_KEY = literal(ADMIN_REMOVAL_LOCK, BigInteger)


_BY_ID = DriverQuery(
    select(*SHOWN, User.token_version, User.kept_token_id).where(User.id == bindparam("user_id"))
)


_CREDENTIALS = DriverQuery(
    select(User.id, User.hashed_password, User.is_active, User.token_version).where(
        User.email == bindparam("email")
    )
)


class UserRepository(Repository):
    async def get_row(self, user_id: int) -> dict[str, Any] | None:
        """The shown columns of one user and which of its tokens are good, on the driver.

        Authentication reads through here on a cache miss: outside a transaction it holds
        a pooled connection only for the statement, so a request that then waits (for a
        rebuild another request makes) never sits on a connection that one needs.
        """
        rows = await driver_fetch(self.work, _BY_ID, {"user_id": user_id})
        return rows[0] if rows else None

    async def get_credentials(self, email: str) -> dict[str, Any] | None:
        """What signing in checks of the account with this email, on the driver.

        Outside the request's transaction (none has begun at sign-in), so the pooled
        connection is held for this statement only, not while the password is checked.
        """
        rows = await driver_fetch(self.work, _CREDENTIALS, {"email": email})
        return rows[0] if rows else None

    async def get_for_update(self, user_id: int) -> User | None:
        """The user's row, locked for a change: ``FOR NO KEY UPDATE``, the lock an UPDATE
        that keeps the row's keys takes. An audit entry whose actor is this user takes a KEY
        SHARE lock on the row (its foreign key), which this lock lets through and ``FOR
        UPDATE`` would not: a change to an admin's account would stall every change that
        admin makes meanwhile, and two admins changing each other's accounts would deadlock.
        (A change of email takes the stronger lock as it updates: the email is a key.)"""
        return await self.session.get(User, user_id, with_for_update={"key_share": True})

    async def email_taken(self, email: str, *, besides: int | None = None) -> bool:
        stmt = select(User.id).where(User.email == email)
        if besides is not None:
            stmt = stmt.where(User.id != besides)
        return await self.session.scalar(stmt.limit(1)) is not None

    async def add(self, user: User) -> User:
        self.session.add(user)
        await self.session.flush()
        await self.session.refresh(user)  # server defaults: created_at, updated_at
        return user

    async def save(self, user: User) -> User:
        await self.session.flush()
        await self.session.refresh(user, ["updated_at"])
        return user

    async def lock_admin_removals(self) -> None:
        """Wait for ``ADMIN_REMOVAL_LOCK``, then hold it until the transaction ends."""
        await self.session.execute(select(func.pg_advisory_xact_lock(_ADMIN_REMOVAL_KEY)))

    async def lock_admin_removals_if_admin(self, user_id: int) -> bool:
        """``lock_admin_removals``, if the user is an active ADMIN as last committed (its row
        read, not locked): whether it was. One statement: the lock is taken for the row found."""
        found = await self.session.execute(
            select(User.id, func.pg_advisory_xact_lock(_ADMIN_REMOVAL_KEY)).where(
                User.id == user_id, User.role == Role.ADMIN, User.is_active.is_(True)
            )
        )
        return found.first() is not None

    async def another_active_admin(self, besides: int) -> bool:
        """Whether an active ADMIN other than ``besides`` exists, as committed when the
        statement starts. It stops at the first one in ``idx_users_role_is_active``: 5
        buffers with ~9,500 admins, where counting them all reads 52 (docs/ARCHITECTURE.md)."""
        other = exists().where(
            User.role == Role.ADMIN, User.is_active.is_(True), User.id != besides
        )
        return bool(await self.session.scalar(select(other)))

    async def any_user(self) -> bool:
        return await self.session.scalar(select(User.id).limit(1)) is not None

    async def page_rows(
        self,
        filters: UserFilters,
        *,
        limit: int,
        position: Position | None,
        encode: Callable[[Position], str],
        reads_on: bool = False,
    ) -> Page[dict[str, Any]]:
        """A page of users, as plain rows of the shown columns, on the driver.

        The hottest list of the API: one compiled statement per filter shape, run in one
        round trip, its rows rendered without models (``fund.db.DriverQuery``). A search
        (``q``) first settles how the page is read (``SEARCH_FEW``), in a transaction;
        when the transaction ``reads_on`` (``include=audit_logs``), its planner settings are
        then put back, so the rest is planned as ever.
        """
        values = _values(filters)
        read = await self._plan_search(filters, values, position, rows_to_read(limit))
        source, keyset = _rows_source(tuple(values), read)
        page = await driver_keyset_page(
            self.work,
            lambda: source,
            keyset,
            shape=("users", read, *values),
            limit=limit,
            position=position,
            encode=encode,
            params=values,
        )
        if read is not None and reads_on:
            await self.session.execute(text(_PLANNER_AS_BEFORE))
        return page

    async def _plan_search(
        self,
        filters: UserFilters,
        values: Mapping[str, Any],
        position: Position | None,
        rows: int,
    ) -> str | None:
        """For a search, how this page's transaction reads it: ``"sort"`` or ``"walk"``
        (``SEARCH_FEW``), or, for a term without a trigram, ``"walk"`` or ``"scan"``
        (``SEARCH_WINDOW``); None for a page without ``q``. ``rows``: what the page reads."""
        if filters.q is None:
            return None
        names = tuple(values)
        trigram = _TRIGRAM.search(filters.q) is not None
        if trigram:
            await self.session.execute(text(_SORT_MATCHES))  # begins the transaction
            if await driver_estimate(self.work, _matches(names), values) <= SEARCH_FEW:
                return "sort"
        await self.session.execute(text(_WALK_TIME))  # begins the transaction, if not yet
        if trigram or await self._page_nearby(names, values, position, rows):
            return "walk"
        await self.session.execute(text(_SCAN_TABLE))
        return "scan"

    async def _page_nearby(
        self,
        names: tuple[str, ...],
        values: Mapping[str, Any],
        position: Position | None,
        rows: int,
    ) -> bool:
        """Whether the ``SEARCH_WINDOW`` rows beyond the position hold a page's worth of
        matches (``rows``), so that walking them fills the page."""
        direction = position.direction if position is not None else None
        nearby = keyset_values(position) | dict(values)
        [row] = await driver_fetch(self.work, _matches_nearby(names, direction, rows), nearby)
        return bool(row["matches"] >= rows)

    async def counts(self) -> dict[str, Any]:
        """Users by role, and how many are active: one pass over ``idx_users_role_is_active``
        (index only); the totals are the sums, so they always equal their breakdown."""
        # Every role named, one without users counted 0: a dashboard reads a stable shape.
        by_role = dict.fromkeys((role.value for role in Role), 0)
        active = 0
        for role, count, role_active in await self.session.execute(
            select(User.role, func.count(), func.count().filter(User.is_active.is_(True))).group_by(
                User.role
            )
        ):
            by_role[role.value] = count
            active += role_active
        total = sum(by_role.values())
        return {"total": total, "active": active, "by_role": by_role}
