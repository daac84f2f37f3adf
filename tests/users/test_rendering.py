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
from fund.users.repository import SHOWN
from fund.users.schemas import UserRead, UserWithAuditRead
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


async def test_a_page_with_audit_logs_is_what_pageout_renders(
    client: httpx.AsyncClient, resources: Resources, admin: Account, viewer: Account
) -> None:
    async with resources.engine.begin() as conn:
        # The viewer's own entries, with the values that render in more than one way: whole
        # and single-microsecond times, an IPv6 address, no address, nested and non-ASCII
        # details; and a soft-deleted one, which include=audit_logs leaves out.
        await conn.execute(
            text(
                "INSERT INTO audit_logs (timestamp, user_id, action, resource_type, resource_id,"
                " details, ip_address, user_agent, request_id, is_deleted) VALUES"
                " (:whole, :uid, 'UPDATE', 'user', :rid, :nested, '2001:db8::1', 'UA \"x\"',"
                "  'r1', false),"
                " (:micro, :uid, 'LOGIN', 'user', :rid, '{}', NULL, NULL, NULL, false),"
                " (:later, :uid, 'LOGIN', 'user', :rid, '{}', '10.0.0.1', NULL, NULL, true)"
            ),
            {
                "uid": viewer.id,
                "rid": str(viewer.id),
                "whole": datetime(2024, 2, 29, 12, 0, 0, tzinfo=UTC),
                "micro": datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC),
                "later": datetime(2024, 3, 1, tzinfo=UTC),
                "nested": '{"changes": {"full_name": {"old": "Zoë", "new": "Zoë \\"Q\\""}}}',
            },
        )

    response = await client.get(
        "/api/v1/users", params={"include": "audit_logs", "limit": 5}, headers=admin.headers
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    rendered = PageOut[UserWithAuditRead].model_validate_json(response.content).model_dump_json()
    assert response.content == rendered.encode()
    (viewers,) = [u for u in response.json()["items"] if u["id"] == viewer.id]
    entries = viewers["recent_audit_logs"]
    assert [e["timestamp"] for e in entries] == [
        "2024-02-29T12:00:00.000001Z",
        "2024-02-29T12:00:00Z",
    ]
    for entry in entries:  # as the single-entry route, rendered by its model, shows it
        single = await client.get(f"/api/v1/audit-logs/{entry['id']}", headers=admin.headers)
        assert single.json() == entry


def test_the_columns_read_for_users_are_the_fields_shown() -> None:
    """Pages and cache entries are built from these columns without models: a field added
    to ``UserRead`` must be read, and nothing it does not show (the hash) may be."""
    assert [column.name for column in SHOWN] == list(UserRead.model_fields)
