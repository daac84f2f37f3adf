"""The query strings of ``GET /users`` and ``GET /audit-logs``, read whole (``QueryModel``):
refused, ordered, documented and read as FastAPI's declared parameters were."""

from __future__ import annotations

import json
from typing import Any

import httpx

from fund.audit.schemas import AuditExportQuery, AuditListQuery
from fund.models import Action, ResourceType, Role
from fund.users.schemas import UserListQuery
from tests.conftest import Account


def _locs(response: httpx.Response) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [error["loc"] for error in response.json()["detail"]]


async def test_every_bad_parameter_is_reported_at_once_at_its_name(
    client: httpx.AsyncClient, admin: Account
) -> None:
    users = await client.get(
        "/api/v1/users?limit=0&role=BOSS&is_active=maybe&q=", headers=admin.headers
    )
    assert _locs(users) == [
        ["query", "limit"],
        ["query", "role"],
        ["query", "is_active"],
        ["query", "q"],
    ]
    audit = await client.get(
        "/api/v1/audit-logs?action=login&since=20260101&limit=101", headers=admin.headers
    )
    assert sorted(_locs(audit)) == [["query", "action"], ["query", "limit"], ["query", "since"]]
    for error in audit.json()["detail"]:
        assert set(error) == {"type", "loc", "msg"}  # the input is not echoed back


async def test_the_caller_is_checked_before_the_query(
    client: httpx.AsyncClient, analyst: Account, viewer: Account
) -> None:
    assert (await client.get("/api/v1/users?limit=0")).status_code == 401
    assert (await client.get("/api/v1/audit-logs?limit=0")).status_code == 401
    assert (await client.get("/api/v1/users?limit=0", headers=viewer.headers)).status_code == 403
    refused = await client.get("/api/v1/audit-logs?limit=0", headers=analyst.headers)
    assert refused.status_code == 403


async def test_a_repeated_parameter_is_refused_not_half_read(
    client: httpx.AsyncClient, admin: Account
) -> None:
    """``?action=LOGIN&action=CREATE`` is not "either": reading one of the values would
    answer a question the client did not ask, and leave out rows it expects."""
    for path, query in (
        ("/api/v1/users", "role=ADMIN&role=VIEWER&limit=5"),
        ("/api/v1/audit-logs", "action=LOGIN&limit=5&action=CREATE&limit=6"),
        ("/api/v1/audit-logs/export", "action=LOGIN&action=LOGIN"),
    ):
        response = await client.get(f"{path}?{query}", headers=admin.headers)
        assert response.status_code == 422, (path, response.text)
        names = {"role"} if path.endswith("users") else {"action", "limit"}
        if path.endswith("export"):
            names = {"action"}
        assert {tuple(e["loc"]) for e in response.json()["detail"]} == {
            ("query", name) for name in names
        }
        assert {e["msg"] for e in response.json()["detail"]} == {"Give this parameter once"}


async def test_numbers_in_the_url_are_decimal_digits_only(
    client: httpx.AsyncClient, admin: Account
) -> None:
    """pydantic's lax mode would read ``3.0``, `` 5``, ``+5`` and ``1_0`` as numbers."""
    for written in ("3.0", " 5", "5 ", "%2B5", "1_0", "0x10", "1e1"):
        for url in (
            f"/api/v1/users?limit={written}",
            f"/api/v1/audit-logs?limit={written}",
            f"/api/v1/audit-logs?user_id={written}",
            f"/api/v1/audit-logs/export?user_id={written}",
        ):
            response = await client.get(url, headers=admin.headers)
            assert response.status_code == 422, (url, response.text)
            [error] = response.json()["detail"]
            assert error["msg"] == "Input should be a whole number, in decimal digits", url
        for url in (f"/api/v1/users/{written}", f"/api/v1/audit-logs/{written}"):
            response = await client.get(url, headers=admin.headers)
            assert response.status_code == 422, (url, response.text)
    plain = await client.get(f"/api/v1/users/{admin.id}", headers=admin.headers)
    assert plain.status_code == 200
    assert (await client.get("/api/v1/users?limit=05", headers=admin.headers)).status_code == 200


async def test_an_unknown_parameter_is_refused_not_ignored(
    client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    """A misspelt filter must not answer with every row, as if it had been applied."""
    for path in ("/api/v1/users", "/api/v1/audit-logs", "/api/v1/audit-logs/export"):
        response = await client.get(f"{path}?userid={viewer.id}&offset=20", headers=admin.headers)
        assert _locs(response) == [["query", "userid"], ["query", "offset"]], path
        assert {e["msg"] for e in response.json()["detail"]} == {"Extra inputs are not permitted"}
    export_with_a_limit = await client.get(
        "/api/v1/audit-logs/export?limit=5", headers=admin.headers
    )
    assert _locs(export_with_a_limit) == [["query", "limit"]]  # an export has no pages


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines()]


async def test_openapi_documents_each_parameter_with_its_rules(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()

    def parameters(path: str) -> dict[str, dict[str, Any]]:
        # FastAPI documents a 422 only where it reads the parameters itself.
        refused = schema["paths"][path]["get"]["responses"]["422"]["content"]["application/json"]
        assert refused["schema"] == {"$ref": "#/components/schemas/HTTPValidationError"}
        documented = schema["paths"][path]["get"]["parameters"]
        assert all(p["in"] == "query" and p["required"] is False for p in documented)
        return {p["name"]: p for p in documented}

    users = parameters("/api/v1/users")
    assert list(users) == list(UserListQuery.model_fields)
    assert {"minimum": 1, "maximum": 100, "default": 20}.items() <= users["limit"]["schema"].items()
    assert users["limit"]["description"] == "Page size, 1..100"
    assert users["cursor"]["schema"]["minLength"] == 1
    assert {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[^\\x00]*$"} in users[
        "q"
    ]["schema"]["anyOf"]
    assert users["role"]["schema"]["anyOf"][0]["enum"] == [role.value for role in Role]
    assert users["include"]["schema"]["anyOf"][0]["const"] == "audit_logs"

    audit = parameters("/api/v1/audit-logs")
    assert list(audit) == list(AuditListQuery.model_fields)
    assert list(audit)[-2:] == ["limit", "cursor"]
    assert audit["action"]["schema"]["anyOf"][0]["enum"] == [a.value for a in Action]
    assert audit["resource_type"]["schema"]["anyOf"][0]["enum"] == [t.value for t in ResourceType]
    assert {"type": "string", "format": "date-time"} in audit["since"]["schema"]["anyOf"]
    exported = parameters("/api/v1/audit-logs/export")
    assert list(exported) == list(AuditExportQuery.model_fields)
    assert exported["format"]["schema"]["enum"] == ["jsonl", "csv"]
    assert exported["format"]["schema"]["default"] == "jsonl"
    assert "$defs" not in str(users) + str(audit) + str(exported)  # no dangling references
