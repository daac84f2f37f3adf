"""``/api/v1/audit-logs/export``: the same entries, order and values as walking the pages."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import httpx

from fund.audit.repository import EXPORT_COLUMNS, FORMULA_STARTS
from tests.audit.conftest import BASE, ODD_TEXT, walk
from tests.conftest import Account

FIELDS = list(EXPORT_COLUMNS)
DETAILS = FIELDS.index("details")


FREE_TEXT = {"resource_id", "user_agent", "request_id"}


def as_csv_cell(name: str, value: Any) -> str:
    """How a JSON value of an entry reads in a CSV cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if name in FREE_TEXT and str(value).startswith(FORMULA_STARTS):
        return f"'{value}"
    return str(value)


QUERIES: tuple[dict[str, str], ...] = (
    {},
    {"include_deleted": "true"},
    {"action": "UPDATE", "since": (BASE.replace(day=15)).isoformat()},
    {"resource_type": "user", "resource_id": "2", "include_deleted": "true"},
    {"user_id": "999999"},
)


async def test_jsonl_export_equals_walking_the_pages(
    client: httpx.AsyncClient, admin: Account, trail: list[int]
) -> None:
    for query in QUERIES:
        pages = await walk(client, admin.headers, query)
        response = await client.get(
            "/api/v1/audit-logs/export", params={**query, "format": "jsonl"}, headers=admin.headers
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert 'filename="audit-logs.jsonl"' in response.headers["content-disposition"]
        lines = response.text.splitlines()
        assert [json.loads(line) for line in lines] == pages, query
        assert all(list(json.loads(line)) == FIELDS for line in lines)
    # The default format is JSON Lines.
    default = await client.get("/api/v1/audit-logs/export", headers=admin.headers)
    assert [json.loads(line) for line in default.text.splitlines()] == await walk(
        client, admin.headers, {}
    )


async def test_csv_export_equals_walking_the_pages(
    client: httpx.AsyncClient, admin: Account, trail: list[int]
) -> None:
    for query in QUERIES:
        pages = await walk(client, admin.headers, query)
        response = await client.get(
            "/api/v1/audit-logs/export", params={**query, "format": "csv"}, headers=admin.headers
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert 'filename="audit-logs.csv"' in response.headers["content-disposition"]
        header, *rows = list(csv.reader(io.StringIO(response.text, newline="")))
        assert header == FIELDS
        # Byte for byte what Python's csv module writes: minimal quoting, CRLF record ends,
        # line breaks inside quoted cells kept as they are.
        rewritten = io.StringIO(newline="")
        csv.writer(rewritten).writerows([header, *rows])
        assert response.text == rewritten.getvalue(), query
        assert len(rows) == len(pages), query
        for row, item in zip(rows, pages, strict=True):
            # details: the object as JSON text (PostgreSQL's own spacing, as in JSON Lines)
            assert json.loads(row[DETAILS]) == item["details"]
            expected = [as_csv_cell(name, item[name]) for name in FIELDS]
            assert (
                row[:DETAILS] + row[DETAILS + 1 :] == expected[:DETAILS] + expected[DETAILS + 1 :]
            )


async def test_exported_times_and_values_render_exactly_as_the_api_does(
    client: httpx.AsyncClient, admin: Account, trail: list[int]
) -> None:
    pages = await walk(client, admin.headers, {"include_deleted": "true"}, limit=100)
    jsonl = await client.get(
        "/api/v1/audit-logs/export?include_deleted=true&format=jsonl", headers=admin.headers
    )
    raw_lines = jsonl.text.splitlines()
    assert len(raw_lines) == len(pages)
    for raw, item in zip(raw_lines, pages, strict=True):
        assert json.loads(raw)["timestamp"] == item["timestamp"]
        assert f'"timestamp":"{item["timestamp"]}"' in raw  # the very characters, not only the time
        assert item["timestamp"].endswith("Z")
    assert {item["ip_address"] for item in pages} >= {"198.51.100.4", "2001:db8::1", None}
    # Both renderings met every case: whole seconds, and text to escape or quote.
    assert any(item["timestamp"].endswith(":00Z") for item in pages)
    assert ODD_TEXT in {item["user_agent"] for item in pages}


async def test_a_csv_cell_a_spreadsheet_would_run_is_guarded_and_jsonl_keeps_it(
    client: httpx.AsyncClient, admin: Account
) -> None:
    # Anyone can write these: a failed sign-in records the client's own headers.
    formula = "=cmd|' /C calc'!A0"
    failed = await client.post(
        "/api/v1/auth/token",
        data={"username": "nobody@example.com", "password": "not the password"},
        headers={"User-Agent": formula, "X-Request-ID": "-2-3"},
    )
    assert failed.status_code == 401
    query = {"action": "LOGIN_FAILED"}  # the newest first: this one

    csv_export = await client.get(
        "/api/v1/audit-logs/export", params={**query, "format": "csv"}, headers=admin.headers
    )
    jsonl_export = await client.get(
        "/api/v1/audit-logs/export", params={**query, "format": "jsonl"}, headers=admin.headers
    )

    header, *rows = list(csv.reader(io.StringIO(csv_export.text, newline="")))
    cells = dict(zip(header, rows[0], strict=True))
    assert (cells["user_agent"], cells["request_id"]) == ("'" + formula, "'-2-3")
    kept = json.loads(jsonl_export.text.splitlines()[0])
    assert (kept["user_agent"], kept["request_id"]) == (formula, "-2-3")
