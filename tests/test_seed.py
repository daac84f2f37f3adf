"""``fund seed``: deterministic, realistic, referentially sound, and the schema comes back whole."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson
import pytest

from fund.config import Environment, Settings
from fund.db import asyncpg_dsn
from fund.kit.security import verify_password
from fund.seed import PHASES, SEEDED_PASSWORD, run_seed, seed_database
from tests.conftest import clone_database, drop_database
from tests.services import PostgresServer

USERS = 2_000
AUDIT_LOGS = 20_000


@pytest.fixture
async def conn(postgres: PostgresServer, database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(postgres.dsn(database), server_settings={"TimeZone": "UTC"})
    yield connection
    await connection.close()


async def _digest(conn: asyncpg.Connection, table: str) -> str:
    digest: str = await conn.fetchval(
        f"SELECT md5(string_agg(t::text, E'\\n' ORDER BY t.id)) FROM {table} AS t"
    )
    return digest


async def _catalog(conn: asyncpg.Connection) -> dict[str, Any]:
    """Every index (with its statistics targets), constraint and trigger of the two tables."""
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes"
        " WHERE tablename IN ('users', 'audit_logs') ORDER BY indexname"
    )
    constraints = await conn.fetch(
        "SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def,"
        " convalidated FROM pg_constraint"
        " WHERE conrelid IN ('users'::regclass, 'audit_logs'::regclass) ORDER BY conname"
    )
    triggers = await conn.fetch(
        "SELECT tgname, pg_get_triggerdef(oid) AS def, tgenabled FROM pg_trigger"
        " WHERE tgrelid = 'audit_logs'::regclass AND NOT tgisinternal ORDER BY tgname"
    )
    statistics = await conn.fetch(
        "SELECT a.attrelid::regclass::text, a.attnum, a.attstattarget FROM pg_attribute AS a"
        " JOIN pg_index AS i ON i.indexrelid = a.attrelid"
        " WHERE i.indrelid IN ('users'::regclass, 'audit_logs'::regclass) ORDER BY 1, 2"
    )
    return {
        "indexes": [tuple(row) for row in indexes],
        "index_statistics": [tuple(row) for row in statistics],
        "constraints": [tuple(row) for row in constraints],
        "triggers": [tuple(row) for row in triggers],
    }


async def _misdescribed_users(conn: asyncpg.Connection) -> int:
    """Entries whose details disagree with the user row they name.

    A failed login's known email is that user's; a CREATE's snapshot is the user it made.
    """
    count: int = await conn.fetchval(
        """
        SELECT count(*) FROM audit_logs AS a JOIN users AS u ON u.id::text = a.resource_id
        WHERE a.resource_type = 'user' AND (
           (a.action = 'LOGIN_FAILED' AND a.details->>'email' <> u.email)
           OR (a.action = 'CREATE' AND (
               (a.details->'after'->>'id')::bigint <> u.id
               OR a.details->'after'->>'email' <> u.email
               OR a.details->'after'->>'full_name' <> u.full_name
               OR a.details->'after'->>'role' <> u.role::text
               OR a.details->'after'->>'created_at' <> to_char(
                   u.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))))
        """
    )
    return count


async def _seeded_digests(postgres: PostgresServer, template: str, seed: int) -> tuple[str, str]:
    name = await clone_database(postgres, template)
    try:
        await seed_database(
            postgres.url(name), users=USERS, audit_logs=AUDIT_LOGS, seed=seed, progress=False
        )
        conn = await asyncpg.connect(postgres.dsn(name), server_settings={"TimeZone": "UTC"})
        try:
            return await _digest(conn, "users"), await _digest(conn, "audit_logs")
        finally:
            await conn.close()
    finally:
        await drop_database(postgres, name)


async def test_same_seed_gives_identical_rows_and_another_seed_differs(
    postgres: PostgresServer, template_database: str
) -> None:
    first = await _seeded_digests(postgres, template_database, seed=7)
    again = await _seeded_digests(postgres, template_database, seed=7)
    other = await _seeded_digests(postgres, template_database, seed=8)

    assert first == again
    assert first[0] != other[0]
    assert first[1] != other[1]


async def test_seed_counts_and_referential_integrity(
    database_url: str, conn: asyncpg.Connection
) -> None:
    result = await seed_database(
        database_url, users=USERS, audit_logs=AUDIT_LOGS, seed=1, progress=False
    )

    assert (result.users, result.audit_logs) == (USERS, AUDIT_LOGS)
    assert set(result.phases) == set(PHASES)
    assert await conn.fetchval("SELECT count(*) FROM users") == USERS
    assert await conn.fetchval("SELECT count(*) FROM audit_logs") == AUDIT_LOGS
    orphans = await conn.fetchval(
        "SELECT count(*) FROM audit_logs AS a WHERE a.user_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM users AS u WHERE u.id = a.user_id)"
    )
    assert orphans == 0
    dangling_targets = await conn.fetchval(
        "SELECT count(*) FROM audit_logs AS a WHERE a.resource_type = 'user'"
        " AND a.resource_id <> ''"
        " AND NOT EXISTS (SELECT 1 FROM users AS u WHERE u.id = a.resource_id::bigint)"
    )
    assert dangling_targets == 0
    # An actor existed when it acted: created before the entry.
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM audit_logs AS a JOIN users AS u ON u.id = a.user_id"
            " WHERE u.created_at > a.timestamp"
        )
        == 0
    )


async def test_seeded_users_look_like_a_firm(database_url: str, conn: asyncpg.Connection) -> None:
    await seed_database(database_url, users=USERS, audit_logs=0, seed=2, progress=False)

    emails = await conn.fetchrow(
        "SELECT count(DISTINCT email) AS distinct_emails,"
        " count(*) FILTER (WHERE email <> lower(email)) AS upper_case,"
        " count(*) FILTER (WHERE full_name !~ '^[A-Z][a-z]+ [A-Z][a-z]+$') AS odd_names,"
        " count(*) FILTER (WHERE NOT is_active) AS inactive,"
        " count(*) FILTER (WHERE updated_at < created_at) AS updated_before_created,"
        " count(*) FILTER (WHERE extract(microseconds FROM created_at)::int % 1000000 <> 0)"
        "   AS with_microseconds,"
        " max(created_at) - min(created_at) AS span FROM users"
    )
    assert emails["distinct_emails"] == USERS
    assert emails["upper_case"] == 0
    assert emails["odd_names"] == 0
    assert 0 < emails["inactive"] < USERS // 5
    assert emails["updated_before_created"] == 0
    assert emails["with_microseconds"] > USERS * 0.9
    assert emails["span"].days > 3 * 365
    roles = dict(await conn.fetch("SELECT role::text, count(*) FROM users GROUP BY role"))
    assert 0 < roles["ADMIN"] < roles["ANALYST"] < roles["VIEWER"]
    hashes = await conn.fetch("SELECT DISTINCT hashed_password FROM users")
    assert len(hashes) == 1
    assert verify_password(SEEDED_PASSWORD, hashes[0]["hashed_password"])


async def test_seeded_audit_entries_look_like_the_service_wrote_them(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await seed_database(database_url, users=USERS, audit_logs=AUDIT_LOGS, seed=3, progress=False)

    mix = dict(
        await conn.fetch(
            "SELECT action || ' ' || resource_type, count(*) FROM audit_logs GROUP BY 1"
        )
    )
    assert set(mix) == {
        "LOGIN user",
        "LOGIN_FAILED user",
        "CREATE user",
        "UPDATE user",
        "DELETE user",
        "DELETE audit_log",
    }
    assert mix["LOGIN user"] == max(mix.values())
    assert mix["DELETE audit_log"] == min(mix.values())
    # Each soft-deleted entry is the target of exactly one DELETE audit_log entry.
    deleted = await conn.fetch("SELECT id FROM audit_logs WHERE is_deleted ORDER BY id")
    targets = await conn.fetch(
        "SELECT resource_id::bigint AS id FROM audit_logs WHERE resource_type = 'audit_log'"
        " ORDER BY 1"
    )
    assert [row[0] for row in deleted] == [row[0] for row in targets]
    assert len(deleted) > 0

    shapes = await conn.fetchrow(
        """
        SELECT
          count(*) FILTER (WHERE ip_address IS NULL OR user_agent IS NULL
                           OR request_id !~ '^[0-9a-f]{32}$') AS unfilled,
          count(*) FILTER (WHERE action = 'LOGIN'
                           AND (details <> '{}' OR resource_id <> user_id::text)) AS bad_login,
          count(*) FILTER (WHERE action = 'LOGIN_FAILED'
                           AND (user_id IS NOT NULL OR NOT details ? 'email')) AS bad_failed,
          count(*) FILTER (WHERE action = 'UPDATE' AND NOT details ? 'changes') AS bad_update,
          count(*) FILTER (WHERE action = 'DELETE' AND details <> '{}') AS bad_delete,
          count(*) FILTER (WHERE extract(microseconds FROM timestamp)::int % 1000000 <> 0)
            AS with_microseconds,
          max(timestamp) - min(timestamp) AS span
        FROM audit_logs
        """
    )
    assert shapes["unfilled"] == 0
    assert shapes["bad_login"] == 0
    assert shapes["bad_failed"] == 0
    assert shapes["bad_update"] == 0
    assert shapes["bad_delete"] == 0
    assert shapes["with_microseconds"] > AUDIT_LOGS * 0.9
    assert shapes["span"].days > 3 * 365
    assert await _misdescribed_users(conn) == 0
    after = await conn.fetchval(
        "SELECT details->'after' FROM audit_logs WHERE action = 'CREATE' ORDER BY id LIMIT 1"
    )
    assert set(orjson.loads(after)) == {
        "id",
        "email",
        "full_name",
        "role",
        "is_active",
        "created_at",
        "updated_at",
    }
    # Skew: the busiest actor has far more entries than the average one.
    busiest, average = await conn.fetchrow(
        "SELECT max(n), avg(n) FROM (SELECT count(*) AS n FROM audit_logs"
        " WHERE user_id IS NOT NULL GROUP BY user_id) AS per_user"
    )
    assert busiest > 10 * average


async def test_seed_into_empty_tables_restores_every_index_and_constraint(
    database_url: str, conn: asyncpg.Connection
) -> None:
    before = await _catalog(conn)
    assert any(name == "idx_audit_logs_action" for name, _ in before["indexes"])

    await seed_database(database_url, users=500, audit_logs=5_000, seed=4, progress=False)

    assert await _catalog(conn) == before
    # The rebuilt foreign key is enforced again.
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await conn.execute(
            "INSERT INTO audit_logs (user_id, action, resource_type, resource_id)"
            " VALUES (999999, 'LOGIN', 'user', '999999')"
        )
    # The append-only triggers were never turned off.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("DELETE FROM audit_logs WHERE id = 1")


async def test_a_failed_load_still_restores_the_indexes_and_foreign_key(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        """
        CREATE FUNCTION refuse_entry_1500() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id = 1500 THEN RAISE EXCEPTION 'refused for the test'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_entry_1500 BEFORE INSERT ON audit_logs
            FOR EACH ROW EXECUTE FUNCTION refuse_entry_1500();
        """
    )
    before = await _catalog(conn)

    with pytest.raises(asyncpg.RaiseError, match="refused for the test"):
        await seed_database(database_url, users=100, audit_logs=2_000, seed=1, progress=False)

    assert await _catalog(conn) == before
    assert await conn.fetchval("SELECT count(*) FROM audit_logs") == 0


async def test_seeding_appends_to_non_empty_tables(
    database_url: str, conn: asyncpg.Connection
) -> None:
    before = await _catalog(conn)
    await seed_database(database_url, users=500, audit_logs=2_000, seed=5, progress=False)
    second = await seed_database(database_url, users=300, audit_logs=1_000, seed=5, progress=False)

    assert (second.users, second.audit_logs) == (300, 1_000)
    counts = await conn.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT email) AS emails, min(id) AS low, max(id) AS high"
        " FROM users"
    )
    assert tuple(counts) == (800, 800, 1, 800)
    entries = await conn.fetchrow(
        "SELECT count(*) AS n, min(id) AS low, max(id) AS high,"
        " count(*) FILTER (WHERE id > 2000 AND user_id <= 500) AS second_run_old_actors"
        " FROM audit_logs"
    )
    assert tuple(entries) == (3_000, 1, 3_000, 0)
    assert await _catalog(conn) == before
    # The identity continues after the seeded ids: the application's next insert fits.
    new_id = await conn.fetchval(
        "INSERT INTO users (email, hashed_password) VALUES ('after.seed@fund.example', 'x')"
        " RETURNING id"
    )
    assert new_id == 801


async def test_audit_only_run_uses_the_existing_users(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await seed_database(database_url, users=200, audit_logs=0, seed=6, progress=False)
    await seed_database(database_url, users=0, audit_logs=3_000, seed=6, progress=False)

    actors = await conn.fetchrow(
        "SELECT count(*) AS n, min(user_id) AS low, max(user_id) AS high FROM audit_logs"
    )
    assert actors["n"] == 3_000
    assert 1 <= actors["low"] <= actors["high"] <= 200
    assert await _misdescribed_users(conn) == 0


async def test_audit_entries_without_users_are_refused(database_url: str) -> None:
    with pytest.raises(ValueError, match="need users"):
        await seed_database(database_url, users=0, audit_logs=10, seed=1, progress=False)


async def test_fund_seed_command_prints_the_shared_password(
    settings: Settings, conn: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await _in_thread(run_seed, settings, users=50, audit_logs=200, seed=9)

    assert code == 0
    out = capsys.readouterr().out
    assert SEEDED_PASSWORD in out
    assert "━" not in out  # no progress bar when stdout is not a terminal
    assert await conn.fetchval("SELECT count(*) FROM audit_logs") == 200


async def test_fund_seed_refuses_production(settings: Settings) -> None:
    production = settings.model_copy(update={"env": Environment.PRODUCTION})

    assert run_seed(production, users=1, audit_logs=0, seed=1) == 2


def test_the_embedded_servers_socket_url_becomes_an_asyncpg_dsn() -> None:
    dsn = asyncpg_dsn("postgresql+asyncpg://postgres@/fund?host=/run/fund pg&port=5433")

    parts = urlsplit(dsn)
    assert (parts.scheme, parts.username, parts.hostname, parts.path) == (
        "postgresql",
        "postgres",
        None,
        "/fund",
    )
    assert parse_qs(parts.query) == {"host": ["/run/fund pg"], "port": ["5433"]}


async def _in_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    """run_seed owns an event loop (asyncio.run); the test's loop must not be running it."""
    import asyncio

    return await asyncio.to_thread(function, *args, **kwargs)
