"""Migrations upgrade, downgrade and upgrade again cleanly; each downgrade undoes its upgrade."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError

from fund.db import alembic_config
from fund.models import Action, ResourceType
from tests.ops.processes import FUND, environment_without_fund
from tests.services import PostgresServer

SCHEMA_QUERY = """
SELECT 'table ' || table_name FROM information_schema.tables WHERE table_schema = 'public'
UNION ALL SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type
    || ' default ' || coalesce(column_default, 'none')
    FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL SELECT 'index ' || indexname || ' ' || indexdef
    FROM pg_indexes WHERE schemaname = 'public'
UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
UNION ALL SELECT 'extension ' || extname FROM pg_extension
UNION ALL SELECT 'type ' || typname FROM pg_type WHERE typnamespace = 'public'::regnamespace
    AND typtype = 'e'
"""


@pytest.fixture
async def empty_database(postgres: PostgresServer) -> AsyncIterator[str]:
    name = "fund_test_migrations"
    admin = await postgres.admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def schema(postgres: PostgresServer, database: str) -> set[str]:
    conn = await asyncpg.connect(postgres.dsn(database))
    try:
        # Alembic's own bookkeeping table is not part of the schema under test.
        return {row[0] for row in await conn.fetch(SCHEMA_QUERY) if "alembic_version" not in row[0]}
    finally:
        await conn.close()


async def migrate(postgres: PostgresServer, database: str, action: str, revision: str) -> None:
    config = alembic_config(postgres.url(database), connect_timeout=5)
    step = command.upgrade if action == "upgrade" else command.downgrade
    await asyncio.to_thread(step, config, revision)


def revisions() -> list[str]:
    script = ScriptDirectory.from_config(
        alembic_config("postgresql+asyncpg://unused/x", connect_timeout=5)
    )
    return [r.revision for r in reversed(list(script.walk_revisions()))]


async def test_revisions_form_one_line_from_001() -> None:
    assert revisions()[:4] == ["001", "002", "003", "004"]


async def test_upgrade_downgrade_upgrade_is_clean(
    postgres: PostgresServer, empty_database: str
) -> None:
    empty = await schema(postgres, empty_database)
    shapes: dict[str, set[str]] = {}
    for revision in revisions():
        await migrate(postgres, empty_database, "upgrade", revision)
        shapes[revision] = await schema(postgres, empty_database)
    head = shapes[revisions()[-1]]

    # Step down one revision at a time: each downgrade restores exactly the schema before it.
    steps = list(zip(["base", *revisions()[:-1]], revisions(), strict=True))
    for previous, revision in reversed(steps):
        await migrate(postgres, empty_database, "downgrade", previous)
        expected = empty if previous == "base" else shapes[previous]
        current = await schema(postgres, empty_database)
        assert current == expected, f"downgrade of {revision} left a difference"

    await migrate(postgres, empty_database, "upgrade", "head")
    assert await schema(postgres, empty_database) == head


async def test_002_adds_the_named_indexes_with_their_sort_keys(
    postgres: PostgresServer, empty_database: str
) -> None:
    await migrate(postgres, empty_database, "upgrade", "001")
    before = await schema(postgres, empty_database)
    await migrate(postgres, empty_database, "upgrade", "002")
    added = await schema(postgres, empty_database) - before

    names = {line.split()[1] for line in added if line.startswith("index ")}
    assert {
        "idx_users_role",
        "idx_users_created_at_desc",
        "idx_users_role_is_active",
        "idx_users_created_at_is_active",
        "idx_audit_logs_resource_id",
        "idx_audit_logs_action",
        "idx_audit_logs_resource_type_timestamp",
        "idx_audit_logs_is_deleted_timestamp",
        "idx_audit_logs_user_id_timestamp",
    } <= names
    for line in added:
        if line.startswith("index idx_users"):
            assert line.endswith("created_at DESC, id DESC)"), line
        if line.startswith("index idx_audit_logs"):
            assert line.endswith('"timestamp" DESC, id DESC)'), line


async def test_007_makes_the_audit_identifiers_compare_bytewise(
    postgres: PostgresServer, empty_database: str
) -> None:
    query = """
        SELECT a.attname, c.collname
        FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation
        WHERE a.attrelid = 'audit_logs'::regclass AND a.attname = ANY($1::text[])
    """
    columns = ["action", "resource_type", "resource_id"]
    # At 007 itself: since 012 action and resource_type are enums, which have no collation.
    await migrate(postgres, empty_database, "upgrade", "007")
    conn = await asyncpg.connect(postgres.dsn(empty_database))
    try:
        assert dict(await conn.fetch(query, columns)) == dict.fromkeys(columns, "C")
        # The indexes on them follow the column, so the planner still uses them for equality.
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT id FROM audit_logs WHERE resource_id = '7'"
            ' ORDER BY "timestamp" DESC, id DESC LIMIT 20'
        )
        assert "idx_audit_logs_resource_id" in plan
    finally:
        await conn.close()
    await migrate(postgres, empty_database, "downgrade", "006")
    conn = await asyncpg.connect(postgres.dsn(empty_database))
    try:
        assert dict(await conn.fetch(query, columns)) == dict.fromkeys(columns, "default")
    finally:
        await conn.close()


async def test_010_stamps_rows_when_they_are_written_not_when_the_transaction_began(
    postgres: PostgresServer, empty_database: str
) -> None:
    stamped = """
        WITH began AS (SELECT now() AS at, pg_sleep(0.01)),
        entry AS (
            INSERT INTO audit_logs (action, resource_type, resource_id)
            VALUES ('LOGIN', 'user', '1') RETURNING "timestamp"
        ),
        account AS (
            INSERT INTO users (email, hashed_password) VALUES ($1, 'x')
            RETURNING created_at, updated_at
        )
        SELECT began.at, entry."timestamp", account.created_at, account.updated_at
        FROM began, entry, account
    """
    await migrate(postgres, empty_database, "upgrade", "head")
    conn = await asyncpg.connect(postgres.dsn(empty_database))
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_sleep(0.01)")  # the transaction began before this
            began, entry, created, updated = await conn.fetchrow(stamped, "a@example.com")
        assert entry > began  # written after the wait, not at the transaction's start
        assert created == updated > began  # one value for a new user's two timestamps
    finally:
        await conn.close()
    await migrate(postgres, empty_database, "downgrade", "009")
    conn = await asyncpg.connect(postgres.dsn(empty_database))
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_sleep(0.01)")
            began, entry, created, updated = await conn.fetchrow(stamped, "b@example.com")
        assert entry == created == updated == began  # as before 010: the transaction's start
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "at",
    ["4000-01-01 00:00:00 BC", "infinity", "-infinity", "0001-01-01 00:30:00+01", "10000-01-01+00"],
)
async def test_011_refuses_times_the_service_cannot_show(
    postgres: PostgresServer, empty_database: str, at: str
) -> None:
    """Python's datetime holds years 1 to 9999: a row beyond (written outside the API) made
    every page that reached it a 500."""
    await migrate(postgres, empty_database, "upgrade", "head")
    conn = await asyncpg.connect(postgres.dsn(empty_database))
    try:
        for edge in ("0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00"):  # both kept
            await conn.execute(
                "INSERT INTO users (email, hashed_password, created_at, updated_at)"
                " VALUES ($1, 'x', $2::text::timestamptz, $2::text::timestamptz)",
                f"{edge[:4]}@example.com",
                edge,
            )
        with pytest.raises(asyncpg.CheckViolationError, match="ck_users_times_in_range"):
            await conn.execute(
                "INSERT INTO users (email, hashed_password, created_at)"
                " VALUES ('bc@example.com', 'x', $1::text::timestamptz)",
                at,
            )
        with pytest.raises(asyncpg.CheckViolationError, match="ck_audit_logs_timestamp_in_range"):
            await conn.execute(
                'INSERT INTO audit_logs (action, resource_type, resource_id, "timestamp")'
                " VALUES ('LOGIN', 'user', '1', $1::text::timestamptz)",
                at,
            )
    finally:
        await conn.close()


AUDIT_COLUMNS = """
    SELECT a.attname, format_type(a.atttypid, a.atttypmod), coalesce(c.collname, '')
    FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation
    WHERE a.attrelid = 'audit_logs'::regclass AND a.attname = ANY($1::text[])
    ORDER BY a.attnum
"""
VOCABULARY_COLUMNS = ["action", "resource_type", "resource_id"]
ENTRIES = "SELECT t::text FROM audit_logs AS t ORDER BY t.id"
AUDIT_INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_logs'"
VOCABULARY_TYPES = "SELECT to_regtype('audit_action'), to_regtype('audit_resource_type')"


async def add_every_kind_of_entry(conn: asyncpg.Connection) -> None:
    """One entry for each action and resource type, with every column set; one soft-deleted."""
    user_id = await conn.fetchval(
        "INSERT INTO users (email, hashed_password) VALUES ('actor@example.com', 'x') RETURNING id"
    )
    for n, (action, resource_type) in enumerate(
        itertools.product(list(Action), list(ResourceType))
    ):
        await conn.execute(
            'INSERT INTO audit_logs ("timestamp", user_id, action, resource_type, resource_id,'
            " details, ip_address, user_agent, request_id)"
            " VALUES ('2026-11-30 10:00:00.123456+00'::timestamptz + $1 * interval '1 minute',"
            " $2, $3, $4, $5, $6::jsonb, '198.51.100.7', 'curl/8.5.0', $7)",
            n,
            user_id,
            action.value,
            resource_type.value,
            str(n),
            json.dumps({"email": f"{n}@example.com"}),
            f"req-{n}",
        )
    await conn.execute("UPDATE audit_logs SET is_deleted = true WHERE resource_id = '3'")


async def test_012_makes_action_and_resource_type_enums_and_keeps_every_entry(
    postgres: PostgresServer, empty_database: str
) -> None:
    await migrate(postgres, empty_database, "upgrade", "011")
    conn = await asyncpg.connect(postgres.dsn(empty_database))
    try:
        await add_every_kind_of_entry(conn)
        await conn.execute("ANALYZE audit_logs")
        entries = await conn.fetch(ENTRIES)
        indexes = set(await conn.fetch(AUDIT_INDEXES))
        as_text = [
            ("action", "character varying(32)", "C"),
            ("resource_type", "character varying(64)", "C"),
            ("resource_id", "character varying(64)", "C"),
        ]
        assert [tuple(row) for row in await conn.fetch(AUDIT_COLUMNS, VOCABULARY_COLUMNS)] == (
            as_text
        )
    finally:
        await conn.close()

    await migrate(postgres, empty_database, "upgrade", "head")
    conn = await asyncpg.connect(postgres.dsn(empty_database))
    try:
        assert [tuple(row) for row in await conn.fetch(AUDIT_COLUMNS, VOCABULARY_COLUMNS)] == [
            ("action", "audit_action", ""),  # an enum has no collation
            ("resource_type", "audit_resource_type", ""),
            ("resource_id", "character varying(64)", "C"),  # an id: stays text, bytewise
        ]
        assert await conn.fetch(ENTRIES) == entries  # each row renders as it did, label for text
        # The indexes on the two columns came back under their names, as they were defined.
        assert set(await conn.fetch(AUDIT_INDEXES)) == indexes
        # A change of type drops a column's planner statistics: the migration gathers them again.
        analyzed = await conn.fetch(
            "SELECT attname FROM pg_stats WHERE tablename = 'audit_logs'"
            " AND attname IN ('action', 'resource_type') ORDER BY attname"
        )
        assert [row[0] for row in analyzed] == ["action", "resource_type"]
        with pytest.raises(
            asyncpg.InvalidTextRepresentationError,
            match='invalid input value for enum audit_action: "EXPORT"',
        ):
            await conn.execute(
                "INSERT INTO audit_logs (action, resource_type, resource_id)"
                " VALUES ('EXPORT', 'user', '1')"
            )
    finally:
        await conn.close()

    await migrate(postgres, empty_database, "downgrade", "011")
    conn = await asyncpg.connect(postgres.dsn(empty_database))
    try:
        assert [tuple(row) for row in await conn.fetch(AUDIT_COLUMNS, VOCABULARY_COLUMNS)] == (
            as_text
        )
        assert await conn.fetch(ENTRIES) == entries
        assert set(await conn.fetch(AUDIT_INDEXES)) == indexes
        assert tuple(await conn.fetchrow(VOCABULARY_TYPES)) == (None, None)
    finally:
        await conn.close()

    await migrate(postgres, empty_database, "upgrade", "head")
    conn = await asyncpg.connect(postgres.dsn(empty_database))
    try:
        assert await conn.fetch(ENTRIES) == entries
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("column", "value", "enum"),
    [("action", "EXPORT", "audit_action"), ("resource_type", "account", "audit_resource_type")],
)
async def test_012_fails_on_a_value_outside_the_vocabulary_and_changes_nothing(
    postgres: PostgresServer, empty_database: str, column: str, value: str, enum: str
) -> None:
    await migrate(postgres, empty_database, "upgrade", "011")
    conn = await asyncpg.connect(postgres.dsn(empty_database))
    try:
        await add_every_kind_of_entry(conn)
        # Written outside the API, before the vocabulary was the database's to keep.
        outside = {"action": "LOGIN", "resource_type": "user", column: value}
        await conn.execute(
            "INSERT INTO audit_logs (action, resource_type, resource_id) VALUES ($1, $2, '99')",
            outside["action"],
            outside["resource_type"],
        )
        entries = await conn.fetch(ENTRIES)
    finally:
        await conn.close()
    before = await schema(postgres, empty_database)

    with pytest.raises(DBAPIError, match=f'invalid input value for enum {enum}: "{value}"'):
        await migrate(postgres, empty_database, "upgrade", "head")

    assert await schema(postgres, empty_database) == before  # no type made, no column changed
    conn = await asyncpg.connect(postgres.dsn(empty_database))
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == "011"
        assert await conn.fetch(ENTRIES) == entries
        assert tuple(await conn.fetchrow(VOCABULARY_TYPES)) == (None, None)
    finally:
        await conn.close()


async def test_processes_migrating_one_database_at_once_take_turns(
    postgres: PostgresServer, empty_database: str
) -> None:
    """App servers started together on a new database each migrate it first: the one that
    waited finds nothing left to do, rather than failing on the tables the other made."""
    env = environment_without_fund(
        FUND_DATABASE_URL=postgres.url(empty_database), FUND_LOG_LEVEL="WARNING"
    )
    processes = [
        await asyncio.create_subprocess_exec(
            FUND, "db", "upgrade", env=env, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    outcomes = []
    for process in processes:
        _, err = await process.communicate()
        outcomes.append((process.returncode, err.decode()))
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    conn = await asyncpg.connect(postgres.dsn(empty_database))
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == revisions()[-1]
        # No process is left holding (or waiting for) the lock.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            == 0
        )
    finally:
        await conn.close()
