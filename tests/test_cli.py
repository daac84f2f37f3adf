"""The `fund users create` command as an operator meets it: output and exit codes."""

from __future__ import annotations

import asyncio
import os
import sys

from tests.conftest import SECRET


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
