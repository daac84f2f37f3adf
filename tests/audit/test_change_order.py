"""The trail shows one resource's changes in the order they were applied.

A change's transaction begins before it waits for its row's lock, so of two concurrent
changes the one that began first can be applied second. Entries are stamped when they
are written (``clock_timestamp()``, migration 010), after the change and any wait, not
when their transaction began: read newest first, each entry's ``old`` is the ``new`` of
the one below it, and the user's ``updated_at`` never goes back.
"""

from __future__ import annotations

from datetime import datetime

import httpx
from sqlalchemy import text

from fund.audit.service import Actor
from fund.db import UnitOfWork
from fund.deps import Resources
from fund.users.schemas import UserUpdate
from fund.users.service import UserService
from tests.audit.conftest import walk
from tests.conftest import Account


async def test_a_change_that_began_first_but_was_applied_last_is_the_newest_entry(
    client: httpx.AsyncClient, resources: Resources, admin: Account, viewer: Account
) -> None:
    path = f"/api/v1/users/{viewer.id}"
    async with UnitOfWork(resources.sessions) as work:
        # This change's transaction begins here...
        began = (await work.session.execute(text("SELECT now()"))).scalar_one()
        # ...another request renames the user meanwhile, and commits first...
        first = await client.patch(path, json={"full_name": "Applied First"}, headers=admin.headers)
        assert first.status_code == 200, first.text
        # ...and this change, applied after it, renames the user again.
        users = UserService(work, resources.cache, resources.cursors, cache_ttl=300)
        await users.update(
            Actor(admin.id, None, "tests", None), viewer.id, UserUpdate(full_name="Applied Last")
        )
        await work.commit()

    entries = await walk(
        client,
        admin.headers,
        {"resource_type": "user", "resource_id": str(viewer.id), "action": "UPDATE"},
    )
    names = [entry["details"]["changes"]["full_name"] for entry in entries]
    assert names == [  # newest first: each old is the new of the entry below it
        {"old": "Applied First", "new": "Applied Last"},
        {"old": viewer.user.full_name, "new": "Applied First"},
    ]
    now = (await client.get(path, headers=admin.headers)).json()
    assert now["full_name"] == "Applied Last"
    assert _at(now["updated_at"]) > _at(first.json()["updated_at"])  # it never goes back
    assert _at(entries[0]["timestamp"]) > _at(entries[1]["timestamp"]) > began


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)
