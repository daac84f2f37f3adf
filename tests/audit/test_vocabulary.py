"""The database holds an entry's action and resource type to the API's vocabulary.

Since migration 012 the columns are the enums ``audit_action`` and ``audit_resource_type``:
SQL from outside the API (plain asyncpg here, as the superuser the tests connect with) can
write no other value, and the enums' labels are exactly ``Action``'s and ``ResourceType``'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from fund.models import Action, ResourceType
from tests.services import PostgresServer

INSERT = (
    "INSERT INTO audit_logs (action, resource_type, resource_id)"
    " VALUES ($1, $2, '7') RETURNING action::text || ' ' || resource_type::text"
)


@pytest.fixture
async def conn(postgres: PostgresServer, database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(postgres.dsn(database))
    yield connection
    await connection.close()


async def test_the_enums_hold_exactly_the_api_vocabulary(conn: asyncpg.Connection) -> None:
    """A label added to ``Action`` or ``ResourceType`` needs its migration (``ADD VALUE``)."""
    for enum, values in (("audit_action", Action), ("audit_resource_type", ResourceType)):
        labels = await conn.fetchval(f"SELECT enum_range(NULL::{enum})::text[]")
        assert labels == [value.value for value in values]
    for action in Action:
        for resource_type in ResourceType:
            written = await conn.fetchval(INSERT, action.value, resource_type.value)
            assert written == f"{action} {resource_type}"


@pytest.mark.parametrize(
    ("action", "resource_type", "enum", "refused"),
    [
        ("EXPORT", "user", "audit_action", "EXPORT"),
        ("login", "user", "audit_action", "login"),  # the labels' case is the API's
        ("", "user", "audit_action", ""),
        ("LOGIN ", "user", "audit_action", "LOGIN "),
        ("LOGIN", "account", "audit_resource_type", "account"),
        ("LOGIN", "User", "audit_resource_type", "User"),
    ],
)
async def test_the_database_refuses_a_value_outside_the_vocabulary(
    conn: asyncpg.Connection, action: str, resource_type: str, enum: str, refused: str
) -> None:
    with pytest.raises(
        asyncpg.InvalidTextRepresentationError,
        match=f'invalid input value for enum {enum}: "{refused}"',
    ):
        await conn.execute(INSERT, action, resource_type)
    # Nor can a literal written into the statement: the type itself refuses it.
    with pytest.raises(asyncpg.InvalidTextRepresentationError, match=enum):
        await conn.execute(
            "INSERT INTO audit_logs (action, resource_type, resource_id)"
            f" VALUES ('{action}', '{resource_type}', '7')"
        )
    assert await conn.fetchval("SELECT count(*) FROM audit_logs") == 0
