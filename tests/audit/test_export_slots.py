"""A worker streams a bounded number of audit exports at once (``Settings.export_slots``).

Each export holds a pooled connection for as long as it streams. Without a bound, a few
slow downloads would take every connection, and every other request of the worker would
wait for one and fail with 503. One export more than the slots waits for a turn (up to
``FUND_DB_POOL_TIMEOUT``), then gets its own 503, with ``Retry-After``; the rest of the
API goes on answering meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message

from fund.audit import endpoints as audit_endpoints
from fund.deps import Resources
from fund.kit.slots import Slots
from tests.audit.test_export_interrupted import fill, no_copy_left
from tests.conftest import Account

EXPORT = "/api/v1/audit-logs/export"


def export_scope(admin: Account) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": EXPORT,
        "raw_path": EXPORT.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"authorization", admin.headers["Authorization"].encode()),
        ],
        "client": ("203.0.113.9", 40000),
        "server": ("test", 80),
    }


class StalledReader:
    """A client that takes the first chunk of an export, then reads nothing until let go."""

    def __init__(self, app: FastAPI, admin: Account) -> None:
        self.reading = asyncio.Event()
        self.let_go = asyncio.Event()
        self.status: int | None = None
        self.task = asyncio.create_task(app(export_scope(admin), self._receive, self._send))

    async def _receive(self) -> Message:
        await asyncio.Event().wait()  # sends nothing more, and stays
        raise AssertionError

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.reading.set()
            await self.let_go.wait()

    async def finish(self) -> None:
        self.let_go.set()
        await asyncio.wait_for(self.task, timeout=60)


async def test_an_export_beyond_the_slots_gets_503_while_the_api_answers(
    app: FastAPI, client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    await fill(resources, 20_000)
    resources.export_slots = Slots(1, wait=0.2)
    stalled = StalledReader(app, admin)
    await asyncio.wait_for(stalled.reading.wait(), timeout=30)
    assert resources.export_slots.held == 1

    refused = await client.get(EXPORT, headers=admin.headers)
    page = await client.get("/api/v1/audit-logs?limit=5", headers=admin.headers)

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert refused.json() == {"detail": "Too many audit exports in progress; try again later"}
    assert page.status_code == 200  # the worker's other requests still get connections
    await stalled.finish()
    assert stalled.status == 200
    assert resources.export_slots.held == 0
    again = await client.get(EXPORT, headers=admin.headers)
    assert again.status_code == 200
    assert again.text.count("\n") == 20_000 + 1  # every entry (the admin's CREATE too)
    assert resources.export_slots.held == 0


async def test_an_export_waits_for_a_turn_that_comes_in_time(
    app: FastAPI, client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    await fill(resources, 20_000)
    resources.export_slots = Slots(1, wait=30)
    stalled = StalledReader(app, admin)
    await asyncio.wait_for(stalled.reading.wait(), timeout=30)

    waiting = asyncio.create_task(client.get(EXPORT, headers=admin.headers))
    while resources.export_slots.waiting == 0:  # until it waits for its turn
        assert not waiting.done(), waiting.result().text  # never served before its turn
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # a turn that is not there stays not there
    assert not waiting.done() and resources.export_slots.waiting == 1
    await stalled.finish()
    served = await asyncio.wait_for(waiting, timeout=60)

    assert served.status_code == 200
    assert served.text.count("\n") == 20_000 + 1
    assert resources.export_slots.held == 0


def test_half_the_pool_by_default(settings: Any) -> None:
    assert settings.db_pool_size == 5
    assert settings.export_slots == 2
    assert settings.model_copy(update={"exports_per_worker": 4}).export_slots == 4


async def test_a_client_that_stops_reading_is_let_go_and_its_turn_comes_back(
    app: FastAPI,
    client: httpx.AsyncClient,
    resources: Resources,
    admin: Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that takes the first chunk and then nothing would otherwise hold its turn,
    its COPY and its connection until the export's one-hour limit."""
    monkeypatch.setattr(audit_endpoints, "EXPORT_STALL_SECONDS", 0.3)
    await fill(resources, 20_000)
    resources.export_slots = Slots(1, wait=0.2)
    stalled = StalledReader(app, admin)  # never lets go by itself

    await asyncio.wait_for(stalled.task, timeout=30)  # the export ended, the client let go

    assert stalled.status == 200
    assert resources.export_slots.held == 0
    assert await no_copy_left(resources)
    again = await client.get(EXPORT, headers=admin.headers)
    assert again.status_code == 200
    assert again.text.count("\n") == 20_000 + 1
