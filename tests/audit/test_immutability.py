"""The database itself keeps ``audit_logs`` append-only, whoever sends the SQL.

Plain asyncpg on the test database, as the superuser the tests connect with (triggers bind
every role that cannot disable them) and as an application role set up the way
docs/app_role.sql grants it (the ``app_role`` fixture).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.services import PostgresServer

REFUSED = "audit_logs is append-only"

# Every column, and a new value of the right type for it.
REWRITES = {
    "id": "id + 1000",
    "timestamp": "timestamp - interval '1 day'",
    "user_id": "NULL",
    "action": "'LOGIN'",
    "resource_type": "'audit_log'",
    "resource_id": "'999'",
    "details": "'{\"forged\": true}'::jsonb",
    "ip_address": "'192.0.2.66'::inet",
    "user_agent": "'forger'",
    "request_id": "'forged'",
}


@pytest.fixture
async def conn(postgres: PostgresServer, database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(postgres.dsn(database))
    yield connection
    await connection.close()


async def add_entry(
    conn: asyncpg.Connection, *, is_deleted: bool = False, user_id: int | None = None
) -> int:
    entry_id: int = await conn.fetchval(
        "INSERT INTO audit_logs (user_id, action, resource_type, resource_id, details,"
        " ip_address, user_agent, request_id, is_deleted)"
        " VALUES ($2, 'CREATE', 'user', '7', '{\"after\": {\"email\": \"a@example.com\"}}',"
        " '198.51.100.9', 'curl/8.0', 'req-1', $1) RETURNING id",
        is_deleted,
        user_id,
    )
    return entry_id


async def snapshot(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(row) for row in await conn.fetch("SELECT * FROM audit_logs ORDER BY id")]


async def test_no_column_can_be_rewritten(conn: asyncpg.Connection) -> None:
    actor = await conn.fetchval(
        "INSERT INTO users (email, hashed_password) VALUES ('actor@example.com', 'x') RETURNING id"
    )
    entry = await add_entry(conn, user_id=actor)
    before = await snapshot(conn)
    for column, value in REWRITES.items():
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=REFUSED):
            await conn.execute(f"UPDATE audit_logs SET {column} = {value} WHERE id = $1", entry)
        # Nor alongside the one change that is allowed.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=REFUSED):
            await conn.execute(
                f"UPDATE audit_logs SET {column} = {value}, is_deleted = true WHERE id = $1",
                entry,
            )
    # Nor to the same value: an entry is not touched at all.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=REFUSED):
        await conn.execute("UPDATE audit_logs SET action = action WHERE id = $1", entry)
    assert await snapshot(conn) == before


async def test_soft_delete_is_the_one_change_and_cannot_be_undone(
    conn: asyncpg.Connection,
) -> None:
    entry = await add_entry(conn)
    [before] = await snapshot(conn)

    assert await conn.execute("UPDATE audit_logs SET is_deleted = true WHERE id = $1", entry) == (
        "UPDATE 1"
    )
    [after] = await snapshot(conn)
    assert after == {**before, "is_deleted": True}

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=REFUSED):
        await conn.execute("UPDATE audit_logs SET is_deleted = false WHERE id = $1", entry)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=REFUSED):
        await conn.execute("UPDATE audit_logs SET is_deleted = true WHERE id = $1", entry)
    assert await snapshot(conn) == [after]


async def test_rows_cannot_be_removed(conn: asyncpg.Connection) -> None:
    await add_entry(conn)
    await add_entry(conn, is_deleted=True)
    before = await snapshot(conn)
    statements = (
        "DELETE FROM audit_logs",
        "DELETE FROM audit_logs WHERE is_deleted",
        "TRUNCATE audit_logs",
        "TRUNCATE users CASCADE",  # reaches audit_logs through its foreign key
        "TRUNCATE audit_logs, users RESTART IDENTITY",
    )
    for statement in statements:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=REFUSED):
            await conn.execute(statement)
    assert await snapshot(conn) == before


async def test_the_application_role_cannot_rewrite_or_unguard_history(
    postgres: PostgresServer, database: str, conn: asyncpg.Connection, app_role: str
) -> None:
    app = await asyncpg.connect(postgres.dsn(database, user=app_role))
    try:
        # What the service does works: append, read, soft-delete.
        entry = await add_entry(app)
        assert await app.fetchval("SELECT count(*) FROM audit_logs") == 1
        await app.execute("UPDATE audit_logs SET is_deleted = true WHERE id = $1", entry)
        before = await snapshot(conn)

        refused = (
            "UPDATE audit_logs SET action = 'LOGIN'",
            "UPDATE audit_logs SET is_deleted = false",  # granted column, refused by the trigger
            "DELETE FROM audit_logs",
            "TRUNCATE audit_logs",
            "ALTER TABLE audit_logs DISABLE TRIGGER audit_logs_guard_update",
            "ALTER TABLE audit_logs DISABLE TRIGGER ALL",
            "DROP TRIGGER audit_logs_refuse_delete ON audit_logs",
            "DROP TABLE audit_logs",
            "CREATE OR REPLACE FUNCTION audit_logs_guard_update() RETURNS trigger"
            " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
            "SET session_replication_role = replica",  # would skip every trigger
        )
        for statement in refused:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(statement)
        assert await snapshot(conn) == before
    finally:
        await app.close()
