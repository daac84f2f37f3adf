"""Helpers for tests that run the ``fund`` command as a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

FUND = str(Path(sys.executable).parent / "fund")


def spare_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def environment_without_fund(**values: str) -> dict[str, str]:
    """This process's environment minus every ``FUND_`` variable, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUND_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(values)
    return env


def wait_until_healthy(
    process: subprocess.Popen[bytes], url: str, log: Path, *, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "fund exited early:\n" + log.read_text()[-4000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered 200:\n" + log.read_text()[-4000:]
        time.sleep(0.2)


def serve_environment(
    database_url: str, redis_url: str, data_dir: Path, **values: str
) -> dict[str, str]:
    """What a test's ``fund serve`` runs with: the test's database and Redis, the tests'
    secret, a data directory of its own, JSON logs; ``values`` add or override."""
    from tests.conftest import SECRET

    settings = {
        "FUND_ENV": "test",
        "FUND_DATABASE_URL": database_url,
        "FUND_REDIS_URL": redis_url,
        "FUND_SECRET_KEY": SECRET,
        "FUND_DATA_DIR": str(data_dir),
        "FUND_LOG_JSON": "true",
    }
    return environment_without_fund(**{**settings, **values})


def start_serve(env: dict[str, str], port: int, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``fund serve`` on ``port``, its output in ``log``, once ``/healthz`` answers."""
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 (our own command, fixed arguments)
            [FUND, "serve", "--port", str(port), *args],
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_until_healthy(process, f"http://127.0.0.1:{port}/healthz", log)
    return process
