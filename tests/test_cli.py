"""The `fund users create` command as an operator meets it: output and exit codes."""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import sys
import time
from pathlib import Path

import anyio
import asyncpg
import pytest
from alembic.script import ScriptDirectory

from fund.bootstrap import FIRST_ADMIN_EMAIL, create_first_admin, create_user
from fund.config import Settings
from fund.db import alembic_config, asyncpg_dsn
from fund.kit.security import verify_password
from tests.conftest import SECRET
from tests.ops.processes import spare_port
from tests.services import PostgresServer

HEAD = ScriptDirectory.from_config(
    alembic_config("postgresql+asyncpg://unused/x", connect_timeout=5)
).get_current_head()


async def fund(
    database_url: str,
    *args: str,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    **settings: str,
) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "FUND_DATABASE_URL": database_url,
        "FUND_SECRET_KEY": SECRET,
        "FUND_ENV": "test",
        **settings,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fund",
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def create(email: str, role: str = "ANALYST", password: str = "correct horse battery") -> list[str]:
    return ["users", "create", "--email", email, "--password", password, "--role", role]


async def test_users_create_prints_the_id_and_refuses_bad_values_with_exit_1(
    database_url: str,
) -> None:
    code, out, _ = await fund(database_url, *create("Ops@Example.com", "ADMIN"))
    assert code == 0
    assert out.strip().isdigit()
    # Without --full-name, the name is the address's local part: digits make a name too,
    # and a local part of neither makes the whole address the name.
    for email in ("12345@example.com", "___@example.com"):
        code, _, err = await fund(database_url, *create(email))
        assert code == 0, (email, err)

    failures = {
        "duplicate": create("ops@example.com"),
        "bad-role": create("a@example.com", role="ROOT"),
        "bad-email": create("not-an-email"),
        "short-password": create("b@example.com", password="short"),
        "blank-password": create("c@example.com", password=" " * 12),
        "empty-name": [*create("d@example.com"), "--full-name", ""],  # given, so not made up
    }
    for name, args in failures.items():
        code, out, err = await fund(database_url, *args)
        assert code == 1, name
        assert out == "", name
        assert err.startswith("fund: "), name
        assert "Traceback" not in err, name
        assert "Value error" not in err, name  # pydantic's prefix says nothing to a reader
    _, _, err = await fund(database_url, *create("ops@example.com"))
    assert "already exists" in err


async def test_a_database_that_is_not_there_is_one_line_not_a_traceback(
    database_url: str, postgres: PostgresServer
) -> None:
    unreachable = "postgresql+asyncpg://postgres@127.0.0.1:1/fund"  # nothing listens on port 1
    for args in (["db", "current"], ["serve", "--port", "8765"], create("nobody@example.com")):
        code, _, err = await fund(unreachable, *args)
        assert code == 1, (args, err)
        assert "Traceback" not in err, err
        assert "fund: cannot reach the database (" in err, err
        assert "is FUND_DATABASE_URL right" in err

    missing = postgres.url("fund_no_such_database")
    code, _, err = await fund(missing, "db", "upgrade")
    assert (code, "Traceback" in err) == (1, False), err
    assert 'fund: the database refused: database "fund_no_such_database" does not exist' in err

    code, _, err = await fund(database_url, "db", "downgrade", "no-such-revision")
    assert (code, "Traceback" in err) == (1, False), err
    assert "fund: Can't locate revision identified by 'no-such-revision'" in err

    code, _, err = await fund(database_url, "serve", "--port", "99999")
    assert code == 2
    assert "--port: must be 1..65535, not 99999" in err

    code, _, err = await fund(database_url, "serve", "--workers", "1000")  # a typo for 10
    assert code == 2
    assert f"--workers: must be 1..{8 * (os.cpu_count() or 1)}, not 1000" in err


async def test_serve_on_an_address_it_cannot_listen_on_is_one_line_at_once(
    database_url: str,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await fund(database_url, "serve", "--port", str(port))
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"fund: cannot listen on 127.0.0.1:{port}: Address already in use"]

    code, out, err = await fund(database_url, "serve", "--host", "bad..host")  # no lookup
    assert (code, out) == (2, "")
    assert err.splitlines() == ["fund: --host bad..host: not a host name or address"]


async def test_bad_settings_are_one_line_each_naming_the_variable_never_its_value(
    database_url: str,
) -> None:
    code, out, err = await fund(
        database_url,
        "db",
        "current",
        FUND_DATABASE_URL="mysql://root:s3cret-in-url@db.internal/fund",
        FUND_ACCESS_TOKEN_MINUTES="abc",
        FUND_LOG_LEVEL="chatty",
    )
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "fund: FUND_DATABASE_URL: mysql:// is not a database fund runs on; "
        "expected postgresql+asyncpg://user@host:port/database",
        "fund: FUND_ACCESS_TOKEN_MINUTES: Input should be a valid integer, "
        "unable to parse string as an integer",
        "fund: FUND_LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
    ]
    assert "s3cret" not in err


async def test_numbers_past_their_range_are_refused_at_start_not_met_later(
    database_url: str,
) -> None:
    """Accepted, a TTL Redis cannot take switched the cache off without a word, a statement
    timeout past PostgreSQL's int failed every connection, and an infinite Redis timeout let
    a hung Redis hang every request."""
    code, out, err = await fund(
        database_url,
        "db",
        "current",
        FUND_CACHE_USER_TTL="99999999999999999999",
        FUND_DB_STATEMENT_TIMEOUT_MS=str(2**31),
        FUND_REDIS_SOCKET_TIMEOUT="inf",
    )
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "fund: FUND_CACHE_USER_TTL: Input should be less than or equal to 31536000",
        "fund: FUND_DB_STATEMENT_TIMEOUT_MS: Input should be less than or equal to 2147483647",
        "fund: FUND_REDIS_SOCKET_TIMEOUT: Input should be a finite number",
    ]


async def test_an_empty_variable_counts_as_unset_so_production_refuses_it(
    database_url: str,
) -> None:
    """An unexpanded ``${DB_URL}`` in a deployment must not start an embedded database."""
    code, _, err = await fund(
        database_url, "db", "current", FUND_ENV="production", FUND_DATABASE_URL=""
    )
    assert code == 2
    assert "FUND_ENV=production refuses unsafe defaults; set FUND_DATABASE_URL" in err


async def test_libpq_style_urls_are_read_for_asyncpg_and_misspelt_variables_are_named(
    database_url: str,
) -> None:
    libpq = database_url.replace("postgresql+asyncpg://", "postgresql://") + "?sslmode=disable"
    code, out, err = await fund(libpq, "db", "current", FUND_ACESS_TOKEN_MINUTES="5")
    assert code == 0, err
    assert out.strip() == f"{HEAD} (head)"
    assert "fund: warning: FUND_ACESS_TOKEN_MINUTES is not a setting (misspelt?); ignored" in err


async def test_a_database_without_the_schema_is_told_to_run_the_migrations(
    postgres: PostgresServer,
) -> None:
    admin = await postgres.admin()
    try:
        await admin.execute('DROP DATABASE IF EXISTS "fund_test_unmigrated" WITH (FORCE)')
        await admin.execute('CREATE DATABASE "fund_test_unmigrated"')
        url = postgres.url("fund_test_unmigrated")
        code, out, _ = await fund(url, "db", "current")
        assert (code, out) == (0, "none: no migration applied (fund db upgrade applies them)\n")
        code, out, err = await fund(url, *create("early@example.com"))
        assert (code, out) == (1, "")
        assert err.strip() == (
            "fund: the database is not migrated for this version of fund "
            '(relation "users" does not exist): run `fund db upgrade`'
        )
        # One migration behind (011, before the audit enums): told the same, not "refused".
        assert (await fund(url, "db", "upgrade"))[0] == 0
        assert (await fund(url, "db", "downgrade", "011"))[0] == 0
        code, out, err = await fund(url, *create("behind@example.com"))
        assert (code, out) == (1, "")
        assert err.strip() == (
            "fund: the database is not migrated for this version of fund "
            '(type "audit_action" does not exist): run `fund db upgrade`'
        )
    finally:
        await admin.execute('DROP DATABASE IF EXISTS "fund_test_unmigrated" WITH (FORCE)')
        await admin.close()


async def test_creating_a_user_leaves_no_key_file_behind(database_url: str, tmp_path: Path) -> None:
    """Without FUND_SECRET_KEY (empty counts as unset), only ``fund serve`` makes the
    development key: a one-off command against a real database writes nothing in its
    working directory."""
    code, out, err = await fund(
        database_url, *create("keyless@example.com"), cwd=tmp_path, FUND_SECRET_KEY=""
    )
    assert code == 0, err
    assert out.strip().isdigit()
    assert [entry async for entry in anyio.Path(tmp_path).iterdir()] == []
    assert "secret_key_generated" not in err


async def test_a_password_can_come_from_standard_input(
    database_url: str, postgres: PostgresServer, database: str
) -> None:
    """So that it stays out of the shell's history and the process list."""
    args = ["users", "create", "--email", "piped@example.com", "--password", "-"]
    code, out, err = await fund(
        database_url, *args, "--role", "VIEWER", stdin=b"a piped passphrase\n"
    )
    assert code == 0, err
    conn = await asyncpg.connect(postgres.dsn(database))
    try:
        hashed = await conn.fetchval("SELECT hashed_password FROM users WHERE id = $1", int(out))
    finally:
        await conn.close()
    assert verify_password("a piped passphrase", hashed)
    assert not verify_password("-", hashed)

    code, _, err = await fund(database_url, *args, "--role", "VIEWER", stdin=b"short\n")
    assert code == 1
    assert "password: String should have at least 12 characters" in err


async def test_servers_starting_together_on_an_empty_database_make_one_first_admin(
    settings: Settings, postgres: PostgresServer, database: str
) -> None:
    """The one that loses the race finds the admin made, rather than failing to start."""
    made = await asyncio.gather(*(create_first_admin(settings) for _ in range(3)))
    [(email, password)] = [m for m in made if m is not None]
    assert email == FIRST_ADMIN_EMAIL and len(password) >= 12
    conn = await asyncpg.connect(postgres.dsn(database))
    try:
        assert await conn.fetchval("SELECT count(*) FROM users") == 1
    finally:
        await conn.close()


async def test_a_database_that_accepts_but_never_answers_is_given_up_on_in_time() -> None:
    """A frozen server (or a firewall that drops replies): every command gives up after
    FUND_DB_CONNECT_TIMEOUT, the migrations' connection too (it waited asyncpg's 60 s)."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    frozen = f"postgresql+asyncpg://postgres@127.0.0.1:{server.sockets[0].getsockname()[1]}/f"
    try:
        for args in (
            ["db", "current"],
            ["db", "upgrade"],
            ["seed", "--users", "1", "--audit-logs", "1"],
        ):
            started = time.monotonic()
            code, _, err = await fund(frozen, *args, FUND_DB_CONNECT_TIMEOUT="1")
            assert code == 1, (args, err)
            assert time.monotonic() - started < 30, args  # 60 s and more before
            assert (
                "fund: cannot reach the database (no answer within FUND_DB_CONNECT_TIMEOUT)" in err
            ), err
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_users_create_works_for_a_uid_the_system_has_no_name_for(
    settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container run as an arbitrary uid (``--user 1234``, OpenShift) has no passwd entry:
    ``getpass.getuser()`` raises KeyError there, and the command died with a traceback, no
    user made. The audit entry names the uid instead."""

    def no_passwd_entry() -> str:
        raise KeyError(f"getpwuid(): uid not found: {os.getuid()}")

    monkeypatch.setattr(getpass, "getuser", no_passwd_entry)

    user_id = await create_user(settings, "uid-only@example.com", "x" * 12, "VIEWER", None)

    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        agent = await connection.fetchval(
            "SELECT user_agent FROM audit_logs WHERE action = 'CREATE' AND resource_id = $1",
            str(user_id),
        )
    finally:
        await connection.close()
    assert agent == f"fund-cli (uid {os.getuid()}@{socket.gethostname()})"


async def test_a_data_directory_that_cannot_be_made_is_a_bad_setting(
    database_url: str, tmp_path: Path
) -> None:
    """Named, exit 2, as any bad setting: it was a bare "[Errno 20] Not a directory" line
    with exit 1, naming neither the variable nor what to fix."""
    blocker = tmp_path / "a file"
    blocker.write_text("")
    code, _, err = await asyncio.wait_for(
        fund(
            database_url,
            "serve",
            "--port",
            str(spare_port()),
            FUND_SECRET_KEY="",  # unset: the development key is made in the data directory
            FUND_DATA_DIR=str(blocker / "data"),
        ),
        timeout=120,
    )
    assert code == 2, err
    assert f"fund: FUND_DATA_DIR: cannot use {blocker / 'data'}: Not a directory" in err
    assert "Traceback" not in err
