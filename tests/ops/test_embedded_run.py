"""``make run`` on a fresh machine: ``fund serve`` with no database configured starts an
embedded PostgreSQL, migrates it, prints the first ADMIN's password, serves, and on Ctrl-C
stops everything it started; so does a closed terminal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from tests.ops.processes import FUND, environment_without_fund, spare_port, wait_until_healthy


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(signal.SIGINT, id="ctrl-c"),
        # The terminal closed: the embedded PostgreSQL must not outlive it either.
        pytest.param(signal.SIGHUP, id="hang-up"),
    ],
)
def test_fund_serve_on_a_fresh_machine_then_stopped(
    private_dir: Path, redis_url: str, stop: signal.Signals
) -> None:
    data_dir = private_dir / "state"
    port = spare_port()
    base = f"http://127.0.0.1:{port}"
    log = private_dir / "serve.log"
    env = environment_without_fund(
        FUND_ENV="development", FUND_DATA_DIR=str(data_dir), FUND_REDIS_URL=redis_url
    )
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 (our own command, fixed arguments)
            [FUND, "serve", "--port", str(port)],
            env=env,
            cwd=private_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    postmaster: psutil.Process | None = None
    try:
        wait_until_healthy(process, f"{base}/readyz", log)
        output = log.read_text()
        found = re.search(r"email:\s+(\S+)\s+password:\s+(\S+)", output)
        assert found, output[-4000:]
        email, password = found.groups()
        assert (data_dir / "postgres" / "PG_VERSION").exists()
        postmaster = psutil.Process(
            int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        )
        assert postmaster.is_running()

        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.json() == {"status": "ok", "database": "ok", "cache": "ok"}
        login = httpx.post(
            f"{base}/api/v1/auth/token", data={"username": email, "password": password}, timeout=30
        )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        me = httpx.get(
            f"{base}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert (me.status_code, me.json()["role"]) == (200, "ADMIN")
        assert httpx.get(f"{base}/docs", timeout=10).status_code == 200

        os.killpg(process.pid, stop)  # what Ctrl-C or a hang-up sends to the foreground job
        code = process.wait(90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    log_text = log.read_text()
    assert code == 0, log_text[-4000:]
    assert "Traceback" not in log_text, log_text[-4000:]
    assert postmaster is not None
    _, alive = psutil.wait_procs([postmaster], timeout=30)
    assert not alive, "the embedded PostgreSQL outlived `fund serve`"
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(data_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftovers
