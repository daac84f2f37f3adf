"""``fund seed``: bulk synthetic users and audit entries, deterministic per seed.

Rows are made inside PostgreSQL by ``INSERT … SELECT generate_series`` from a
hash-based pseudo-random function (``hashint8extended(n, key)``): every column of
row n is a pure function of (seed, sizes, n), so chunks can load in parallel on
every core and in any order and still give the same rows. This beats streaming
Python-made rows through ``COPY`` on this machine (docs/SEEDING.md has both figures).

When a table starts empty its secondary indexes (and the audit_logs → users
foreign key, checked per row otherwise) are dropped before loading and rebuilt
afterwards from their own catalog definitions, in parallel connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg
from argon2.low_level import Type, hash_secret
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from fund.db import alembic_config, asyncpg_dsn
from fund.kit.security import ARGON2_MEMORY_KIB, ARGON2_PARALLELISM, ARGON2_TIME_COST

if TYPE_CHECKING:
    from fund.config import Settings

SEEDED_PASSWORD = "seeded-password-123"  # noqa: S105 (documented; seeded data is for development)
"""Every seeded user signs in with this password (one argon2id hash shared by all rows)."""
PRODUCTION_REFUSAL = "refuses FUND_ENV=production (seeded users share one password)"
"""Why ``fund seed``, and ``fund bench`` which seeds through it, will not run in production."""

SPAN_START = datetime(2021, 11, 1, tzinfo=UTC)
SPAN_END = datetime(2026, 11, 1, tzinfo=UTC)
"""Fixed, not ``now()``: the same seed must give the same timestamps on any day."""

CONNECTIONS = max(2, min(8, os.cpu_count() or 2))
"""Loading connections, one per core: seeding runs beside its database (development, bench)."""
USER_CHUNK = 100_000
AUDIT_CHUNK = 100_000
DELETED_LAG_MAX = 7919
"""A ``DELETE audit_log`` entry soft-deletes the entry this many rows before it."""

_SPAN_US = (SPAN_END - SPAN_START).total_seconds() * 1e6


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = _words(
    """
    james mary john patricia robert jennifer michael linda william elizabeth david barbara
    richard susan joseph jessica thomas sarah charles karen daniel nancy matthew lisa anthony
    betty mark margaret donald sandra steven ashley paul kimberly andrew emily joshua donna
    kenneth michelle kevin carol brian amanda george melissa timothy deborah ronald stephanie
    jason rebecca edward sharon jeffrey laura ryan cynthia jacob kathleen gary amy nicholas
    angela eric shirley jonathan anna stephen brenda larry pamela justin emma scott nicole
    sofia lukas mateo chloe noah amelia liam olivia hugo ines akira yuki wei mei ravi priya
    """
)
LAST_NAMES = _words(
    """
    smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez
    gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson white harris
    sanchez clark ramirez lewis robinson walker young allen king wright scott torres nguyen
    hill flores green adams nelson baker hall rivera campbell mitchell carter roberts gomez
    phillips evans turner diaz parker cruz edwards collins reyes stewart morris morales murphy
    cook rogers gutierrez ortiz morgan cooper peterson bailey reed kelly howard ramos kim cox
    ward mueller schmidt rossi bianchi dubois laurent novak kowalski tanaka suzuki chen wang
    patel
    """
)
EMAIL_DOMAINS = (
    "northwind.example",
    "contoso.example",
    "fabrikam.example",
    "fund.example",
    "acme-capital.example",
    "mail.example",
)
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
    "python-httpx/0.27.0",
    "curl/8.5.0",
    "fund-reporting/2.3 (+https://fund.example/reporting)",
)
ROLE_CHANGES = (
    ("VIEWER", "ANALYST"),
    ("ANALYST", "VIEWER"),
    ("ANALYST", "ADMIN"),
    ("VIEWER", "ADMIN"),
    ("ADMIN", "ANALYST"),
    ("ADMIN", "VIEWER"),
)


PHASES = ("prepare", "users", "audit_logs", "indexes", "constraints", "analyze")


@dataclass(frozen=True)
class SeedResult:
    users: int
    audit_logs: int
    seconds: float
    phases: dict[str, float]
    """Wall seconds per phase, every one of ``PHASES``.

    The users' index builds overlap the audit load; ``indexes`` is what remains after it.
    """


@dataclass
class _Rebuild:
    """What was dropped before loading, to be recreated exactly as the catalog had it."""

    indexes: list[tuple[str, str, str]] = field(default_factory=list)
    """(table, index name, ``pg_get_indexdef`` plus the index's statistics targets)."""
    unique_constraints: list[tuple[str, str]] = field(default_factory=list)
    """(table, constraint name) re-attached to their rebuilt index."""
    foreign_keys: list[tuple[str, str, str]] = field(default_factory=list)
    """(table, constraint name, ``pg_get_constraintdef``)."""


def seeded_password_hash(seed: int) -> str:
    """One argon2id hash for every seeded user; its salt comes from the seed (determinism)."""
    salt = hashlib.blake2b(f"fund-seed-salt:{seed}".encode(), digest_size=16).digest()
    # The service's own parameters, so a seeded user signs in like any other.
    raw = hash_secret(
        SEEDED_PASSWORD.encode(),
        salt,
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_KIB,
        parallelism=ARGON2_PARALLELISM,
        hash_len=32,
        type=Type.ID,
    )
    return raw.decode()


def _key(seed: int, column: str) -> int:
    """A 63-bit hash key per (seed, column): the columns of one row are independent."""
    digest = hashlib.blake2b(f"{seed}:{column}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _capitalized(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name.capitalize() for name in names)


def _text_array(values: tuple[str, ...] | list[str]) -> str:
    quoted = ", ".join("'" + value.replace("'", "''") + "'" for value in values)
    return f"ARRAY[{quoted}]::text[]"


class _Random:
    """SQL expressions of deterministic pseudo-random values of a row number."""

    def __init__(self, seed: int, table: str) -> None:
        self.seed = seed
        self.table = table

    def fraction(self, row: str, column: str) -> str:
        """Uniform in [0, 1): the low 53 bits of the hash."""
        key = _key(self.seed, f"{self.table}.{column}")
        return f"((hashint8extended({row}, {key}) & 9007199254740991)::float8 / 9007199254740992.0)"

    def below(self, row: str, column: str, bound: int) -> str:
        """Uniform integer in [0, bound)."""
        key = _key(self.seed, f"{self.table}.{column}")
        return f"((hashint8extended({row}, {key}) & 9223372036854775807) % {bound})"

    def pick(self, row: str, column: str, values: tuple[str, ...] | list[str]) -> str:
        return f"({_text_array(values)})[1 + {self.below(row, column, len(values))}]"


class _SeededUser:
    """SQL expressions of the columns of the i-th user of a run (``i`` an SQL expression).

    The users' INSERT and the audit entries that describe those users share them, so an
    entry can show a user's email or snapshot without looking the row up.
    """

    def __init__(self, seed: int, *, base_id: int, total: int) -> None:
        self.r = _Random(seed, "users")
        self.base_id = base_id
        self.slot = _SPAN_US / total

    def email(self, i: str) -> str:
        r = self.r
        return (
            f"({_text_array(FIRST_NAMES)})[1 + {r.below(i, 'first', len(FIRST_NAMES))}] || '.'"
            f" || ({_text_array(LAST_NAMES)})[1 + {r.below(i, 'last', len(LAST_NAMES))}]"
            f" || '.' || ({self.base_id} + {i}) || '@' || {r.pick(i, 'domain', EMAIL_DOMAINS)}"
        )

    def full_name(self, i: str) -> str:
        r = self.r
        first = f"1 + {r.below(i, 'first', len(FIRST_NAMES))}"
        last = f"1 + {r.below(i, 'last', len(LAST_NAMES))}"
        return (
            f"({_text_array(_capitalized(FIRST_NAMES))})[{first}] || ' '"
            f" || ({_text_array(_capitalized(LAST_NAMES))})[{last}]"
        )

    def role(self, i: str) -> str:
        draw = self.r.fraction(i, "role")
        return (
            f"CASE WHEN {draw} < 0.01 THEN 'ADMIN' WHEN {draw} < 0.15 THEN 'ANALYST'"
            " ELSE 'VIEWER' END"
        )

    def created_at(self, i: str) -> str:
        # The i-th user is created inside the i-th slot of the span: ids follow time.
        return (
            f"(TIMESTAMPTZ '{SPAN_START.isoformat()}' + interval '1 microsecond'"
            f" * floor((({i} - 1) + {self.r.fraction(i, 'created')}) * {self.slot!r}))"
        )


def _users_sql(seed: int, *, base_id: int, total: int, password_hash: str) -> str:
    """Rows n in [$1, $2] of a run of ``total`` users whose ids start after ``base_id``."""
    user = _SeededUser(seed, base_id=base_id, total=total)
    r = user.r
    # Only numbers and this module's constants are interpolated: nothing from outside.
    return f"""
    INSERT INTO users (id, email, full_name, hashed_password, role, is_active,
                       created_at, updated_at)
    SELECT {base_id} + n,
           {user.email("n")},
           {user.full_name("n")},
           '{password_hash}',
           ({user.role("n")})::user_role,
           {r.fraction("n", "active")} >= 0.07,
           created_at,
           CASE WHEN touched_draw < 0.6 THEN created_at
                ELSE created_at + (TIMESTAMPTZ '{SPAN_END.isoformat()}' - created_at)
                                  * (touched_draw - 0.6) / 0.4 END
    FROM (
        SELECT n,
               {r.fraction("n", "touched")} AS touched_draw,
               {user.created_at("n")} AS created_at
        FROM generate_series($1::bigint, $2::bigint) AS n
        OFFSET 0
    ) AS drawn
    """  # noqa: S608


@dataclass(frozen=True)
class _ActorPool:
    """Audit actors and targets are users ``first_id`` … ``first_id + size - 1``."""

    first_id: int
    size: int
    seeded: _SeededUser | None = None
    """How this run made those users, when it did; otherwise they are looked up."""


def _audit_sql(seed: int, *, base_id: int, total: int, pool: _ActorPool) -> str:
    """Rows n in [$1, $2] of a run of ``total`` entries whose ids start after ``base_id``.

    Entry n happens at fraction p of the span; its actor and targets are among the
    pool's first ``floor(p * size)`` users, who (in a run that also seeded them) were
    created before p. Actors are skewed (p * u**2): the oldest accounts are the busiest.
    """
    r = _Random(seed, "audit_logs")
    slot = _SPAN_US / pool.size
    lag = max(1, min(DELETED_LAG_MAX, total // 10))
    pool0 = pool.first_id - 1
    action_draw = r.fraction("n", "action")
    later_action_draw = r.fraction(f"(n + {lag})", "action")
    role_change = r.below("n", "role_change", len(ROLE_CHANGES))
    email_of_target, created_snapshot = _described_users(pool)
    # Constant details are written once as literals, not built per row.
    role_changes = "ARRAY[{}]".format(
        ", ".join(
            f"'{json.dumps({'role': {'old': old, 'new': new}})}'::jsonb"
            for old, new in ROLE_CHANGES
        )
    )
    # Only numbers and this module's constants are interpolated: nothing from outside.
    return f"""
    INSERT INTO audit_logs (id, "timestamp", user_id, action, resource_type, resource_id,
                            details, ip_address, user_agent, request_id, is_deleted)
    SELECT {base_id} + n,
           TIMESTAMPTZ '{SPAN_START.isoformat()}' + interval '1 microsecond'
               * floor({slot!r} + p * {_SPAN_US - slot!r}),
           CASE WHEN kind = 1 THEN NULL ELSE actor END,
           -- Constants of the columns' enums (migration 012), made once with the statement:
           -- a text CASE would need a cast to the enum on every row.
           CASE WHEN kind = 0 THEN 'LOGIN'::audit_action
                WHEN kind = 1 THEN 'LOGIN_FAILED'::audit_action
                WHEN kind = 2 THEN 'UPDATE'::audit_action WHEN kind = 3 THEN 'CREATE'::audit_action
                ELSE 'DELETE'::audit_action END,
           CASE WHEN kind = 5 THEN 'audit_log'::audit_resource_type
                ELSE 'user'::audit_resource_type END,
           CASE WHEN kind = 0 THEN actor::text
                WHEN kind = 1 THEN CASE WHEN known_draw < 0.75 THEN target::text ELSE '' END
                WHEN kind = 3 THEN ({pool0} + eligible)::text
                WHEN kind = 5 THEN ({base_id} + n - {lag})::text
                ELSE target::text END,
           CASE
             WHEN kind = 1 THEN jsonb_build_object('email',
                 CASE WHEN known_draw < 0.75 THEN {email_of_target}
                      ELSE {r.pick("n", "unknown_first", FIRST_NAMES)} || '@'
                           || {r.pick("n", "unknown_domain", EMAIL_DOMAINS)} END)
             WHEN kind = 2 THEN jsonb_build_object('changes', CASE
                 WHEN change_draw < 0.35 THEN '{{"password": "changed"}}'::jsonb
                 WHEN change_draw < 0.65 THEN jsonb_build_object('full_name', jsonb_build_object(
                     'old', {r.pick("n", "old_first", _capitalized(FIRST_NAMES))} || ' '
                            || {r.pick("n", "old_last", _capitalized(LAST_NAMES))},
                     'new', {r.pick("n", "new_first", _capitalized(FIRST_NAMES))} || ' '
                            || {r.pick("n", "new_last", _capitalized(LAST_NAMES))}))
                 WHEN change_draw < 0.85 THEN ({role_changes})[1 + {role_change}]
                 ELSE '{{"is_active": {{"old": false, "new": true}}}}'::jsonb END)
             WHEN kind = 3 THEN {created_snapshot}
             ELSE '{{}}'::jsonb END,
           CASE WHEN {r.fraction("n", "network")} < 0.7
                THEN '10.0.0.0'::inet + {r.below("n", "office_host", 16777216)}
                ELSE '198.51.100.0'::inet + {r.below("n", "remote_host", 256)} END,
           {r.pick("n", "agent", USER_AGENTS)},
           encode(int8send(hashint8extended(n, {_key(seed, "audit_logs.request_hi")}))
                  || int8send(hashint8extended(n, {_key(seed, "audit_logs.request_lo")})), 'hex'),
           -- Soft-deleted exactly when the entry {lag} rows later is the DELETE that targets it.
           n + {lag} <= {total} AND {later_action_draw} >= 0.99
    FROM (
        SELECT n, p, eligible, known_draw, change_draw,
               -- u * u, not power(): libm may differ between machines, IEEE products do not.
               {pool0} + 1 + floor(eligible * actor_draw * actor_draw)::bigint
                   AS actor,
               {pool0} + 1 + floor(eligible * {r.fraction("n", "target")})::bigint AS target,
               CASE WHEN action_draw < 0.56 OR (action_draw >= 0.99 AND n <= {lag}) THEN 0
                    WHEN action_draw < 0.64 THEN 1
                    WHEN action_draw < 0.84 THEN 2
                    WHEN action_draw < 0.95 THEN 3
                    WHEN action_draw < 0.99 THEN 4
                    ELSE 5 END AS kind
        FROM (
            SELECT n, p,
                   greatest(1, floor(p * {pool.size}))::bigint AS eligible,
                   {action_draw} AS action_draw,
                   {r.fraction("n", "actor")} AS actor_draw,
                   {r.fraction("n", "known")} AS known_draw,
                   {r.fraction("n", "change")} AS change_draw
            FROM (
                SELECT n, ((n - 1) + {r.fraction("n", "moment")}) / {total} AS p
                FROM generate_series($1::bigint, $2::bigint) AS n
                OFFSET 0
            ) AS timed
            OFFSET 0
        ) AS drawn
        OFFSET 0
    ) AS chosen_rows
    """  # noqa: S608


def _described_users(pool: _ActorPool) -> tuple[str, str]:
    """SQL for a failed login's email and a CREATE's ``after`` snapshot, as the service writes."""
    # As the API renders a timestamp (pydantic): UTC with a Z.
    iso = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""
    if pool.seeded is not None:
        user, created = pool.seeded, f"{pool.first_id - 1} + eligible"
        created_at = f"to_char({user.created_at('eligible')} AT TIME ZONE 'UTC', {iso})"
        target = f"(target - {pool.first_id - 1})"
        snapshot = (
            "jsonb_build_object('after', jsonb_build_object("
            f"'id', {created}, 'email', {user.email('eligible')},"
            f" 'full_name', {user.full_name('eligible')}, 'role', {user.role('eligible')},"
            f" 'is_active', true, 'created_at', {created_at}, 'updated_at', {created_at}))"
        )
        return user.email(target), snapshot
    snapshot = f"""(
        SELECT jsonb_build_object('after', jsonb_build_object(
            'id', u.id, 'email', u.email, 'full_name', u.full_name, 'role', u.role,
            'is_active', true, 'created_at', created, 'updated_at', created))
        FROM users AS u, to_char(u.created_at AT TIME ZONE 'UTC', {iso}) AS created
        WHERE u.id = {pool.first_id - 1} + eligible)"""  # noqa: S608
    return "(SELECT email FROM users WHERE id = target)", snapshot


# -- loading -----------------------------------------------------------------------


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        dsn,
        server_settings={
            "application_name": "fund-seed",
            "TimeZone": "UTC",  # timestamps rendered into details must not depend on the session
            "statement_timeout": "0",
            # Compiling these wide expressions costs more than it saves (measured: 2x slower).
            "jit": "off",
            "synchronous_commit": "off",  # each chunk commits; losing the last on a crash is fine
            "maintenance_work_mem": "1536MB",  # a 10M-row index sort stays in memory
            # Builds already run side by side, one per core; workers would oversubscribe.
            "max_parallel_maintenance_workers": "0",
        },
    )


async def _reserve_ids(conn: asyncpg.Connection, table: str, count: int) -> int:
    """Advance the table's identity past ``count`` new ids; return the id before the first."""
    sequence = await conn.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table)
    base: int = await conn.fetchval(
        f"SELECT greatest((SELECT coalesce(max(id), 0) FROM {table}),"  # noqa: S608
        f" (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {sequence}))"
    )
    if count > 0:
        # Reserved before loading, so the application's own inserts meanwhile go beyond.
        await conn.execute("SELECT setval($1, $2)", sequence, base + count)
    return base


async def _is_empty(conn: asyncpg.Connection, table: str) -> bool:
    return bool(await conn.fetchval(f"SELECT NOT EXISTS (SELECT 1 FROM {table})"))  # noqa: S608


async def _drop_for_load(conn: asyncpg.Connection, tables: list[str]) -> _Rebuild:
    """Drop the secondary indexes and outgoing foreign keys of ``tables``; say how to rebuild.

    Primary keys stay: dropping them too was measured (100k users + 1M entries, three runs
    each way) and bought nothing within the noise, since ids arrive in order.
    """
    rebuild = _Rebuild()
    key_drops: list[str] = []
    index_drops: list[str] = []
    for table in tables:
        foreign_keys = await conn.fetch(
            """
            SELECT conname, pg_get_constraintdef(oid) AS definition
            FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'f' ORDER BY conname
            """,
            table,
        )
        for key in foreign_keys:
            key_drops.append(f"ALTER TABLE {table} DROP CONSTRAINT {key['conname']}")
            rebuild.foreign_keys.append((table, key["conname"], key["definition"]))
    for table in tables:
        indexes = await conn.fetch(
            """
            SELECT i.indexrelid::regclass::text AS name,
                   pg_get_indexdef(i.indexrelid) AS definition,
                   c.conname, c.contype
            FROM pg_index AS i
            JOIN pg_class AS ic ON ic.oid = i.indexrelid
            JOIN pg_am AS am ON am.oid = ic.relam
            LEFT JOIN pg_constraint AS c
                   ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
            WHERE i.indrelid = $1::regclass AND NOT i.indisprimary
            -- The longest builds first, so the last to finish is a short one (see
            -- _IndexBuilds): a GIN index (an entry per trigram) before a B-tree, and a
            -- wider key before a narrower one, as its ties go on to the next column.
            ORDER BY am.amname = 'btree', i.indnkeyatts DESC, 1
            """,
            table,
        )
        for index in indexes:
            # pg_get_indexdef leaves out per-column statistics targets (migration 006 sets one).
            targets = await conn.fetch(
                "SELECT attnum, attstattarget FROM pg_attribute"
                " WHERE attrelid = $1::regclass AND attstattarget >= 0 ORDER BY attnum",
                index["name"],
            )
            rebuild_sql = "; ".join(
                [index["definition"]]
                + [
                    f"ALTER INDEX {index['name']} ALTER COLUMN {target['attnum']}"
                    f" SET STATISTICS {target['attstattarget']}"
                    for target in targets
                ]
            )
            if index["conname"] is None:
                index_drops.append(f"DROP INDEX {index['name']}")
            elif index["contype"] == "u":
                index_drops.append(f"ALTER TABLE {table} DROP CONSTRAINT {index['conname']}")
                rebuild.unique_constraints.append((table, index["conname"]))
            else:
                continue  # exclusion constraints and the like stay: nothing here makes them
            rebuild.indexes.append((table, index["name"], rebuild_sql))
    async with conn.transaction():
        for statement in key_drops + index_drops:
            await conn.execute(statement)
    return rebuild


async def _run_jobs(
    connections: list[asyncpg.Connection],
    jobs: list[Callable[[asyncpg.Connection], Awaitable[None]]],
) -> None:
    """Run ``jobs`` in order, each on the next free connection."""
    pending = iter(jobs)

    async def worker(conn: asyncpg.Connection) -> None:
        for job in pending:  # one shared iterator: each job is taken by exactly one worker
            await job(conn)

    await asyncio.gather(*(worker(conn) for conn in connections))


def _chunk_jobs(
    sql: str, total: int, chunk: int, advance: Callable[[int], None]
) -> list[Callable[[asyncpg.Connection], Awaitable[None]]]:
    def job(first: int, last: int) -> Callable[[asyncpg.Connection], Awaitable[None]]:
        async def load(conn: asyncpg.Connection) -> None:
            await conn.execute(sql, first, last)
            advance(last - first + 1)

        return load

    return [job(first, min(first + chunk - 1, total)) for first in range(1, total + 1, chunk)]


class _IndexBuilds:
    """Rebuilds a table's dropped indexes as soon as that table is loaded.

    A spare connection starts on the users' indexes while the audit entries are still
    loading (the loaders wait on I/O and locks part of the time); the loaders join in
    once their load is done.

    Builds are taken longest first (``_drop_for_load`` orders them), so the phase does
    not end on one long build with the other cores idle. On 10M audit entries the
    single-connection builds take 4 to 17 s; in name order (the longest happened to
    lead, the 11-s one came last) the six took 37.6 s on three connections, longest
    first 33.6 s (the sum over two cores would be 30).
    """

    def __init__(self, rebuild: _Rebuild, progress: Progress) -> None:
        self.rebuild = rebuild
        self.progress = progress
        self.jobs: asyncio.Queue[str | None] = asyncio.Queue()
        self.queued: set[str] = set()
        self.workers: list[asyncio.Task[None]] = []
        self.task: TaskID | None = None

    def table_loaded(self, table: str) -> None:
        if table in self.queued:
            return
        self.queued.add(table)
        for owner, _, definition in self.rebuild.indexes:
            if owner == table:
                if self.task is None:  # shown from the first build on, below the loads
                    self.task = self.progress.add_task("indexes", total=len(self.rebuild.indexes))
                self.jobs.put_nowait(definition)

    def start_worker(self, conn: asyncpg.Connection) -> None:
        self.workers.append(asyncio.create_task(self._work(conn)))

    async def finish(self, connections: list[asyncpg.Connection]) -> None:
        """Queue whatever is left (also after a failed load), build it all, re-attach."""
        for table, _, _ in self.rebuild.indexes:
            self.table_loaded(table)
        for conn in connections:
            self.start_worker(conn)
        for _ in self.workers:
            self.jobs.put_nowait(None)
        await asyncio.gather(*self.workers)
        for table, name in self.rebuild.unique_constraints:
            await connections[0].execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}"
            )

    async def _work(self, conn: asyncpg.Connection) -> None:
        while (definition := await self.jobs.get()) is not None:
            await conn.execute(definition)
            if self.task is not None:
                self.progress.advance(self.task)


async def _finish(
    connections: list[asyncpg.Connection],
    rebuild: _Rebuild,
    loaded: list[str],
    phases: dict[str, float],
    progress: Progress,
) -> None:
    """Re-add the foreign keys ``_drop_for_load`` dropped, then ANALYZE the loaded tables."""
    finishing = progress.add_task("finish", total=len(rebuild.foreign_keys) + len(loaded))
    with _phase(phases, "constraints"):
        for table, name, definition in rebuild.foreign_keys:
            # NOT VALID is instant; VALIDATE checks every row in one anti-join, not row by row.
            await connections[0].execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition} NOT VALID"
            )
        fk_tables = {table for table, _, _ in rebuild.foreign_keys}

        async def validate(conn: asyncpg.Connection) -> None:
            for table, name, _ in rebuild.foreign_keys:
                await conn.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")
                progress.advance(finishing)

        async def analyze_others(conn: asyncpg.Connection) -> None:
            # A table being validated is locked against ANALYZE; the others go meanwhile.
            for table in loaded:
                if table not in fk_tables:
                    await _analyze(table)(conn)
                    progress.advance(finishing)

        await asyncio.gather(validate(connections[0]), analyze_others(connections[-1]))
    with _phase(phases, "analyze"):

        def analyze(table: str) -> Callable[[asyncpg.Connection], Awaitable[None]]:
            async def run(conn: asyncpg.Connection) -> None:
                await _analyze(table)(conn)
                progress.advance(finishing)

            return run

        await _run_jobs(connections, [analyze(t) for t in loaded if t in fk_tables])


def _analyze(table: str) -> Callable[[asyncpg.Connection], Awaitable[None]]:
    async def run(conn: asyncpg.Connection) -> None:
        await conn.execute(f"ANALYZE {table}")

    return run


@contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started


async def _actor_pool(
    conn: asyncpg.Connection, seed: int, users_base: int, users: int
) -> _ActorPool:
    if users > 0:
        return _ActorPool(users_base + 1, users, _SeededUser(seed, base_id=users_base, total=users))
    row = await conn.fetchrow("SELECT min(id) AS low, max(id) AS high, count(*) AS n FROM users")
    if row is None or row["n"] == 0:
        raise ValueError("audit entries need users: seed some with --users")
    if row["high"] - row["low"] + 1 != row["n"]:
        raise ValueError(
            "the existing users' ids have gaps; seed users in the same run as the audit entries"
        )
    return _ActorPool(int(row["low"]), int(row["n"]))


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<11}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=sys.stdout),
        disable=not (enabled and sys.stdout.isatty()),
    )


async def seed_database(
    database_url: str, *, users: int, audit_logs: int, seed: int, progress: bool = True
) -> SeedResult:
    """Append ``users`` users and ``audit_logs`` audit entries made from ``seed``.

    Into empty tables, the same seed and sizes give the same rows, id for id.
    """
    if users < 0 or audit_logs < 0:
        raise ValueError("sizes must be zero or more")
    started = time.perf_counter()
    # Every phase is present (0.0 when skipped), so a report can always read each one.
    phases = dict.fromkeys(PHASES, 0.0)
    dsn = asyncpg_dsn(database_url)
    loaders = [await _connect(dsn) for _ in range(CONNECTIONS)]
    spare = await _connect(dsn)
    try:
        with _progress_bar(progress) as bar:
            with _phase(phases, "prepare"):
                main = loaders[0]
                users_base = await _reserve_ids(main, "users", users)
                audit_base = await _reserve_ids(main, "audit_logs", audit_logs)
                pool = await _actor_pool(main, seed, users_base, users) if audit_logs else None
                loaded = [t for t, n in (("users", users), ("audit_logs", audit_logs)) if n > 0]
                emptied = [table for table in loaded if await _is_empty(main, table)]
                rebuild = await _drop_for_load(main, emptied)
                password_hash = seeded_password_hash(seed)
            builds = _IndexBuilds(rebuild, bar)
            try:
                if users:
                    with _phase(phases, "users"):
                        sql = _users_sql(
                            seed, base_id=users_base, total=users, password_hash=password_hash
                        )
                        await _load_chunks(loaders, bar, "users", sql, users, USER_CHUNK)
                    builds.table_loaded("users")
                    builds.start_worker(spare)
                if audit_logs:
                    assert pool is not None
                    with _phase(phases, "audit_logs"):
                        sql = _audit_sql(seed, base_id=audit_base, total=audit_logs, pool=pool)
                        await _load_chunks(loaders, bar, "audit logs", sql, audit_logs, AUDIT_CHUNK)
            finally:
                # Also after a failed load: the schema must come back whatever the data, and
                # the foreign keys even when an index build failed.
                try:
                    with _phase(phases, "indexes"):
                        await builds.finish(loaders if users else [*loaders, spare])
                finally:
                    await _finish([*loaders, spare], rebuild, loaded, phases, bar)
    finally:
        for conn in [*loaders, spare]:
            await conn.close()
    return SeedResult(users, audit_logs, time.perf_counter() - started, phases)


async def _load_chunks(
    connections: list[asyncpg.Connection],
    bar: Progress,
    label: str,
    sql: str,
    total: int,
    chunk: int,
) -> None:
    task = bar.add_task(label, total=total)
    await _run_jobs(connections, _chunk_jobs(sql, total, chunk, lambda n: bar.advance(task, n)))


# -- the command -------------------------------------------------------------------


def run_seed(settings: Settings, *, users: int, audit_logs: int, seed: int) -> int:
    """``fund seed``: migrate, load, print what was made and how seeded users sign in."""
    from alembic import command

    if settings.is_production:
        print(f"fund: seed {PRODUCTION_REFUSAL}", file=sys.stderr)
        return 2
    if users < 0 or audit_logs < 0:
        print("fund: --users and --audit-logs must be zero or more", file=sys.stderr)
        return 2
    assert settings.database_url is not None
    command.upgrade(
        alembic_config(settings.database_url, connect_timeout=settings.db_connect_timeout), "head"
    )
    try:
        result = asyncio.run(
            seed_database(settings.database_url, users=users, audit_logs=audit_logs, seed=seed)
        )
    except ValueError as exc:
        print(f"fund: {exc}", file=sys.stderr)
        return 2
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.phases.items())
    print(
        f"Seeded {result.users:,} user{'s' * (result.users != 1)} and {result.audit_logs:,} "
        f"audit entr{'y' if result.audit_logs == 1 else 'ies'} (seed {seed}) in "
        f"{result.seconds:.1f} s: {phases}."
        + (f"\nEvery seeded user signs in with the password: {SEEDED_PASSWORD}" if users else "")
    )
    return 0
