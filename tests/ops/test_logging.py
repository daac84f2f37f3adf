"""Access log lines are JSON with the request's id, caller, route, status and latency,
and no password, token or hash reaches the log, whatever the request carried."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from sqlalchemy import text

from fund.deps import Resources
from fund.kit.logging import configure_logging, redact
from tests.conftest import Account

NEW_PASSWORD = "brand-new-password-9f3a1c"
WRONG_PASSWORD = "not-the-password-77e2b0"
SHORT_PASSWORD = "short-4d1"


def json_lines(err: str) -> list[dict[str, Any]]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]  # every line is JSON, not only ours


def access_line(lines: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    found = [
        line
        for line in lines
        if line.get("event") == "request" and line.get("request_id") == request_id
    ]
    assert len(found) == 1, f"one access line for {request_id}, got {found}"
    return found[0]


async def test_access_lines_are_json_with_request_user_route_status_latency(
    capsys: pytest.CaptureFixture[str], client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    capsys.readouterr()
    response = await client.get(
        f"/api/v1/users/{viewer.id}", headers={**admin.headers, "X-Request-ID": "ops-log-read-1"}
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "ops-log-read-1"
    anonymous = await client.get("/api/v1/users/me", headers={"X-Request-ID": "ops-log-anon-1"})
    assert anonymous.status_code == 401

    lines = json_lines(capsys.readouterr().err)
    read = access_line(lines, "ops-log-read-1")
    assert read["route"] == "/api/v1/users/{user_id}"
    assert read["method"] == "GET"
    assert read["status"] == 200
    assert read["user_id"] == admin.id
    assert isinstance(read["latency_ms"], float | int) and read["latency_ms"] >= 0
    assert read["level"] == "info" and "timestamp" in read
    refused = access_line(lines, "ops-log-anon-1")
    assert (refused["status"], refused["user_id"]) == (401, None)


async def test_no_password_token_or_hash_is_logged(
    capsys: pytest.CaptureFixture[str],
    client: httpx.AsyncClient,
    resources: Resources,
    admin: Account,
) -> None:
    capsys.readouterr()
    login = await client.post(
        "/api/v1/auth/token",
        data={"username": admin.user.email, "password": admin.password},
        headers={"X-Request-ID": "ops-log-login-ok"},
    )
    assert login.status_code == 200
    token = login.json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    failed = await client.post(
        "/api/v1/auth/token", data={"username": admin.user.email, "password": WRONG_PASSWORD}
    )
    assert failed.status_code == 401
    invalid = await client.post(
        "/api/v1/users",
        json={"email": "short@example.com", "password": SHORT_PASSWORD, "full_name": "S"},
        headers={**bearer, "X-Request-ID": "ops-log-invalid"},
    )
    assert invalid.status_code == 422
    assert SHORT_PASSWORD not in invalid.text
    changed = await client.patch(
        "/api/v1/users/me", json={"password": NEW_PASSWORD}, headers=bearer
    )
    assert changed.status_code == 200
    garbage = await client.get(
        "/api/v1/users/me", headers={"Authorization": "Bearer forged.token.value"}
    )
    assert garbage.status_code == 401

    err = capsys.readouterr().err
    lines = json_lines(err)
    assert access_line(lines, "ops-log-login-ok")["status"] == 200
    assert access_line(lines, "ops-log-invalid")["status"] == 422
    async with resources.sessions() as session:
        stored_hash = (
            await session.execute(
                text("SELECT hashed_password FROM users WHERE id = :id"), {"id": admin.id}
            )
        ).scalar_one()
    for secret in (
        admin.password,
        WRONG_PASSWORD,
        SHORT_PASSWORD,
        NEW_PASSWORD,
        token,
        stored_hash,
    ):
        assert secret not in err
    assert "$argon2" not in err
    assert "forged.token.value" not in err


def test_redaction_reaches_nested_and_compound_keys() -> None:
    event = {
        "event": "x",
        "password": "p1",
        "new_password": "p2",
        "details": {
            "changes": {"hashed_password": "h", "role": "ADMIN"},
            "items": [{"access_token": "t"}],
        },
        "Authorization": "Bearer t",
        "user_id": 7,
    }
    out = redact(None, "info", event)
    assert out["password"] == out["new_password"] == out["Authorization"] == "[redacted]"
    assert out["details"] == {
        "changes": {"hashed_password": "[redacted]", "role": "ADMIN"},
        "items": [{"access_token": "[redacted]"}],
    }
    assert out["user_id"] == 7


async def test_unexpected_error_is_a_json_500_with_request_id_logged_once(
    capsys: pytest.CaptureFixture[str], app: FastAPI, client: httpx.AsyncClient
) -> None:
    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/ops-test/broken", broken)
    capsys.readouterr()
    response = await client.get("/ops-test/broken", headers={"X-Request-ID": "ops-log-bug-1"})
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error"}
    assert response.headers["x-request-id"] == "ops-log-bug-1"
    assert "Traceback" not in response.text

    lines = json_lines(capsys.readouterr().err)
    errors = [line for line in lines if line.get("event") == "unhandled_error"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "ops-log-bug-1"
    assert "RuntimeError: a bug" in errors[0]["exception"]
    assert access_line(lines, "ops-log-bug-1")["status"] == 500


def test_a_line_is_written_whatever_its_values(capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON encoder (orjson) refuses some values: a log call must not raise for them,
    and what it writes is still one JSON object, secrets redacted."""
    config, root = structlog.get_config(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging(json=True)
        log = structlog.get_logger("test")
        capsys.readouterr()
        log.info("odd", big=2**70, keys={1: "int key", "api_key": "k"}, amount=Decimal("1.50"))
        log.info("plain", error=ValueError("boom"), token="t")
    finally:  # as the other tests' apps configured it
        structlog.configure(**config)
        root.handlers[:], root.level = handlers, level

    odd, plain = json_lines(capsys.readouterr().err)
    assert odd["big"] == 2**70  # past 64 bits: the standard library's encoder wrote it
    assert odd["keys"] == {"1": "int key", "api_key": "[redacted]"}
    assert odd["amount"] == "Decimal('1.50')"
    assert plain["error"] == "ValueError('boom')"
    assert plain["token"] == "[redacted]"


@pytest.mark.parametrize("as_json", [False, True], ids=["console", "json"])
def test_a_logged_traceback_shows_no_frame_locals(
    capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    """A frame's locals are where passwords and tokens live; the redaction sees an event's
    keys, not a traceback's frames. The development console's renderer would print them
    (rich's default), for our errors and for uvicorn's alike."""
    config, root = structlog.get_config(), logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def sign_in(password: str) -> None:
        raise RuntimeError("bad")

    try:
        configure_logging(json=as_json)
        capsys.readouterr()
        for log in (structlog.get_logger("test").exception, logging.getLogger("uvicorn").exception):
            try:
                sign_in(NEW_PASSWORD)
            except RuntimeError:
                log("failed")
    finally:
        structlog.configure(**config)
        root.handlers[:], root.level = handlers, level

    err = capsys.readouterr().err
    assert err.count("RuntimeError: bad") == 2, err
    assert NEW_PASSWORD not in err
