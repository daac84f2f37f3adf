"""``GET /audit-logs`` and ``GET /audit-logs/{id}`` render driver rows themselves: each page
must be byte for byte what ``PageOut[AuditLogRead]`` writes, each single entry what
``AuditLogRead`` writes, and each item of a page what the single entry's route answers."""

from __future__ import annotations

import httpx

from fund.audit.schemas import AuditLogRead
from fund.kit.schemas import PageOut
from tests.conftest import Account


async def test_an_audit_page_is_what_pageout_renders(
    client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    # Entries with nested, non-ASCII and escaped details, an address and a user agent.
    created = await client.post(
        "/api/v1/users",
        json={
            "email": "zoe@example.com",
            "password": "a long enough password",
            "full_name": 'Zoë "Q" \\ O\'Neil',
            "role": "ANALYST",
        },
        headers={**admin.headers, "User-Agent": 'render-test/1.0 (\\ "quoted")'},
    )
    assert created.status_code == 201
    await client.post(
        "/api/v1/auth/token", data={"username": viewer.user.email, "password": "wrong password"}
    )

    first = await client.get("/api/v1/audit-logs", params={"limit": 3}, headers=admin.headers)
    second = await client.get(
        "/api/v1/audit-logs",
        params={"limit": 3, "cursor": first.json()["next_cursor"]},
        headers=admin.headers,
    )
    for page in (first, second):
        assert page.status_code == 200
        rendered = PageOut[AuditLogRead].model_validate_json(page.content).model_dump_json()
        assert page.content == rendered.encode()
        for item in page.json()["items"]:
            single = await client.get(f"/api/v1/audit-logs/{item['id']}", headers=admin.headers)
            assert single.headers["content-type"] == "application/json"
            rendered_one = AuditLogRead.model_validate_json(single.content).model_dump_json()
            assert single.content == rendered_one.encode()
            assert single.json() == item
    actions = [item["action"] for item in first.json()["items"]]
    assert actions[:2] == ["LOGIN_FAILED", "CREATE"]
