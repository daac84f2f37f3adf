"""Bad cursors on ``GET /users``: a fuzzed corpus, every one a 400 with the same body."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Iterator

import httpx
from sqlalchemy import text

from fund.deps import Resources
from fund.kit.security import derive_key
from tests.conftest import SECRET, Account

BAD_CURSOR = {"detail": "Invalid cursor"}
PAYLOAD = struct.Struct(">BBqq8s")  # the documented layout, rebuilt here independently


def signed(payload: bytes, key: bytes) -> str:
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(payload + mac).decode()


def flips(token: str) -> Iterator[str]:
    """Every single-bit change of every character, and of every decoded byte."""
    for i, char in enumerate(token):
        for bit in range(8):
            yield token[:i] + chr(ord(char) ^ (1 << bit)) + token[i + 1 :]
    raw = base64.urlsafe_b64decode(token)
    for i in range(len(raw)):
        for bit in range(8):
            changed = raw[:i] + bytes([raw[i] ^ (1 << bit)]) + raw[i + 1 :]
            yield base64.urlsafe_b64encode(changed).decode()


def reshaped(token: str) -> Iterator[str]:
    """Malformed, truncated and extended spellings."""
    yield from ("", " ", "!", "null", "0", "%ZZ", "=" * 56, "A" * 56, "A" * 10_000)
    yield from ("é" * 56, "\x00" * 56, token.swapcase(), f" {token}", f"{token} ")
    yield token.replace("-", "+").replace("_", "/")  # the same bytes, standard alphabet
    yield base64.b64encode(base64.urlsafe_b64decode(token)).decode() + "=="
    yield from (token[:n] for n in range(len(token)))
    yield from (token[n:] for n in range(1, len(token)))
    yield from (token + tail for tail in ("A", "-", "_", "=", "==", ".", "~", "....", token))
    yield base64.urlsafe_b64encode(bytes(42)).decode()  # right length, unsigned


async def _insert_users(resources: Resources, count: int, role: str) -> None:
    async with resources.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (email, full_name, hashed_password, role)"
                " SELECT lower(:role) || i || '@cursors.test', 'n', 'x', CAST(:role AS user_role)"
                " FROM generate_series(1, :count) AS i"
            ),
            {"role": role, "count": count},
        )
        await conn.execute(
            text(
                "INSERT INTO audit_logs (user_id, action, resource_type, resource_id)"
                " SELECT id, 'LOGIN', 'user', id::text FROM users"
            )
        )


async def _next_cursor(client: httpx.AsyncClient, admin: Account, path: str, **params: str) -> str:
    response = await client.get(path, params={"limit": 1, **params}, headers=admin.headers)
    assert response.status_code == 200, response.text
    cursor: str = response.json()["next_cursor"]
    assert cursor is not None
    return cursor


async def test_malformed_tampered_truncated_and_extended_cursors_are_400(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    await _insert_users(resources, 3, "VIEWER")
    token = await _next_cursor(client, admin, "/api/v1/users")
    assert (
        await client.get("/api/v1/users", params={"cursor": token}, headers=admin.headers)
    ).status_code == 200
    corpus = {*flips(token), *reshaped(token)} - {token}
    assert len(corpus) > 700
    answers: dict[int, set[str]] = {}
    for bad in sorted(corpus):
        response = await client.get(
            "/api/v1/users", params={"cursor": bad, "limit": 1}, headers=admin.headers
        )
        answers.setdefault(response.status_code, set()).add(response.text)
        assert response.status_code == 400, (bad, response.text)
        assert response.json() == BAD_CURSOR


async def test_cursors_of_other_versions_directions_keys_and_filters_are_400(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    await _insert_users(resources, 3, "VIEWER")
    await _insert_users(resources, 3, "ANALYST")
    token = await _next_cursor(client, admin, "/api/v1/users")
    raw = base64.urlsafe_b64decode(token)
    version, direction, micros, row_id, scope = PAYLOAD.unpack(raw[: PAYLOAD.size])
    cursor_key = derive_key(SECRET.encode(), "cursor")
    # The rebuilt layout is right: the same fields signed with the real key are accepted.
    assert signed(PAYLOAD.pack(version, direction, micros, row_id, scope), cursor_key) == token

    wrong_version = [
        signed(PAYLOAD.pack(v, direction, micros, row_id, scope), cursor_key) for v in (0, 2, 255)
    ]
    wrong_direction = [
        signed(PAYLOAD.pack(version, d, micros, row_id, scope), cursor_key) for d in (0, 0x41)
    ]
    other_keys = [
        signed(raw[: PAYLOAD.size], key)
        for key in (resources.token_key, derive_key(b"another secret", "cursor"))
    ]
    audit_cursor = await _next_cursor(client, admin, "/api/v1/audit-logs")
    other_filters = {
        "role=ANALYST": await _next_cursor(client, admin, "/api/v1/users", role="ANALYST"),
        "is_active": await _next_cursor(client, admin, "/api/v1/users", is_active="true"),
        "q": await _next_cursor(client, admin, "/api/v1/users", q="test"),
        "audit-logs": audit_cursor,
    }
    for bad in [*wrong_version, *wrong_direction, *other_keys, *other_filters.values()]:
        response = await client.get("/api/v1/users", params={"cursor": bad}, headers=admin.headers)
        assert response.status_code == 400, bad
        assert response.json() == BAD_CURSOR

    # Each filtered cursor fails on the unfiltered list and on other filter values too.
    for params in ({"role": "VIEWER"}, {"is_active": "false"}, {"q": "TEST"}, {"q": "tes"}):
        for bad in other_filters.values():
            response = await client.get(
                "/api/v1/users", params={**params, "cursor": bad}, headers=admin.headers
            )
            assert response.status_code == 400
    # And a users cursor is no audit-log cursor.
    response = await client.get(
        "/api/v1/audit-logs", params={"cursor": token}, headers=admin.headers
    )
    assert response.status_code == 400
    assert response.json() == BAD_CURSOR
