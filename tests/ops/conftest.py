"""Fixtures of the operations tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A scratch directory outside pytest's ``tmp_path``.

    As root the embedded PostgreSQL runs as another user that must traverse the path to its
    data; every pytest session resets ``/tmp/pytest-of-<user>`` to mode 0700, which would cut
    it off whenever another test run starts on the machine.
    """
    path = Path(tempfile.mkdtemp(prefix="fund-ops-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
