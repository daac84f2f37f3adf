"""Login, tokens and throttling (API.md section 2)."""

from __future__ import annotations

import asyncio
import base64
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import orjson
import pytest
from sqlalchemy import text
from structlog.testing import capture_logs

from fund.auth import service as auth_service
from fund.auth.throttle import LoginThrottle
from fund.config import Settings
from fund.deps import Resources
from fund.kit import security
from fund.main import UNREADABLE_BODY_ERROR
from fund.models import Role
from fund.users.repository import UserRepository
from fund.users.service import CACHE_KIND
from tests.conftest import PASSWORD, Account, make_account
from tests.helpers import audit_rows, count_rows, until

TOKEN_URL = "/api/v1/auth/token"


async def login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(TOKEN_URL, data={"username": email, "password": password})


async def test_login_returns_a_bearer_token_that_works(
    client: httpx.AsyncClient, analyst: Account, resources: Resources
) -> None:
    response = await login(client, analyst.user.email.upper(), PASSWORD)

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    me = await client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.json()["id"] == analyst.id
    [entry] = await audit_rows(resources, action="LOGIN")
    assert entry["user_id"] == analyst.id
    assert entry["resource_type"] == "user"
    assert entry["resource_id"] == str(analyst.id)
    assert entry["details"] == {}
    assert str(entry["ip_address"]) == "203.0.113.7"


@pytest.mark.parametrize("known", [True, False])
async def test_no_database_connection_is_held_while_a_password_is_checked(
    client: httpx.AsyncClient,
    viewer: Account,
    resources: Resources,
    monkeypatch: pytest.MonkeyPatch,
    known: bool,
) -> None:
    """A burst of sign-ins (a spray of guessed emails) must not take the pool's connections
    from every other request: each check takes ~40 ms of a core, and waits its turn."""
    pool = resources.engine.sync_engine.pool
    held: list[int] = []
    check = security.verify_password_off_loop

    async def observed(password: str, hashed: str | None) -> bool:
        held.append(pool.checkedout())  # type: ignore[attr-defined]
        return await check(password, hashed)

    monkeypatch.setattr(auth_service, "verify_password_off_loop", observed)
    email = viewer.user.email if known else "nobody@example.com"
    response = await login(client, email, PASSWORD)

    assert response.status_code == (200 if known else 401)
    assert held == [0]
    # And the entry was still written, in the request's own transaction.
    assert len(await audit_rows(resources, action="LOGIN" if known else "LOGIN_FAILED")) == 1


async def test_unknown_email_wrong_password_and_deactivated_look_the_same(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    active = await make_account(resources, Role.VIEWER)
    inactive = await make_account(resources, Role.VIEWER, is_active=False)

    responses = [
        await login(client, "nobody@example.com", PASSWORD),
        await login(client, active.user.email, "wrong password 123"),
        await login(client, inactive.user.email, PASSWORD),
    ]

    assert {r.status_code for r in responses} == {401}
    assert len({r.content for r in responses}) == 1
    assert all(r.headers["www-authenticate"] == "Bearer" for r in responses)
    failed = await audit_rows(resources, action="LOGIN_FAILED")
    assert [(e["user_id"], e["resource_id"], e["details"]) for e in failed] == [
        (None, "", {"email": "nobody@example.com"}),
        (None, str(active.id), {"email": active.user.email}),
        (None, str(inactive.id), {"email": inactive.user.email}),
    ]


async def test_a_name_that_only_resembles_an_email_is_nobodys(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    account = await make_account(resources, Role.VIEWER)
    local, _, domain = account.user.email.partition("@")
    with_nul = f"{local[:2]}\x00{local[2:]}@{domain}"
    too_long = account.user.email + "x" * 400  # cut to 320 it is still no one's; not looked up

    responses = [
        await login(client, with_nul, PASSWORD),
        await login(client, too_long, PASSWORD),
        await login(client, f"  {account.user.email.upper()} ", PASSWORD),  # spaces, case: fine
    ]

    assert [r.status_code for r in responses] == [401, 401, 200]
    failed = await audit_rows(resources, action="LOGIN_FAILED")
    assert [(e["resource_id"], e["details"]) for e in failed] == [
        ("", {"email": with_nul.replace("\x00", "\ufffd")}),
        ("", {"email": too_long[:320]}),
    ]


async def test_a_failed_login_records_the_email_as_it_was_typed(
    client: httpx.AsyncClient, resources: Resources, viewer: Account
) -> None:
    """API.md: ``{"email": attempted}``. The account is still found the way sign-in finds
    it (case and surrounding spaces aside), so the entry names it as its resource."""
    typed = f"  {viewer.user.email.upper()} "
    assert (await login(client, typed, "wrong password 123")).status_code == 401
    [failed] = await audit_rows(resources, action="LOGIN_FAILED")
    assert (failed["resource_id"], failed["details"]) == (str(viewer.id), {"email": typed})


async def test_a_success_on_one_worker_clears_failures_counted_on_another(
    resources: Resources,
) -> None:
    """Two workers, two processes: each has its own throttle, and Redis is the one both see.
    Four failures on A, a success on B, then a typo on A: the right password on A is then
    checked, not refused (Redis counts one failure since the success)."""
    settings = resources.settings
    a, b = (
        LoginThrottle(
            resources.cache,
            max_failures=settings.login_max_failures,
            window_seconds=settings.login_lockout_seconds,
        )
        for _ in range(2)
    )
    email = "someone@example.com"
    for _ in range(settings.login_max_failures - 1):
        assert await a.attempt(email) == 0  # each a wrong password
    assert await b.attempt(email) == 0
    await b.succeeded(email)
    assert await a.attempt(email) == 0  # a typo
    assert await a.attempt(email) == 0  # the right password gets its check


async def test_repeated_failures_for_one_account_are_throttled(
    client: httpx.AsyncClient, viewer: Account, analyst: Account
) -> None:
    for _ in range(5):
        assert (await login(client, viewer.user.email, "wrong password 123")).status_code == 401

    with capture_logs() as logged:
        throttled = await login(client, viewer.user.email, PASSWORD)

    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["retry-after"]) <= 300
    assert "detail" in throttled.json()
    # Not an audited change, but a guess the security log shows: whose, from where.
    [line] = [entry for entry in logged if entry["event"] == "login_throttled"]
    assert (line["log_level"], line["email"], line["ip"]) == (
        "warning",
        viewer.user.email,
        "203.0.113.7",
    )
    assert line["retry_after"] == int(throttled.headers["retry-after"])
    # Per account: another account still logs in.
    assert (await login(client, analyst.user.email, PASSWORD)).status_code == 200


async def test_argon2_runs_beside_the_event_loop_not_on_it(
    client: httpx.AsyncClient, admin: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ~40 ms of CPU each: on the loop, every other request of the worker would wait for it.
    loop_thread = threading.get_ident()
    threads: list[int] = []
    for name in ("hash_password", "verify_password"):
        original = getattr(security, name)

        def recorded(*args: Any, _original: Any = original) -> Any:
            threads.append(threading.get_ident())
            return _original(*args)

        monkeypatch.setattr(security, name, recorded)

    assert (await login(client, admin.user.email, PASSWORD)).status_code == 200
    created = await client.post(
        "/api/v1/users",
        json={"email": "threaded@example.com", "password": "x" * 12, "full_name": "T"},
        headers=admin.headers,
    )
    assert created.status_code == 201
    changed = await client.patch(
        f"/api/v1/users/{created.json()['id']}", json={"password": "y" * 12}, headers=admin.headers
    )
    assert changed.status_code == 200

    assert len(threads) == 3
    assert loop_thread not in threads


async def test_a_burst_of_attempts_gets_no_more_password_checks_than_the_limit(
    client: httpx.AsyncClient, resources: Resources, viewer: Account
) -> None:
    wrong = [login(client, viewer.user.email, f"wrong password {n:03}") for n in range(20)]

    statuses = sorted(r.status_code for r in await asyncio.gather(*wrong))

    # Counted before the check, one by one: five checks (FUND_LOGIN_MAX_FAILURES), then 429s.
    assert statuses == [401] * 5 + [429] * 15
    assert len(await audit_rows(resources, action="LOGIN_FAILED")) == 5
    assert (await login(client, viewer.user.email, PASSWORD)).status_code == 429


async def test_a_successful_login_resets_the_failure_count(
    client: httpx.AsyncClient, viewer: Account
) -> None:
    for _ in range(4):
        await login(client, viewer.user.email, "wrong password 123")
    assert (await login(client, viewer.user.email, PASSWORD)).status_code == 200
    for _ in range(4):
        await login(client, viewer.user.email, "wrong password 123")
    assert (await login(client, viewer.user.email, PASSWORD)).status_code == 200


@pytest.mark.parametrize(
    "form",
    [{}, {"username": "a@example.com"}, {"password": "x"}],
    ids=["empty", "no-password", "no-username"],
)
async def test_login_form_missing_fields_is_422(
    client: httpx.AsyncClient, form: dict[str, str]
) -> None:
    assert (await client.post(TOKEN_URL, data=form)).status_code == 422


async def test_a_login_form_field_given_twice_is_422_and_records_nothing(
    client: httpx.AsyncClient, viewer: Account, admin: Account, resources: Resources
) -> None:
    """Which account was that sign-in for? The form model would take the last value."""
    form = (
        f"username={viewer.user.email}&username={admin.user.email}&password={PASSWORD}"
    ).replace("@", "%40")
    response = await client.post(
        TOKEN_URL,
        content=form.encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "repeated", "loc": ["body", "username"], "msg": "Give this field once"}
    ]
    assert await audit_rows(resources, action="LOGIN") == []


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict[str, object]) -> str:
    header = _b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return f"{header}.{_b64(orjson.dumps(claims))}."


def _bad_tokens(resources: Resources, user_id: int) -> dict[str, str]:
    now = datetime.now(UTC)
    good = {"sub": str(user_id), "iat": now, "exp": now + timedelta(minutes=5)}
    key = resources.token_key
    return {
        "garbage": "not-a-jwt",
        "empty-segments": "..",
        "forged-other-key": jwt.encode(
            good, b"another key entirely, 32 bytes!!", algorithm="HS256"
        ),
        "expired": jwt.encode(
            {**good, "iat": now - timedelta(hours=2), "exp": now - timedelta(hours=1)},
            key,
            algorithm="HS256",
        ),
        "alg-none": _unsigned({"sub": str(user_id), "iat": 0, "exp": 4102444800}),
        "other-alg-same-key": jwt.encode(good, key, algorithm="HS512"),
        "no-exp": jwt.encode({"sub": str(user_id), "iat": now}, key, algorithm="HS256"),
        "no-iat": jwt.encode({"sub": str(user_id), "exp": good["exp"]}, key, algorithm="HS256"),
        "no-sub": jwt.encode({"iat": now, "exp": good["exp"]}, key, algorithm="HS256"),
        "sub-not-a-number": jwt.encode({**good, "sub": "admin"}, key, algorithm="HS256"),
        "sub-unknown-user": jwt.encode({**good, "sub": "999999"}, key, algorithm="HS256"),
        "tampered-payload": _tamper(jwt.encode(good, key, algorithm="HS256")),
        # A good token padded: PyJWT decodes it, but a token has one spelling (RFC 7515).
        "padded-signature": jwt.encode(good, key, algorithm="HS256") + "=",
        # Signed, with a token id no token of ours has: a space would split the cached
        # account's entry, were it kept as the session of a password change.
        **{
            f"jti-{name}": jwt.encode({**good, "jti": jti}, key, algorithm="HS256")
            for name, jti in {
                "space": "a b",
                "leading-space": " lead",
                "trailing-space": "trail ",
                "nul": "\x00",
                "non-ascii": "é",
            }.items()
        },
    }


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = str(int(claims["sub"]) + 1)
    return f"{header}.{_b64(orjson.dumps(claims))}.{signature}"


# HS512 with our 32-byte HS256 key is the point of one case; PyJWT warns about its length.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_every_unacceptable_token_is_401_with_www_authenticate(
    client: httpx.AsyncClient, admin: Account, resources: Resources
) -> None:
    for name, token in _bad_tokens(resources, admin.id).items():
        response = await client.get(
            "/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"] == "Bearer", name
        assert response.json() == {"detail": "Could not validate credentials"}, name


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "bearer", "Token abc"],
)
async def test_missing_or_malformed_authorization_is_401(
    client: httpx.AsyncClient, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await client.get("/api/v1/users", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_two_authorization_headers_are_401_whichever_comes_first(
    client: httpx.AsyncClient, admin: Account
) -> None:
    """Which of two a reader takes is its guess (a proxy, an audit tool): neither is taken."""
    good = admin.headers["Authorization"]
    for pair in ([good, "Bearer junk"], ["Bearer junk", good], [good, good]):
        response = await client.get(
            "/api/v1/users/me", headers=[("Authorization", value) for value in pair]
        )
        assert response.status_code == 401, pair
        assert response.headers["www-authenticate"] == "Bearer"
    assert (await client.get("/api/v1/users/me", headers=admin.headers)).status_code == 200


async def test_a_deactivated_users_live_token_stops_at_once(
    client: httpx.AsyncClient, admin: Account, analyst: Account
) -> None:
    assert (await client.get("/api/v1/users/me", headers=analyst.headers)).status_code == 200

    deleted = await client.delete(f"/api/v1/users/{analyst.id}", headers=admin.headers)

    assert deleted.status_code == 204
    assert (await client.get("/api/v1/users/me", headers=analyst.headers)).status_code == 401


async def test_a_password_change_ends_every_other_session_of_the_account(
    client: httpx.AsyncClient, viewer: Account
) -> None:
    signed_in = await login(client, viewer.user.email, PASSWORD)
    other_session = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
    for headers in (viewer.headers, other_session):  # both good, and the account now cached
        assert (await client.get("/api/v1/users/me", headers=headers)).status_code == 200

    new_password = "a brand new passphrase"
    changed = await client.patch(
        "/api/v1/users/me", json={"password": new_password}, headers=viewer.headers
    )

    assert changed.status_code == 200
    refused = await client.get("/api/v1/users/me", headers=other_session)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    # The session the change was made in goes on.
    assert (await client.get("/api/v1/users/me", headers=viewer.headers)).status_code == 200
    assert (await login(client, viewer.user.email, PASSWORD)).status_code == 401
    fresh = await login(client, viewer.user.email, new_password)
    assert fresh.status_code == 200
    fresh_session = {"Authorization": f"Bearer {fresh.json()['access_token']}"}
    assert (await client.get("/api/v1/users/me", headers=fresh_session)).status_code == 200

    # A change made in the new session ends the one kept before.
    again = await client.patch(
        "/api/v1/users/me", json={"password": "and yet another one"}, headers=fresh_session
    )
    assert again.status_code == 200
    assert (await client.get("/api/v1/users/me", headers=viewer.headers)).status_code == 401
    assert (await client.get("/api/v1/users/me", headers=fresh_session)).status_code == 200


async def test_an_admins_password_reset_ends_the_users_sessions_not_the_admins(
    client: httpx.AsyncClient, admin: Account, analyst: Account
) -> None:
    assert (await client.get("/api/v1/users/me", headers=analyst.headers)).status_code == 200

    reset = await client.patch(
        f"/api/v1/users/{analyst.id}",
        json={"password": "reset by the administrator"},
        headers=admin.headers,
    )

    assert reset.status_code == 200
    assert (await client.get("/api/v1/users/me", headers=analyst.headers)).status_code == 401
    assert (await client.get("/api/v1/users/me", headers=admin.headers)).status_code == 200


async def test_a_kept_session_ends_with_the_next_reset(
    client: httpx.AsyncClient, admin: Account, analyst: Account
) -> None:
    own = await client.patch(
        "/api/v1/users/me", json={"password": "changed by its owner"}, headers=analyst.headers
    )
    assert own.status_code == 200
    assert (await client.get("/api/v1/users/me", headers=analyst.headers)).status_code == 200

    reset = await client.patch(
        f"/api/v1/users/{analyst.id}", json={"password": "reset by an admin"}, headers=admin.headers
    )

    assert reset.status_code == 200
    assert (await client.get("/api/v1/users/me", headers=analyst.headers)).status_code == 401


async def test_an_admin_changing_their_own_password_on_the_admin_route_stays_signed_in(
    client: httpx.AsyncClient, admin: Account
) -> None:
    other = await login(client, admin.user.email, PASSWORD)
    other_session = {"Authorization": f"Bearer {other.json()['access_token']}"}

    changed = await client.patch(
        f"/api/v1/users/{admin.id}", json={"password": "the admin's new one"}, headers=admin.headers
    )

    assert changed.status_code == 200
    assert (await client.get("/api/v1/users/me", headers=admin.headers)).status_code == 200
    assert (await client.get("/api/v1/users/me", headers=other_session)).status_code == 401


async def test_changes_other_than_the_password_keep_the_sessions(
    client: httpx.AsyncClient, admin: Account, analyst: Account
) -> None:
    renamed = await client.patch(
        "/api/v1/users/me", json={"full_name": "Still Signed In"}, headers=analyst.headers
    )
    changed = await client.patch(
        f"/api/v1/users/{analyst.id}",
        json={"email": "moved@example.com", "role": "VIEWER"},
        headers=admin.headers,
    )

    assert (renamed.status_code, changed.status_code) == (200, 200)
    me = await client.get("/api/v1/users/me", headers=analyst.headers)
    assert me.status_code == 200
    assert (me.json()["email"], me.json()["role"]) == ("moved@example.com", "VIEWER")


@pytest.mark.parametrize("deactivate", ["DELETE", "PATCH"])
async def test_an_account_activated_again_does_not_revive_its_old_tokens(
    client: httpx.AsyncClient, admin: Account, analyst: Account, deactivate: str
) -> None:
    url = f"/api/v1/users/{analyst.id}"
    if deactivate == "DELETE":
        assert (await client.delete(url, headers=admin.headers)).status_code == 204
    else:
        off = await client.patch(url, json={"is_active": False}, headers=admin.headers)
        assert off.status_code == 200

    on = await client.patch(url, json={"is_active": True}, headers=admin.headers)

    assert on.status_code == 200
    assert (await client.get("/api/v1/users/me", headers=analyst.headers)).status_code == 401
    assert (await login(client, analyst.user.email, PASSWORD)).status_code == 200


async def test_a_role_change_takes_effect_on_the_next_request(
    client: httpx.AsyncClient, admin: Account, resources: Resources
) -> None:
    second_admin = await make_account(resources, Role.ADMIN)
    assert (await client.get("/api/v1/audit-logs", headers=second_admin.headers)).status_code == 200

    demoted = await client.patch(
        f"/api/v1/users/{second_admin.id}", json={"role": "VIEWER"}, headers=admin.headers
    )

    assert demoted.status_code == 200
    assert (await client.get("/api/v1/audit-logs", headers=second_admin.headers)).status_code == 403


async def test_an_admin_change_authenticates_the_caller_once(
    client: httpx.AsyncClient, admin: Account, viewer: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fund.auth import dependencies, service

    calls: list[str | None] = []
    real = service.authenticate

    async def counted(token: str | None, **kwargs: Any) -> Any:
        calls.append(token)
        return await real(token, **kwargs)

    monkeypatch.setattr(dependencies, "authenticate", counted)
    response = await client.patch(
        f"/api/v1/users/{viewer.id}", json={"full_name": "Renamed"}, headers=admin.headers
    )
    assert response.status_code == 200
    assert len(calls) == 1  # the role check and the audit actor share one caller
    refused = await client.patch(
        f"/api/v1/users/{admin.id}", json={"full_name": "Renamed"}, headers=viewer.headers
    )
    assert refused.status_code == 403


async def test_openapi_marks_exactly_the_routes_that_need_a_token(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert set(schema["components"]["securitySchemes"]) == {"OAuth2PasswordBearer"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            needs_token = path.startswith("/api/v1/") and path != TOKEN_URL
            expected: list[dict[str, list[str]]] | None = (
                [{"OAuth2PasswordBearer": []}] if needs_token else None
            )
            assert operation.get("security") == expected, (method, path)


# The error statuses each route may answer with (besides 422), as its OpenAPI lists them.
DOCUMENTED_ERRORS = {
    ("post", "/api/v1/auth/token"): {"401", "429", "503"},
    ("get", "/api/v1/users"): {"400", "401", "403", "503"},
    ("post", "/api/v1/users"): {"401", "403", "409", "503"},
    ("get", "/api/v1/users/me"): {"401", "503"},
    ("patch", "/api/v1/users/me"): {"401", "503"},
    ("get", "/api/v1/users/{user_id}"): {"401", "403", "404", "503"},
    ("patch", "/api/v1/users/{user_id}"): {"401", "403", "404", "409", "503"},
    ("delete", "/api/v1/users/{user_id}"): {"401", "403", "404", "409", "503"},
    ("get", "/api/v1/audit-logs"): {"400", "401", "403", "503"},
    ("get", "/api/v1/audit-logs/export"): {"401", "403", "503"},
    ("get", "/api/v1/audit-logs/{entry_id}"): {"401", "403", "404", "503"},
    ("delete", "/api/v1/audit-logs/{entry_id}"): {"401", "403", "404", "503"},
    ("get", "/api/v1/stats"): {"401", "403", "503"},
    ("get", "/healthz"): set(),
    ("get", "/readyz"): {"503"},
    ("get", "/metrics"): set(),
}


async def test_openapi_documents_every_error_a_route_answers_with(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    operations = {
        (method, path): operation
        for path, by_method in schema["paths"].items()
        for method, operation in by_method.items()
    }
    assert set(operations) == set(DOCUMENTED_ERRORS)
    for route, operation in operations.items():
        errors = {s for s in operation["responses"] if s.startswith(("4", "5")) and s != "422"}
        assert errors == DOCUMENTED_ERRORS[route], route
        for status in errors - {"503"} if route[1] == "/readyz" else errors:
            body = operation["responses"][status]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/ErrorOut"}, (route, status)
    export = operations[("get", "/api/v1/audit-logs/export")]["responses"]["200"]["content"]
    assert set(export) == {"application/x-ndjson", "text/csv"}
    assert set(operations[("get", "/metrics")]["responses"]["200"]["content"]) == {"text/plain"}
    # A partial update refuses null (422): its schema must not offer null either.
    for shape in ("UserUpdate", "UserSelfUpdate"):
        for name, field in schema["components"]["schemas"][shape]["properties"].items():
            assert "anyOf" not in field and field.get("type") != "null", (shape, name)


async def test_a_body_that_cannot_be_parsed_at_all_is_a_422_like_any_bad_body(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    """API.md section 7: 400 is a bad cursor's; bad input is 422. FastAPI answers a body its
    parser refuses before reading a value (not UTF-8) with a 400 of its own."""
    before = await count_rows(resources, "users")
    garbage = b"\xff{\x01not json"
    sent = [
        ("post", "/api/v1/users", "application/json"),
        ("patch", "/api/v1/users/me", "application/json"),
        ("patch", f"/api/v1/users/{admin.id}", "application/json"),
        ("post", TOKEN_URL, "multipart/form-data; boundary=x"),
    ]
    for method, path, content_type in sent:
        response = await client.request(
            method,
            path,
            content=garbage,
            headers={**admin.headers, "content-type": content_type},
        )
        assert response.status_code == 422, (path, response.text)
        assert response.json() == {"detail": [UNREADABLE_BODY_ERROR]}
    assert await count_rows(resources, "users") == before


async def test_a_token_id_no_token_of_ours_has_cannot_be_kept_by_a_password_change(
    client: httpx.AsyncClient, viewer: Account, resources: Resources
) -> None:
    """Even signed with the key: the change is refused with the token, and the account,
    its cache entry and its other sessions stay whole."""
    now = datetime.now(UTC)
    spaced = jwt.encode(
        {"sub": str(viewer.id), "jti": "a b", "iat": now, "exp": now + timedelta(minutes=5)},
        resources.token_key,
        algorithm="HS256",
    )
    changed = await client.patch(
        "/api/v1/users/me",
        json={"password": "chosen with a forged id"},
        headers={"Authorization": f"Bearer {spaced}"},
    )

    assert changed.status_code == 401
    assert (await client.get("/api/v1/users/me", headers=viewer.headers)).status_code == 200
    assert (await login(client, viewer.user.email, PASSWORD)).status_code == 200


async def test_a_password_change_that_waited_out_a_reset_is_refused(
    client: httpx.AsyncClient, viewer: Account, resources: Resources
) -> None:
    """The caller's session is checked again once the account's row is locked: a change
    made in a session that a reset ended while it waited for the row must not choose the
    password after the reset (and keep its session)."""
    async with resources.engine.connect() as reset:
        await reset.begin()
        await reset.execute(
            text("SELECT 1 FROM users WHERE id = :id FOR UPDATE"), {"id": viewer.id}
        )
        change = asyncio.create_task(
            client.patch(
                "/api/v1/users/me",
                json={"password": "chosen by whoever holds the token"},
                headers=viewer.headers,
            )
        )
        await _until_waiting_for_a_lock(resources)
        # What an admin's reset commits: a new password, every session ended.
        await reset.execute(
            text(
                "UPDATE users SET hashed_password = :hash, token_version = token_version + 1,"
                " kept_token_id = NULL WHERE id = :id"
            ),
            {"id": viewer.id, "hash": security.hash_password("reset by an administrator")},
        )
        await reset.commit()
    await resources.cache.invalidate(CACHE_KIND, viewer.id)  # as the service's reset does

    refused = await asyncio.wait_for(change, timeout=30)

    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert (
        await login(client, viewer.user.email, "chosen by whoever holds the token")
    ).status_code == 401
    assert (await login(client, viewer.user.email, "reset by an administrator")).status_code == 200
    assert (await client.get("/api/v1/users/me", headers=viewer.headers)).status_code == 401


async def _until_waiting_for_a_lock(resources: Resources) -> None:
    await until(
        resources,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query LIKE '%FOR NO KEY UPDATE%'"
        " AND datname = current_database()",
        bool,
        what="the change waiting for the row",
    )


async def test_an_analyst_lists_users_without_their_audit_entries(
    client: httpx.AsyncClient, admin: Account, analyst: Account
) -> None:
    """The entries are the audit trail's, which only an ADMIN may read."""
    params: dict[str, str | int] = {"include": "audit_logs", "limit": 5}
    refused = await client.get("/api/v1/users", params=params, headers=analyst.headers)
    plain = await client.get("/api/v1/users", params={"limit": 5}, headers=analyst.headers)
    allowed = await client.get("/api/v1/users", params=params, headers=admin.headers)

    assert refused.status_code == 403
    assert refused.json() == {"detail": "Not allowed for your role"}
    assert plain.status_code == 200
    assert allowed.status_code == 200
    assert all("recent_audit_logs" in user for user in allowed.json()["items"])


NFC_PASSWORD = "p\u00e4ssw\u00f6rd-1234"  # "pässwörd-1234", each accent one code point
NFD_PASSWORD = "pa\u0308sswo\u0308rd-1234"  # the same, each accent a combining mark


async def test_a_password_signs_in_however_its_accents_are_encoded(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    """macOS and iOS may send an accent as a letter and a combining mark; another keyboard
    as one code point. Passwords are hashed in NFKC (NIST SP 800-63B), so both sign in."""
    assert NFD_PASSWORD != NFC_PASSWORD
    made_nfc = await make_account(resources, password=NFC_PASSWORD)
    made_nfd = await make_account(resources, password=NFD_PASSWORD)

    for account in (made_nfc, made_nfd):
        for typed in (NFC_PASSWORD, NFD_PASSWORD):
            assert (await login(client, account.user.email, typed)).status_code == 200
    fullwidth = await make_account(resources, password="\uff30\uff41\uff53\uff53-word-12")
    assert (await login(client, fullwidth.user.email, "Pass-word-12")).status_code == 200
    assert (await login(client, made_nfc.user.email, "passwörd-1234")).status_code == 401


def test_a_hash_made_before_normalisation_still_verifies_as_typed() -> None:
    legacy = security._hasher.hash(NFD_PASSWORD)  # as hash_password made it before NFKC

    assert security.verify_password(NFD_PASSWORD, legacy)
    assert not security.verify_password("pa\u0308sswo\u0308rd-1235", legacy)
    assert not security.verify_password(NFD_PASSWORD, None)


async def test_a_password_is_measured_as_it_is_hashed(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    """Twelve code points, ten characters once each accent joins its letter: too short."""
    admin = await make_account(resources, Role.ADMIN)
    decomposed = "a\u0301" * 2 + "bcdefghi"  # 10 code points in NFKC
    assert len(decomposed) == 12

    created = await client.post(
        "/api/v1/users",
        json={"email": "short@example.com", "password": decomposed, "full_name": "Short"},
        headers=admin.headers,
    )

    assert created.status_code == 422
    assert created.json()["detail"][0]["loc"] == ["body", "password"]


async def test_attempts_the_database_could_not_answer_do_not_count_towards_the_lockout(
    client: httpx.AsyncClient, settings: Settings, viewer: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user retrying through a PostgreSQL restart, as each 503's Retry-After asks, has
    failed nothing: counted before the check, such attempts are taken back (API.md section 2
    throttles repeated *failures*). They locked the account for the whole window."""
    real = UserRepository.get_credentials

    async def database_down(*_: Any) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(UserRepository, "get_credentials", database_down)
    for _ in range(settings.login_max_failures + 2):
        assert (await login(client, viewer.user.email, PASSWORD)).status_code == 503
    monkeypatch.setattr(UserRepository, "get_credentials", real)

    assert (await login(client, viewer.user.email, PASSWORD)).status_code == 200
    # Failures still add up: the wrong passwords after it are counted as before.
    for _ in range(settings.login_max_failures):
        assert (await login(client, viewer.user.email, "wrong password 123")).status_code == 401
    assert (await login(client, viewer.user.email, PASSWORD)).status_code == 429
