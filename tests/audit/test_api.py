"""``/api/v1/audit-logs``: filters, order, exact times, soft delete, roles and bad input."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx

from fund.audit.schemas import rfc3339
from fund.deps import Resources
from tests.audit.conftest import BASE, insert_entries, walk
from tests.conftest import Account
from tests.helpers import audit_rows

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?(Z|[+-]\d\d:\d\d)$")
INDIA = timezone(timedelta(hours=5, minutes=30))
FILTER_NAMES = ("user_id", "action", "resource_type", "resource_id", "since", "until")


def _matches(row: dict[str, Any], filters: dict[str, Any]) -> bool:
    if row["is_deleted"] and not filters.get("include_deleted"):
        return False
    for name, value in filters.items():
        if name == "since" and not row["timestamp"] >= value:
            return False
        if name == "until" and not row["timestamp"] < value:
            return False
        if name in {"user_id", "action", "resource_type", "resource_id"} and row[name] != value:
            return False
    return True


def expected_ids(rows: list[dict[str, Any]], filters: dict[str, Any]) -> list[int]:
    """What the trail holds for these filters, newest first: the answer worked out by hand."""
    kept = [row for row in rows if _matches(row, filters)]
    kept.sort(key=lambda row: (row["timestamp"], row["id"]), reverse=True)
    return [row["id"] for row in kept]


def as_query(filters: dict[str, Any]) -> dict[str, Any]:
    """Query values as a client writes them; times with an offset other than UTC."""
    return {
        name: value.astimezone(INDIA).isoformat()
        if isinstance(value, datetime)
        else str(value).lower()
        if isinstance(value, bool)
        else value
        for name, value in filters.items()
    }


async def test_every_filter_combination_walks_to_exactly_the_matching_entries(
    client: httpx.AsyncClient, resources: Resources, admin: Account, trail: list[int]
) -> None:
    rows = await audit_rows(resources)
    values: dict[str, Any] = {
        "user_id": admin.id,
        "action": "LOGIN",
        "resource_type": "user",
        "resource_id": "2",
        "since": BASE + timedelta(days=10),
        "until": rows[40]["timestamp"],  # an entry's exact time: it is excluded
    }
    non_empty = 0
    for size in range(len(FILTER_NAMES) + 1):
        for names in itertools.combinations(FILTER_NAMES, size):
            for include_deleted in (False, True):
                filters = {name: values[name] for name in names}
                if include_deleted:
                    filters["include_deleted"] = True
                items = await walk(client, admin.headers, as_query(filters))
                want = expected_ids(rows, filters)
                assert [item["id"] for item in items] == want, filters
                non_empty += bool(want)
    assert non_empty >= 80  # the combinations select something, so order and edges are tested


async def test_entries_come_with_every_field_and_exact_times(
    client: httpx.AsyncClient, resources: Resources, admin: Account, trail: list[int]
) -> None:
    rows = {row["id"]: row for row in await audit_rows(resources)}
    items = await walk(client, admin.headers, {"include_deleted": "true"}, limit=100)
    assert len(items) == len(rows)
    for item in items:
        row = rows[item["id"]]
        assert RFC3339.match(item["timestamp"]), item["timestamp"]
        assert datetime.fromisoformat(item["timestamp"]) == row["timestamp"]  # to the µs
        assert item["timestamp"] == rfc3339(row["timestamp"])
        assert item["details"] == row["details"]
        assert item["ip_address"] == (None if row["ip_address"] is None else str(row["ip_address"]))
        for name in ("user_id", "action", "resource_type", "resource_id", "user_agent"):
            assert item[name] == row[name]
        assert item["request_id"] == row["request_id"]
        assert item["is_deleted"] is row["is_deleted"]


async def test_since_and_until_select_exactly_the_boundary_microseconds(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    moment = datetime(2026, 5, 4, 3, 2, 1, 999_998, tzinfo=UTC)
    await insert_entries(
        resources,
        [
            {
                "timestamp": moment + timedelta(microseconds=n),
                "user_id": None,
                "action": "LOGIN_FAILED",
                "resource_type": "user",
                "resource_id": "",
                "details": {"email": f"edge{n}@example.com"},
                "ip_address": None,
                "user_agent": None,
                "request_id": None,
                "is_deleted": False,
            }
            for n in range(4)  # …998, …999, the next second's .000000, .000001
        ],
    )

    async def emails(**filters: datetime) -> list[str]:
        query = {"action": "LOGIN_FAILED", **as_query(dict(filters))}
        return [item["details"]["email"] for item in await walk(client, admin.headers, query)]

    one = timedelta(microseconds=1)
    assert await emails(since=moment + one, until=moment + 2 * one) == ["edge1@example.com"]
    assert await emails(since=moment + one) == [
        "edge3@example.com",
        "edge2@example.com",
        "edge1@example.com",
    ]
    assert await emails(until=moment + one) == ["edge0@example.com"]
    assert await emails(since=moment + 2 * one, until=moment + 2 * one) == []

    async def emails_between(since: str, until: str) -> list[str]:
        query = {"action": "LOGIN_FAILED", "since": since, "until": until}
        return [item["details"]["email"] for item in await walk(client, admin.headers, query)]

    # Finer than the stored microseconds: each bound keeps the entries at or after it.
    assert await emails_between("2026-05-04T03:02:01.9999985Z", "2026-05-04T03:02:01.9999995Z") == [
        "edge1@example.com"
    ]
    assert await emails_between(
        "2026-05-04T05:02:01.999998000+02:00", "2026-05-04T03:02:02.000000001Z"
    ) == ["edge2@example.com", "edge1@example.com", "edge0@example.com"]
    items = await walk(client, admin.headers, {"action": "LOGIN_FAILED"})
    assert [item["timestamp"] for item in items] == [
        "2026-05-04T03:02:02.000001Z",
        "2026-05-04T03:02:02Z",
        "2026-05-04T03:02:01.999999Z",
        "2026-05-04T03:02:01.999998Z",
    ]


async def test_an_entry_the_service_wrote_reads_back_to_the_microsecond(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    [row] = await audit_rows(resources, action="CREATE", resource_id=str(admin.id))
    response = await client.get(f"/api/v1/audit-logs/{row['id']}", headers=admin.headers)
    assert response.status_code == 200
    body = response.json()
    assert datetime.fromisoformat(body["timestamp"]) == row["timestamp"]
    assert (body["action"], body["resource_type"]) == ("CREATE", "user")


async def test_soft_delete_hides_keeps_and_audits_the_entry(
    client: httpx.AsyncClient, resources: Resources, admin: Account, trail: list[int]
) -> None:
    rows = {row["id"]: row for row in await audit_rows(resources)}
    target = next(i for i in trail if not rows[i]["is_deleted"])

    response = await client.delete(
        f"/api/v1/audit-logs/{target}", headers={**admin.headers, "X-Request-ID": "del-1"}
    )
    assert (response.status_code, response.content) == (204, b"")
    assert "content-type" not in response.headers

    [row] = await audit_rows(resources, id=target)
    assert row["is_deleted"] is True
    assert {k: v for k, v in row.items() if k != "is_deleted"} == {
        k: v for k, v in rows[target].items() if k != "is_deleted"
    }
    [entry] = await audit_rows(resources, resource_type="audit_log", request_id="del-1")
    assert (entry["action"], entry["resource_id"], entry["user_id"]) == (
        "DELETE",
        str(target),
        admin.id,
    )
    assert entry["details"] == {}
    assert entry["ip_address"] is not None

    hidden = await walk(client, admin.headers, {})
    assert target not in [item["id"] for item in hidden]
    assert entry["id"] in [item["id"] for item in hidden]
    shown = await walk(client, admin.headers, {"include_deleted": "true"})
    assert target in [item["id"] for item in shown]

    read = await client.get(f"/api/v1/audit-logs/{target}", headers=admin.headers)
    assert read.status_code == 200
    assert read.json()["is_deleted"] is True

    # Deleting again changes nothing and records nothing more.
    before = len(await audit_rows(resources))
    again = await client.delete(f"/api/v1/audit-logs/{target}", headers=admin.headers)
    assert again.status_code == 204
    assert len(await audit_rows(resources)) == before


async def test_unknown_entries_are_404(client: httpx.AsyncClient, admin: Account) -> None:
    missing = 2**62
    for method in ("GET", "DELETE"):
        response = await client.request(
            method, f"/api/v1/audit-logs/{missing}", headers=admin.headers
        )
        assert response.status_code == 404, method
        assert response.json() == {"detail": "Audit log entry not found"}


ROUTES = (
    ("GET", "/api/v1/audit-logs", 200),
    ("GET", "/api/v1/audit-logs/export?format=jsonl", 200),
    ("GET", "/api/v1/audit-logs/export?format=csv", 200),
    ("GET", "/api/v1/audit-logs/{id}", 200),
    ("DELETE", "/api/v1/audit-logs/{id}", 204),
)


async def test_only_admins_reach_the_trail(
    client: httpx.AsyncClient,
    resources: Resources,
    admin: Account,
    analyst: Account,
    viewer: Account,
) -> None:
    [row] = await audit_rows(resources, action="CREATE", resource_id=str(viewer.id))
    for method, path, allowed in ROUTES:
        url = path.format(id=row["id"])
        before = await audit_rows(resources)
        for account in (analyst, viewer):
            response = await client.request(method, url, headers=account.headers)
            assert response.status_code == 403, (method, path, account.user.role)
        anonymous = await client.request(method, url)
        assert anonymous.status_code == 401, (method, path)
        assert anonymous.headers["WWW-Authenticate"] == "Bearer"
        assert await audit_rows(resources) == before  # refused requests change nothing

        response = await client.request(method, url, headers=admin.headers)
        assert response.status_code == allowed, (method, path)


BAD_FILTERS = (
    "user_id=abc",
    "user_id=0",
    "user_id=99999999999999999999",
    "since=yesterday",
    "until=2026-13-01T00:00:00Z",
    "since=2026-01-01T00:00:00",  # no offset: which day is ambiguous
    "since=0001-01-01T00:00:00%2B01:00",  # before year 1 once in UTC
    # Numbers are not read as Unix time: 20260101 would silently mean 1970-08-24.
    "since=20260101",
    "until=0.5",
    "since=1764288000",
    "until=1764288000000",
    "since=2026-01-01",  # a date alone: midnight where?
    "action=HACK",
    "action=login",
    "resource_type=account",
    "resource_id=",
    "resource_id=" + "x" * 65,
    "resource_id=a%00b",  # PostgreSQL text cannot hold NUL: refused by the schema, not the database
    "include_deleted=maybe",
    "limit=0",
    "limit=101",
)


async def test_bad_filter_values_are_422(client: httpx.AsyncClient, admin: Account) -> None:
    for query in BAD_FILTERS:
        for path in ("/api/v1/audit-logs", "/api/v1/audit-logs/export"):
            if path.endswith("export") and query.startswith("limit"):
                continue
            response = await client.get(f"{path}?{query}", headers=admin.headers)
            assert response.status_code == 422, (path, query, response.text)
            assert isinstance(response.json()["detail"], list)
    for fmt in ("xml", "JSONL", "", "json"):
        response = await client.get(
            f"/api/v1/audit-logs/export?format={fmt}", headers=admin.headers
        )
        assert response.status_code == 422, fmt


async def test_malformed_or_foreign_cursors_are_400(
    client: httpx.AsyncClient, admin: Account, trail: list[int]
) -> None:
    first = await client.get(
        "/api/v1/audit-logs", params={"action": "LOGIN", "limit": 2}, headers=admin.headers
    )
    cursor = first.json()["next_cursor"]
    assert cursor is not None
    users = await client.get("/api/v1/users", params={"limit": 1}, headers=admin.headers)
    assert users.status_code == 200
    tampered = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
    cases = [
        ({"action": "LOGIN", "cursor": "not-a-cursor"}, "garbage"),
        ({"action": "LOGIN", "cursor": tampered}, "tampered"),
        ({"action": "LOGIN", "cursor": cursor + "A" * 200}, "too long"),
        ({"action": "CREATE", "cursor": cursor}, "other filters"),
        ({"cursor": cursor}, "no filters"),
        ({"action": "LOGIN", "include_deleted": "true", "cursor": cursor}, "include_deleted"),
    ]
    if users.json()["next_cursor"] is not None:
        cases.append(({"cursor": users.json()["next_cursor"]}, "the users list's"))
    for params, why in cases:
        response = await client.get("/api/v1/audit-logs", params=params, headers=admin.headers)
        assert response.status_code == 400, why
        assert response.json() == {"detail": "Invalid cursor"}
    # The same instant written with another offset is the same query: its cursor fits both.
    since_india = BASE.astimezone(INDIA).isoformat()
    since_utc = BASE.isoformat().replace("+00:00", "Z")
    india = await client.get(
        "/api/v1/audit-logs", params={"since": since_india, "limit": 2}, headers=admin.headers
    )
    india_cursor = india.json()["next_cursor"]
    assert india_cursor is not None
    utc = await client.get(
        "/api/v1/audit-logs",
        params={"since": since_utc, "limit": 2, "cursor": india_cursor},
        headers=admin.headers,
    )
    assert utc.status_code == 200
    assert utc.json()["items"][0]["id"] not in [item["id"] for item in india.json()["items"]]
