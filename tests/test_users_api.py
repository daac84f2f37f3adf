"""Users API (API.md section 3), the role matrix (section 2) and the audit entry of every change."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from fund.db import UnitOfWork
from fund.deps import Resources
from fund.errors import LastAdmin
from fund.models import Role
from fund.users.repository import ADMIN_REMOVAL_LOCK, UserRepository
from tests.conftest import PASSWORD, Account, make_account
from tests.helpers import audit_rows, count_rows, until

USERS = "/api/v1/users"
FORBIDDEN_KEYS = {"password", "hashed_password"}


def new_user(**overrides: Any) -> dict[str, Any]:
    return {
        "email": "new.person@example.com",
        "password": "a long enough password",
        "full_name": "New Person",
        "role": "ANALYST",
        **overrides,
    }


# -- the role matrix -----------------------------------------------------------------------------

ROLES = (Role.ADMIN, Role.ANALYST, Role.VIEWER)
# (method, path template, body, expected status for ADMIN, ANALYST, VIEWER). "{other}" is a user
# that is not the caller; "{self}" the caller.
MATRIX: list[tuple[str, str, dict[str, Any] | None, tuple[int, int, int]]] = [
    ("GET", "/api/v1/users", None, (200, 200, 403)),
    ("GET", "/api/v1/users/{other}", None, (200, 200, 403)),
    ("GET", "/api/v1/users/{self}", None, (200, 200, 200)),
    ("GET", "/api/v1/users/me", None, (200, 200, 200)),
    ("PATCH", "/api/v1/users/me", {"full_name": "Renamed"}, (200, 200, 200)),
    ("POST", "/api/v1/users", new_user(), (201, 403, 403)),
    ("PATCH", "/api/v1/users/{other}", {"full_name": "Changed"}, (200, 403, 403)),
    ("DELETE", "/api/v1/users/{other}", None, (204, 403, 403)),
    ("GET", "/api/v1/audit-logs", None, (200, 403, 403)),
    ("GET", "/api/v1/audit-logs/{entry}", None, (200, 403, 403)),
    ("GET", "/api/v1/audit-logs/export", None, (200, 403, 403)),
    ("DELETE", "/api/v1/audit-logs/{entry}", None, (204, 403, 403)),
    ("GET", "/api/v1/stats", None, (200, 200, 403)),
]


async def matrix_target(
    resources: Resources, role: Role, path: str
) -> tuple[Account, Account, str]:
    """A caller of ``role``, another (VIEWER) account, and ``path`` for them: ``{other}``,
    ``{self}`` and ``{entry}`` (the other account's creation entry) filled in."""
    # Two admins, so that deactivating "other" is never refused as the last admin's.
    await make_account(resources, Role.ADMIN)
    caller = await make_account(resources, role)
    other = await make_account(resources, Role.VIEWER)
    [entry] = await audit_rows(resources, resource_id=str(other.id))
    return caller, other, path.format(other=other.id, self=caller.id, entry=entry["id"])


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX]
)
@pytest.mark.parametrize("role", ROLES, ids=[r.value for r in ROLES])
async def test_role_matrix(
    client: httpx.AsyncClient,
    resources: Resources,
    role: Role,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    expected: tuple[int, int, int],
) -> None:
    caller, _, url = await matrix_target(resources, role, path)

    response = await client.request(method, url, json=body, headers=caller.headers)

    assert response.status_code == expected[ROLES.index(role)], response.text
    assert (await client.request(method, url, json=body)).status_code == 401


LISTS = ("/api/v1/users", "/api/v1/audit-logs", "/api/v1/audit-logs/export")
NO_QUERY = [row for row in MATRIX if (row[0], row[1]) not in {("GET", path) for path in LISTS}]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), NO_QUERY, ids=[f"{m} {p}" for m, p, _, _ in NO_QUERY]
)
async def test_a_query_parameter_a_route_does_not_take_is_refused_and_nothing_happens(
    client: httpx.AsyncClient,
    resources: Resources,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    expected: tuple[int, int, int],
) -> None:
    caller, other, url = await matrix_target(resources, Role.ADMIN, path)
    url += "?dry_run=true"
    users_before = (await client.get(f"{USERS}/{other.id}", headers=caller.headers)).json()
    entries_before = await count_rows(resources, "audit_logs")

    response = await client.request(method, url, json=body, headers=caller.headers)

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "dry_run"]
    assert (await client.get(f"{USERS}/{other.id}", headers=caller.headers)).json() == users_before
    assert await count_rows(resources, "audit_logs") == entries_before
    assert len(await audit_rows(resources, resource_id=str(other.id))) == 1  # its creation
    # The caller is checked first, as on the lists.
    assert (await client.request(method, url, json=body)).status_code == 401


async def test_head_with_a_query_parameter_is_refused_too(
    client: httpx.AsyncClient, admin: Account
) -> None:
    response = await client.head("/api/v1/users/me?verbose=1", headers=admin.headers)
    assert (response.status_code, response.content) == (422, b"")


async def test_sign_in_with_a_query_parameter_is_refused_and_not_recorded(
    client: httpx.AsyncClient, admin: Account, resources: Resources
) -> None:
    entries_before = await count_rows(resources, "audit_logs")
    response = await client.post(
        "/api/v1/auth/token?remember=1",
        data={"username": admin.user.email, "password": PASSWORD},
    )
    assert response.status_code == 422
    assert await count_rows(resources, "audit_logs") == entries_before


# -- create --------------------------------------------------------------------------------------


async def test_create_stores_email_lower_case_and_returns_no_secret(
    client: httpx.AsyncClient, admin: Account
) -> None:
    response = await client.post(
        USERS, json=new_user(email="Mixed.Case@Example.COM"), headers=admin.headers
    )

    assert response.status_code == 201
    body = response.json()
    assert body["email"] == "mixed.case@example.com"
    assert set(body) == {
        "id",
        "email",
        "full_name",
        "role",
        "is_active",
        "created_at",
        "updated_at",
    }
    assert body["created_at"].endswith(("Z", "+00:00"))
    assert body["role"] == "ANALYST"
    assert body["is_active"] is True


async def test_create_defaults_to_an_active_viewer(
    client: httpx.AsyncClient, admin: Account
) -> None:
    data = new_user()
    del data["role"]
    body = (await client.post(USERS, json=data, headers=admin.headers)).json()
    assert (body["role"], body["is_active"]) == ("VIEWER", True)


async def test_names_and_addresses_in_any_script_are_kept_in_one_form(
    client: httpx.AsyncClient, admin: Account
) -> None:
    made = await client.post(
        USERS,
        json=new_user(email="Jose\u0301@Exemple.fr", full_name="Jose\u0301 Nin\u0303o"),
        headers=admin.headers,
    )
    cyrillic = await client.post(
        USERS,
        json=new_user(email="\u043e\u043b\u044f@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444"),
        headers=admin.headers,
    )

    joined = await client.post(
        USERS,
        json=new_user(email=" Mehrdad@Example.com ", full_name="Mehr\u200cdad Ahmadi"),
        headers=admin.headers,
    )

    assert made.status_code == cyrillic.status_code == joined.status_code == 201, (
        made.text,
        cyrillic.text,
        joined.text,
    )
    assert (made.json()["email"], made.json()["full_name"]) == ("josé@exemple.fr", "José Niño")
    assert cyrillic.json()["email"] == "оля@пример.рф"
    # Spaces around an address are trimmed; the joiner a Persian name needs is kept.
    assert joined.json()["email"] == "mehrdad@example.com"
    assert joined.json()["full_name"] == "Mehr\u200cdad Ahmadi"
    # The address signs in however its letters are typed.
    for typed in (" JOSÉ@exemple.fr ", "jose\u0301@exemple.fr", "josé@\uff45xemple.fr"):
        token = await client.post(
            "/api/v1/auth/token", data={"username": typed, "password": new_user()["password"]}
        )
        assert token.status_code == 200, (typed, token.text)


@pytest.mark.parametrize(
    ("full_name", "term"),
    [
        # Python lowers a word-final Σ to a final sigma where PostgreSQL gives the medial one,
        # and İ to i plus a combining dot where PostgreSQL gives i: lower the term as the column.
        ("ΝΙΚΟΣ Παπαδόπουλος", "ΝΙΚΟΣ"),
        ("Ayşe İSTANBULLU", "İSTANBUL"),
        ("Zoë O'Brien", "zoë o'b"),
        # One ë, typed as e and a combining diaeresis on one side and as one letter on the
        # other: names and terms are both kept in NFC.
        ("Zoe\u0308 Decomposed", "zoë d"),
        ("Zoë Composed", "zoe\u0308 c"),
    ],
)
async def test_a_search_term_typed_as_the_name_is_stored_finds_it(
    client: httpx.AsyncClient, admin: Account, full_name: str, term: str
) -> None:
    made = await client.post(USERS, json=new_user(full_name=full_name), headers=admin.headers)
    assert made.status_code == 201

    found = await client.get(USERS, params={"q": term}, headers=admin.headers)

    assert found.status_code == 200
    assert [user["id"] for user in found.json()["items"]] == [made.json()["id"]]


async def test_the_longest_address_is_taken_with_spaces_around_it(
    client: httpx.AsyncClient, admin: Account
) -> None:
    """Spaces around an address are dropped, and only then is its length (254) counted:
    a full-length address pasted with a space was refused as too long."""
    longest = "a" * 64 + "@" + ".".join(["b" * 63, "c" * 63, "d" * 53]) + ".example"
    assert len(longest) == 254

    response = await client.post(USERS, json=new_user(email=f"  {longest} "), headers=admin.headers)
    too_long = await client.post(USERS, json=new_user(email="a" + longest), headers=admin.headers)

    assert response.status_code == 201, response.text
    assert response.json()["email"] == longest
    assert too_long.status_code == 422


@pytest.mark.parametrize("email", ["dup@example.com", "DUP@example.com", "Dup@Example.Com"])
async def test_a_duplicate_email_in_any_case_is_409(
    client: httpx.AsyncClient, admin: Account, resources: Resources, email: str
) -> None:
    first = await client.post(USERS, json=new_user(email="dup@example.com"), headers=admin.headers)
    assert first.status_code == 201
    entries_before = len(await audit_rows(resources))

    again = await client.post(USERS, json=new_user(email=email), headers=admin.headers)

    assert again.status_code == 409
    assert again.json() == {"detail": "A user with this email already exists"}
    assert len(await audit_rows(resources)) == entries_before


BAD_CREATES: dict[str, Any] = {
    "short-password": new_user(password="11 chars..."),
    "long-password": new_user(password="x" * 257),
    "blank-password": new_user(password=" " * 12),
    "blank-password-of-tabs-and-newlines": new_user(password="\t\n" * 8),
    "password-of-nuls": new_user(password="\x00" * 12),
    "password-of-zero-width-spaces": new_user(password="\u200b" * 12),
    "password-with-a-nul": new_user(password="a long enough\x00password"),
    "bad-email": new_user(email="not-an-email"),
    "email-with-spaces": new_user(email="a b@example.com"),
    "unknown-role": new_user(role="ROOT"),
    "lower-case-role": new_user(role="admin"),
    "unknown-field": new_user(is_superuser=True),
    "hashed-password-field": new_user(hashed_password="$argon2id$..."),
    "id-field": new_user(id=1),
    "missing-email": {k: v for k, v in new_user().items() if k != "email"},
    "missing-password": {k: v for k, v in new_user().items() if k != "password"},
    "empty-full-name": new_user(full_name="   "),
    "full-name-too-long": new_user(full_name="x" * 201),
    "full-name-with-an-escape": new_user(full_name="Bad \x1b[31mred"),
    "full-name-with-a-newline": new_user(full_name="Two\nlines"),
    "full-name-with-a-c1-control": new_user(full_name="Odd\x85name"),
    "full-name-with-a-direction-override": new_user(full_name="Ann \u202eeznerol"),
    "full-name-with-a-line-separator": new_user(full_name="Two\u2028lines"),
    "full-name-only-a-zero-width-space": new_user(full_name="\u200b"),
    "full-name-with-a-private-use-character": new_user(full_name="Ann \ue000"),
    "full-name-of-punctuation-only": new_user(full_name="-- . --"),
    "email-too-long-before-the-at": new_user(email="a" * 65 + "@example.com"),
    "email-too-long": new_user(email="a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63),
    "email-with-a-display-name": new_user(email="Someone <someone@example.com>"),
    "email-mixing-cyrillic-into-latin": new_user(email="\u0430dmin@example.com"),
    "email-domain-mixing-cyrillic-into-latin": new_user(email="admin@ex\u0430mple.com"),
    "email-with-fullwidth-letters": new_user(email="\uff41dmin@example.com"),
    "email-mixing-greek-into-latin": new_user(email="r\u03bfot@example.com"),
    # U+0958 is two code points in NFC: 200 of them are 400, over the column's 200.
    "full-name-too-long-once-in-nfc": new_user(full_name="\u0958" * 200),
    "is-active-not-bool": new_user(is_active="maybe"),
    # JSON has booleans: a number or a string for one is a client's bug, not a value.
    "is-active-zero": new_user(is_active=0),
    "is-active-string": new_user(is_active="false"),
    "email-not-string": new_user(email=["a@example.com"]),
    "null-email": new_user(email=None),
    "array-body": [new_user()],
    "string-body": "hello",
    "number-body": 42,
}


@pytest.mark.parametrize("body", BAD_CREATES.values(), ids=BAD_CREATES.keys())
async def test_bad_create_bodies_are_422_and_write_nothing(
    client: httpx.AsyncClient, admin: Account, resources: Resources, body: Any
) -> None:
    users_before = await count_rows(resources, "users")
    entries_before = await count_rows(resources, "audit_logs")

    response = await client.post(USERS, json=body, headers=admin.headers)

    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert "11 chars..." not in response.text  # inputs are not echoed back
    assert "Value error" not in response.text  # pydantic's prefix says nothing to a reader
    assert await count_rows(resources, "users") == users_before
    assert await count_rows(resources, "audit_logs") == entries_before


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b'{"email": "a@example.com"', "application/json"),
        (b"email=a@example.com", "application/x-www-form-urlencoded"),
    ],
    ids=["broken", "empty", "binary", "truncated", "form"],
)
async def test_malformed_bodies_are_4xx_never_500(
    client: httpx.AsyncClient, admin: Account, content: bytes, content_type: str
) -> None:
    response = await client.post(
        USERS, content=content, headers={**admin.headers, "Content-Type": content_type}
    )
    assert response.status_code == 422  # not even text, or not the schema: bad input alike
    assert isinstance(response.json()["detail"], list)


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        (
            "POST",
            USERS,
            b'{"email": "twice@example.com", "password": "long-enough-pass",'
            b' "full_name": "Twice", "role": "VIEWER", "role": "ADMIN"}',
        ),
        ("PATCH", "/api/v1/users/{viewer}", b'{"role": "VIEWER", "role": "ADMIN"}'),
        ("PATCH", "/api/v1/users/me", b'{"full_name": "A", "full_name": "B"}'),
        (
            "POST",
            USERS,
            b'{"email": "twice@example.com", "password": "long-enough-pass",'
            b' "full_name": "Twice", "x": {"a": 1, "a": 2}}',
        ),
    ],
    ids=["create", "patch", "self-update", "nested"],
)
async def test_a_json_key_given_twice_is_422_and_changes_nothing(
    client: httpx.AsyncClient,
    admin: Account,
    viewer: Account,
    resources: Resources,
    method: str,
    path: str,
    content: bytes,
) -> None:
    """Python's parser keeps the last of two ``role`` keys; a proxy or an audit tool that
    reads the same bytes may keep the first. Refused, as a repeated form field is."""
    users_before = await count_rows(resources, "users")
    entries_before = await count_rows(resources, "audit_logs")

    response = await client.request(
        method,
        path.format(viewer=viewer.id),
        content=content,
        headers={**admin.headers, "Content-Type": "application/json"},
    )

    assert response.status_code == 422, response.text
    repeated = [e for e in response.json()["detail"] if e["type"] == "repeated"]
    assert [e["msg"] for e in repeated] == ["Give this field once"]
    assert await count_rows(resources, "users") == users_before
    assert await count_rows(resources, "audit_logs") == entries_before
    me = await client.get(f"/api/v1/users/{viewer.id}", headers=admin.headers)
    assert me.json()["role"] == "VIEWER"


# -- read ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/users/999999", 404),
        ("/api/v1/users/abc", 422),
        ("/api/v1/users/0", 422),
        ("/api/v1/users/-1", 422),
        ("/api/v1/users/99999999999999999999999", 422),
        ("/api/v1/users/1.5", 422),
    ],
)
async def test_unknown_and_malformed_ids(
    client: httpx.AsyncClient, admin: Account, path: str, status: int
) -> None:
    response = await client.get(path, headers=admin.headers)
    assert response.status_code == status
    assert "detail" in response.json()
    # Without a token, whatever the id: the caller is checked first.
    assert (await client.get(path)).status_code == 401


async def test_no_response_ever_carries_a_password_or_hash(
    client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    created = await client.post(USERS, json=new_user(), headers=admin.headers)
    user_id = created.json()["id"]
    await client.patch(
        f"{USERS}/{user_id}", json={"password": "another long password"}, headers=admin.headers
    )
    responses = [
        created,
        await client.get(f"{USERS}/{user_id}", headers=admin.headers),
        await client.get(USERS, headers=admin.headers),
        await client.get(USERS, params={"include": "audit_logs"}, headers=admin.headers),
        await client.get(f"{USERS}/me", headers=viewer.headers),
        await client.get("/api/v1/audit-logs", headers=admin.headers),
        await client.get("/api/v1/audit-logs/export", headers=admin.headers),
    ]
    for response in responses:
        assert response.status_code in {200, 201}
        text = response.text
        assert "argon2" not in text
        assert "a long enough password" not in text
        assert "another long password" not in text
        assert '"hashed_password"' not in text
        assert '"password":{' not in text.replace(" ", "")


# -- update --------------------------------------------------------------------------------------


async def test_patch_changes_fields_and_audits_old_and_new(
    client: httpx.AsyncClient, admin: Account, analyst: Account, resources: Resources
) -> None:
    response = await client.patch(
        f"{USERS}/{analyst.id}",
        json={
            "email": "Renamed@Example.com",
            "full_name": "Renamed Person",
            "role": "VIEWER",
            "password": "a brand new password",
        },
        headers={**admin.headers, "X-Request-ID": "req-patch-1", "User-Agent": "pytest-agent"},
    )

    assert response.status_code == 200
    body = response.json()
    assert (body["email"], body["full_name"], body["role"]) == (
        "renamed@example.com",
        "Renamed Person",
        "VIEWER",
    )
    assert body["updated_at"] > body["created_at"]
    [entry] = await audit_rows(resources, action="UPDATE")
    assert entry["user_id"] == admin.id
    assert entry["resource_id"] == str(analyst.id)
    assert entry["request_id"] == "req-patch-1"
    assert entry["user_agent"] == "pytest-agent"
    assert str(entry["ip_address"]) == "203.0.113.7"
    assert entry["details"] == {
        "changes": {
            "email": {"old": analyst.user.email, "new": "renamed@example.com"},
            "full_name": {"old": analyst.user.full_name, "new": "Renamed Person"},
            "role": {"old": "ANALYST", "new": "VIEWER"},
            "password": "changed",
        }
    }
    login = await client.post(
        "/api/v1/auth/token",
        data={"username": "renamed@example.com", "password": "a brand new password"},
    )
    assert login.status_code == 200


async def test_patch_that_changes_nothing_writes_no_entry(
    client: httpx.AsyncClient, admin: Account, analyst: Account, resources: Resources
) -> None:
    response = await client.patch(
        f"{USERS}/{analyst.id}", json={"full_name": analyst.user.full_name}, headers=admin.headers
    )
    assert response.status_code == 200
    assert await audit_rows(resources, action="UPDATE") == []


BAD_PATCHES: dict[str, Any] = {
    "null-role": {"role": None},
    "null-email": {"email": None},
    "unknown-field": {"is_admin": True},
    "created-at": {"created_at": "2020-01-01T00:00:00Z"},
    "hashed-password": {"hashed_password": "x"},
    "short-password": {"password": "short"},
    "blank-password": {"password": " " * 16},
    "full-name-with-a-tab": {"full_name": "Tab\there"},
    "bad-role": {"role": "GOD"},
    "bad-email": {"email": "nope"},
    "is-active-zero": {"is_active": 0},
    "is-active-string": {"is_active": "false"},
    "not-object": ["role", "ADMIN"],
}


@pytest.mark.parametrize("body", BAD_PATCHES.values(), ids=BAD_PATCHES.keys())
async def test_bad_patches_are_422_and_change_nothing(
    client: httpx.AsyncClient, admin: Account, analyst: Account, resources: Resources, body: Any
) -> None:
    response = await client.patch(f"{USERS}/{analyst.id}", json=body, headers=admin.headers)

    assert response.status_code == 422, response.text
    after = (await client.get(f"{USERS}/{analyst.id}", headers=admin.headers)).json()
    assert after == analyst.user.model_dump(mode="json")
    assert await audit_rows(resources, action="UPDATE") == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("email", "nope"), ("full_name", ""), ("role", "GOD"), ("is_active", 0), ("password", "x")],
)
async def test_a_refused_patch_field_is_reported_once_at_its_name(
    client: httpx.AsyncClient, admin: Account, analyst: Account, field: str, value: Any
) -> None:
    """Not once per member of a union, at locations that spell out pydantic's validators."""
    for path in (f"{USERS}/{analyst.id}", f"{USERS}/me"):
        if path.endswith("/me") and field not in ("full_name", "password"):
            continue
        response = await client.patch(path, json={field: value}, headers=admin.headers)
        assert response.status_code == 422, response.text
        assert [e["loc"] for e in response.json()["detail"]] == [["body", field]], path


async def test_patch_to_an_email_taken_in_another_case_is_409(
    client: httpx.AsyncClient, admin: Account, analyst: Account, viewer: Account
) -> None:
    response = await client.patch(
        f"{USERS}/{analyst.id}", json={"email": viewer.user.email.upper()}, headers=admin.headers
    )
    assert response.status_code == 409


async def test_patch_unknown_user_is_404(client: httpx.AsyncClient, admin: Account) -> None:
    response = await client.patch(f"{USERS}/424242", json={"full_name": "X"}, headers=admin.headers)
    assert response.status_code == 404


@pytest.mark.parametrize(
    "change",
    [{"role": "ANALYST"}, {"role": "VIEWER"}, {"is_active": False}],
    ids=["demote-analyst", "demote-viewer", "deactivate"],
)
async def test_the_last_active_admin_cannot_be_demoted_or_deactivated(
    client: httpx.AsyncClient, admin: Account, resources: Resources, change: dict[str, Any]
) -> None:
    # An inactive admin does not count.
    await make_account(resources, Role.ADMIN, is_active=False)

    response = await client.patch(f"{USERS}/{admin.id}", json=change, headers=admin.headers)

    assert response.status_code == 409
    assert "last active ADMIN" in response.json()["detail"]
    deleted = await client.delete(f"{USERS}/{admin.id}", headers=admin.headers)
    assert deleted.status_code == 409
    me = (await client.get(f"{USERS}/me", headers=admin.headers)).json()
    assert (me["role"], me["is_active"]) == ("ADMIN", True)
    assert await audit_rows(resources, action="UPDATE") == []
    assert await audit_rows(resources, action="DELETE") == []


async def test_an_admin_can_be_demoted_while_another_stays(
    client: httpx.AsyncClient, admin: Account, resources: Resources
) -> None:
    other = await make_account(resources, Role.ADMIN)
    response = await client.patch(
        f"{USERS}/{other.id}", json={"role": "ANALYST"}, headers=admin.headers
    )
    assert response.status_code == 200
    assert response.json()["role"] == "ANALYST"


@pytest.mark.parametrize(
    ("method", "body", "action", "done"),
    [("PATCH", {"role": "VIEWER"}, "UPDATE", 200), ("DELETE", None, "DELETE", 204)],
    ids=["demote", "deactivate"],
)
async def test_two_admins_taking_each_other_away_at_once_leave_one(
    client: httpx.AsyncClient,
    resources: Resources,
    method: str,
    body: dict[str, Any] | None,
    action: str,
    done: int,
) -> None:
    """The only two active admins each demote (or deactivate) the other at the same moment:
    one change passes, the other is the last-admin 409; never both, never a deadlock.

    So that the two truly overlap, both are held at the lock that orders such changes,
    taken here first, until both wait for it; then it is let go. Three rounds: the admin
    left by one round and a new one are the next round's pair.
    """
    survivor = await make_account(resources, Role.ADMIN)
    for round_ in range(1, 4):
        pair = (survivor, await make_account(resources, Role.ADMIN))
        async with resources.engine.connect() as holder:
            await holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADMIN_REMOVAL_LOCK})
            try:
                changes = [
                    asyncio.create_task(
                        client.request(
                            method, f"{USERS}/{target.id}", json=body, headers=actor.headers
                        )
                    )
                    for actor, target in (pair, pair[::-1])
                ]
                await _until_waiting_for_admin_removals(resources, 2)
            finally:
                await holder.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": ADMIN_REMOVAL_LOCK}
                )
        responses = await asyncio.wait_for(asyncio.gather(*changes), timeout=30)

        statuses = [response.status_code for response in responses]
        assert sorted(statuses) == [done, 409], [response.text for response in responses]
        assert responses[statuses.index(409)].json() == {"detail": LastAdmin.detail}
        survivor = pair[statuses.index(done)]  # the actor of the change that passed
        async with resources.engine.connect() as conn:
            admins = await conn.scalars(
                text("SELECT id FROM users WHERE role = 'ADMIN' AND is_active")
            )
            assert admins.all() == [survivor.id]
        assert len(await audit_rows(resources, action=action)) == round_


async def _until_waiting_for_admin_removals(resources: Resources, count: int) -> None:
    """Until ``count`` sessions of this test's database wait for ``ADMIN_REMOVAL_LOCK``."""
    await until(
        resources,
        "SELECT count(*) FROM pg_locks JOIN pg_database ON pg_database.oid = database"
        " WHERE datname = current_database() AND locktype = 'advisory'"
        " AND NOT granted AND (classid::bigint << 32) | objid::bigint = :key",
        lambda waiting: waiting == count,
        what=f"{count} changes waiting for the lock that orders them",
        key=ADMIN_REMOVAL_LOCK,
    )


async def test_changes_that_take_no_admin_away_never_wait_for_the_other_admins(
    client: httpx.AsyncClient, admin: Account, resources: Resources
) -> None:
    """A VIEWER's deactivation or new role, and an admin's deactivation while others stay, go
    through while the other admins' rows are locked elsewhere (as an admin's change to their
    own account locks their row): only a change taking away an active ADMIN is ordered
    behind the others, and none of them locks the other admins' rows. The VIEWERs' changes
    also go through while the lock that orders those changes is held elsewhere.

    The wait below is a safety net; the assertions are on what changed.
    """
    others = [await make_account(resources, Role.ADMIN) for _ in range(2)]
    leaving = await make_account(resources, Role.ADMIN)
    viewers = [await make_account(resources, Role.VIEWER) for _ in range(2)]
    async with resources.engine.connect() as holder:
        await holder.begin()
        locked = await holder.scalars(
            text("SELECT id FROM users WHERE id = ANY(:ids) FOR UPDATE"),
            {"ids": [other.id for other in others]},
        )
        assert len(locked.all()) == 2
        await holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADMIN_REMOVAL_LOCK})
        try:
            deactivated = await asyncio.wait_for(
                client.delete(f"{USERS}/{viewers[0].id}", headers=admin.headers), timeout=5
            )
            promoted = await asyncio.wait_for(
                client.patch(
                    f"{USERS}/{viewers[1].id}", json={"role": "ANALYST"}, headers=admin.headers
                ),
                timeout=5,
            )
        finally:
            await holder.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": ADMIN_REMOVAL_LOCK}
            )
        left = await asyncio.wait_for(
            client.delete(f"{USERS}/{leaving.id}", headers=admin.headers), timeout=5
        )
        await holder.rollback()

    assert (deactivated.status_code, promoted.status_code, left.status_code) == (204, 200, 204)
    async with resources.engine.connect() as conn:
        rows = await conn.execute(text("SELECT id, role, is_active FROM users ORDER BY id"))
        state = {row.id: (row.role, row.is_active) for row in rows}
    assert state[viewers[0].id] == ("VIEWER", False)
    assert state[viewers[1].id] == ("ANALYST", True)
    assert state[leaving.id] == ("ADMIN", False)
    assert [state[user.id] for user in (admin, *others)] == [("ADMIN", True)] * 3


async def test_an_admin_changes_accounts_while_their_own_is_locked_for_a_change(
    client: httpx.AsyncClient, admin: Account, viewer: Account, resources: Resources
) -> None:
    """The admin's audit entry refers to their row (a foreign key, whose check takes a KEY
    SHARE lock): the lock a change to their account holds must let it through, or two
    admins changing each other's accounts deadlock. The wait is a safety net."""
    async with UnitOfWork(async_sessionmaker(resources.engine)) as holding:
        # The lock a change to the admin's account holds, taken as the service takes it.
        assert await UserRepository(holding).get_for_update(admin.id) is not None
        renamed = await asyncio.wait_for(
            client.patch(
                f"{USERS}/{viewer.id}", json={"full_name": "Renamed"}, headers=admin.headers
            ),
            timeout=5,
        )
        await holding.rollback()

    assert renamed.status_code == 200
    [entry] = await audit_rows(resources, action="UPDATE")
    assert (entry["user_id"], entry["resource_id"]) == (admin.id, str(viewer.id))


async def test_patch_me_changes_name_and_password_only(
    client: httpx.AsyncClient, viewer: Account, resources: Resources
) -> None:
    response = await client.patch(
        f"{USERS}/me",
        json={"full_name": "Self Named", "password": "my own new password"},
        headers=viewer.headers,
    )
    assert response.status_code == 200
    assert response.json()["full_name"] == "Self Named"
    [entry] = await audit_rows(resources, action="UPDATE")
    assert entry["user_id"] == viewer.id
    assert entry["details"]["changes"]["password"] == "changed"

    for forbidden in ({"role": "ADMIN"}, {"is_active": False}, {"email": "x@example.com"}):
        refused = await client.patch(f"{USERS}/me", json=forbidden, headers=viewer.headers)
        assert refused.status_code == 422
    assert (await client.get(f"{USERS}/me", headers=viewer.headers)).json()["role"] == "VIEWER"


# -- deactivate ----------------------------------------------------------------------------------


async def test_delete_deactivates_keeps_the_row_and_audits(
    client: httpx.AsyncClient, admin: Account, analyst: Account, resources: Resources
) -> None:
    users_before = await count_rows(resources, "users")

    response = await client.delete(f"{USERS}/{analyst.id}", headers=admin.headers)

    assert response.status_code == 204
    assert response.content == b""
    assert "content-type" not in response.headers
    assert await count_rows(resources, "users") == users_before
    body = (await client.get(f"{USERS}/{analyst.id}", headers=admin.headers)).json()
    assert body["is_active"] is False
    [entry] = await audit_rows(resources, action="DELETE")
    assert (entry["user_id"], entry["resource_type"], entry["resource_id"], entry["details"]) == (
        admin.id,
        "user",
        str(analyst.id),
        {},
    )
    again = await client.delete(f"{USERS}/{analyst.id}", headers=admin.headers)
    assert again.status_code == 204
    assert len(await audit_rows(resources, action="DELETE")) == 1
    assert (await client.delete(f"{USERS}/987654", headers=admin.headers)).status_code == 404


# -- audit completeness --------------------------------------------------------------------------


async def test_each_change_writes_exactly_one_entry_in_its_transaction(
    client: httpx.AsyncClient, admin: Account, resources: Resources
) -> None:
    headers = {**admin.headers, "X-Request-ID": "create-1"}
    created = await client.post(USERS, json=new_user(), headers=headers)
    user_id = created.json()["id"]
    await client.patch(f"{USERS}/{user_id}", json={"full_name": "B"}, headers=admin.headers)
    await client.patch(f"{USERS}/{user_id}", json={"is_active": False}, headers=admin.headers)
    await client.patch(f"{USERS}/{user_id}", json={"is_active": True}, headers=admin.headers)
    await client.delete(f"{USERS}/{user_id}", headers=admin.headers)

    entries = await audit_rows(resources, resource_id=str(user_id))

    assert [e["action"] for e in entries] == ["CREATE", "UPDATE", "DELETE", "UPDATE", "DELETE"]
    assert [e["details"] for e in entries[2:]] == [
        {},
        {"changes": {"is_active": {"old": False, "new": True}}},
        {},
    ]
    create = entries[0]
    assert create["request_id"] == "create-1"
    assert create["details"] == {"after": created.json()}
    # The entry carries the instant the change wrote, to the microsecond.
    assert create["timestamp"].isoformat().replace("+00:00", "Z") == created.json()["created_at"]


async def test_a_patch_that_deactivates_is_recorded_as_a_deactivation(
    client: httpx.AsyncClient, admin: Account, viewer: Account, resources: Resources
) -> None:
    response = await client.patch(
        f"{USERS}/{viewer.id}",
        json={"is_active": False, "full_name": "Gone Away"},
        headers={**admin.headers, "X-Request-ID": "patch-off"},
    )

    assert response.status_code == 200
    entries = await audit_rows(resources, request_id="patch-off")
    assert [(e["action"], e["details"]) for e in entries] == [
        ("UPDATE", {"changes": {"full_name": {"old": viewer.user.full_name, "new": "Gone Away"}}}),
        ("DELETE", {}),
    ]
    assert {(e["resource_type"], e["resource_id"], e["user_id"]) for e in entries} == {
        ("user", str(viewer.id), admin.id)
    }


async def test_concurrent_creates_of_one_email_make_one_user_and_one_entry(
    client: httpx.AsyncClient, admin: Account, resources: Resources
) -> None:
    import asyncio

    responses = await asyncio.gather(
        *(
            client.post(USERS, json=new_user(email="race@example.com"), headers=admin.headers)
            for _ in range(4)
        )
    )

    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409]
    assert len(await audit_rows(resources, action="CREATE", resource_type="user")) == 2  # + admin


async def test_a_change_rolled_back_after_its_entry_was_written_takes_the_entry_along(
    client: httpx.AsyncClient, admin: Account, resources: Resources
) -> None:
    """The entry is in the change's transaction: a failure as late as the commit undoes both."""
    from sqlalchemy import text

    async with resources.engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql"
                " AS $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$"
            )
        )
        # Deferred: it fires at COMMIT, after the user and its CREATE entry were both written.
        await conn.execute(
            text(
                "CREATE CONSTRAINT TRIGGER refuse_users_at_commit AFTER INSERT ON users"
                " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()"
            )
        )
    entries_before = len(await audit_rows(resources))

    response = await client.post(
        USERS, json=new_user(email="late@example.com"), headers=admin.headers
    )

    assert response.status_code == 500  # a fault injected into the database, not bad input
    async with resources.engine.connect() as conn:
        made = await conn.scalar(
            text("SELECT count(*) FROM users WHERE email = 'late@example.com'")
        )
    assert made == 0
    assert len(await audit_rows(resources)) == entries_before


async def test_a_failed_audit_write_fails_the_change(
    client: httpx.AsyncClient, admin: Account, resources: Resources
) -> None:
    """If the entry cannot be written, the change must not happen."""
    from sqlalchemy import text

    async with resources.engine.begin() as conn:
        await conn.execute(
            text("ALTER TABLE audit_logs ADD CONSTRAINT refuse_new CHECK (id < 0) NOT VALID")
        )
    response = await client.patch(
        f"{USERS}/{admin.id}", json={"full_name": "Should Not Stick"}, headers=admin.headers
    )

    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error"}
    async with resources.engine.connect() as conn:
        name = await conn.scalar(
            text("SELECT full_name FROM users WHERE id = :id"), {"id": admin.id}
        )
    assert name == admin.user.full_name


# -- request ids ---------------------------------------------------------------------------------


async def test_request_id_is_echoed_generated_or_replaced(
    client: httpx.AsyncClient,
) -> None:
    echoed = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    made = await client.get("/healthz")
    hostile = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})

    assert echoed.headers["x-request-id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 32
    assert hostile.headers["x-request-id"] != "x" * 500


async def test_nul_bytes_are_refused_not_500(
    client: httpx.AsyncClient, admin: Account, resources: Resources
) -> None:
    login = await client.post(
        "/api/v1/auth/token", data={"username": "a\x00b@example.com", "password": PASSWORD}
    )
    created = await client.post(USERS, json=new_user(full_name="a\x00b"), headers=admin.headers)
    searched = await client.get(USERS, params={"q": "a\x00"}, headers=admin.headers)
    filtered = await client.get(
        "/api/v1/audit-logs", params={"resource_id": "a\x00"}, headers=admin.headers
    )

    assert login.status_code == 401
    [failed] = await audit_rows(resources, action="LOGIN_FAILED")
    assert failed["details"] == {"email": "a\ufffdb@example.com"}  # as attempted, storable
    assert (created.status_code, searched.status_code, filtered.status_code) == (422, 422, 422)


async def test_a_new_user_was_updated_when_it_was_created_to_the_microsecond(
    client: httpx.AsyncClient, admin: Account
) -> None:
    created = (await client.post(USERS, json=new_user(), headers=admin.headers)).json()
    assert created["updated_at"] == created["created_at"]
    changed = await client.patch(
        f"{USERS}/{created['id']}", json={"full_name": "Renamed"}, headers=admin.headers
    )
    at = datetime.fromisoformat
    assert at(changed.json()["updated_at"]) > at(created["created_at"])


async def test_a_repeated_json_key_without_a_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.patch(
        "/api/v1/users/me",
        content=b'{"full_name": "A", "full_name": "B"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 401


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_a_json_body_sent_without_its_media_type_is_told_so(
    client: httpx.AsyncClient, admin: Account, content_type: str | None
) -> None:
    """FastAPI reads a body as JSON only when its Content-Type says so; pydantic's message
    ("a valid dictionary or object") named no cause for a body that was valid JSON."""
    body = orjson.dumps(new_user(email="typed@example.com"))
    headers = {**admin.headers, "Content-Type": content_type or ""}

    response = await client.post(USERS, content=body, headers=headers)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body"]
    assert error["msg"] == "Send the body as JSON, with Content-Type: application/json"
    sent = await client.post(
        USERS, content=body, headers={**admin.headers, "Content-Type": "application/json"}
    )
    assert sent.status_code == 201
    wrong = await client.post(
        USERS, content=b"[1]", headers={**admin.headers, "Content-Type": "application/json"}
    )
    assert wrong.status_code == 422
    assert (
        wrong.json()["detail"][0]["msg"]
        != "Send the body as JSON, with Content-Type: application/json"
    )
