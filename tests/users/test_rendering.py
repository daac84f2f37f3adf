"""Reads that skip the models on the way out still answer exactly what the schemas write.

``GET /users`` renders driver rows with orjson and ``GET /users/{id}`` and ``GET /stats``
send the cached JSON as it is; each body must be byte for byte what pydantic renders
from the same data, including the timestamps' edge cases.
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from sqlalchemy import text

from fund.deps import Resources
from fund.kit.schemas import PageOut
from fund.stats.schemas import StatsOut
from fund.users.schemas import UserRead
from tests.conftest import Account


async def test_a_users_page_is_what_pageout_renders(
    client: httpx.AsyncClient, resources: Resources, admin: Account, viewer: Account
) -> None:
    async with resources.engine.begin() as conn:
        # A whole second (pydantic leaves the fraction out), a single microsecond, a name
        # that needs escaping, and a deactivated user.
        await conn.execute(
            text(
                "INSERT INTO users (email, full_name, hashed_password, role, is_active,"
                " created_at, updated_at) VALUES"
                " ('whole@render.test', 'Zoë \"Q\" O''Neil', 'x', 'ANALYST', true, :whole, :whole),"
                " ('micro@render.test', E'tab\\there', 'x', 'VIEWER', false, :micro, :micro)"
            ),
            {
                "whole": datetime(2024, 2, 29, 12, 0, 0, tzinfo=UTC),
                "micro": datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC),
            },
        )

    pages = [
        await client.get("/api/v1/users", params={"limit": 2}, headers=admin.headers),
    ]
    cursor = pages[0].json()["next_cursor"]
    pages.append(
        await client.get(
            "/api/v1/users", params={"limit": 2, "cursor": cursor}, headers=admin.headers
        )
    )
    for response in pages:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        rendered = PageOut[UserRead].model_validate_json(response.content).model_dump_json()
        assert response.content == rendered.encode()
    shown = {u["email"] for page in pages for u in page.json()["items"]}
    assert {"whole@render.test", "micro@render.test"} <= shown


async def test_a_cached_user_is_sent_as_userread_renders_it(
    client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    miss = await client.get(f"/api/v1/users/{viewer.id}", headers=admin.headers)
    hit = await client.get(f"/api/v1/users/{viewer.id}", headers=admin.headers)

    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("miss", "hit")
    for response in (miss, hit):
        assert response.headers["content-type"] == "application/json"
        assert response.content == viewer.user.model_dump_json().encode()


async def test_cached_stats_are_sent_as_statsout_renders_them(
    client: httpx.AsyncClient, admin: Account
) -> None:
    for _ in range(2):
        response = await client.get("/api/v1/stats", headers=admin.headers)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        rendered = StatsOut.model_validate_json(response.content).model_dump_json()
        assert response.content == rendered.encode()
