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
