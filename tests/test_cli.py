"""The `fund users create` command as an operator meets it: output and exit codes."""

from __future__ import annotations

import asyncio
import os
import sys

from tests.conftest import SECRET
from tests.services import PostgresServer


async def fund(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "FUND_DATABASE_URL": database_url,
        "FUND_SECRET_KEY": SECRET,
        "FUND_ENV": "test",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fund",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
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

    failures = {
        "duplicate": create("ops@example.com"),
        "bad-role": create("a@example.com", role="ROOT"),
        "bad-email": create("not-an-email"),
        "short-password": create("b@example.com", password="short"),
    }
    for name, args in failures.items():
        code, out, err = await fund(database_url, *args)
        assert code == 1, name
        assert out == "", name
        assert err.startswith("fund: "), name
        assert "Traceback" not in err, name
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
    assert "--port: must be between 1 and 65535" in err
