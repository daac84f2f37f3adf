import httpx

from fund.deps import Resources
from tests.conftest import Account


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_me(client: httpx.AsyncClient, admin: Account) -> None:
    response = await client.get("/api/v1/users/me", headers=admin.headers)
    assert response.status_code == 200
    assert response.json()["id"] == admin.id


async def test_a_405_lists_every_method_the_path_serves(
    client: httpx.AsyncClient, admin: Account
) -> None:
    # RFC 9110: a 405 carries Allow with the target's methods, not only the first route's.
    for method, path, allowed in (
        ("OPTIONS", "/api/v1/users/me", "GET, HEAD, PATCH"),
        ("PUT", "/api/v1/users/me", "GET, HEAD, PATCH"),
        ("PUT", f"/api/v1/users/{admin.id}", "DELETE, GET, HEAD, PATCH"),
        ("PUT", "/api/v1/users", "GET, HEAD, POST"),
        ("POST", "/api/v1/audit-logs/7", "DELETE, GET, HEAD"),
        ("POST", "/api/v1/audit-logs/export", "GET, HEAD"),
        # Literal paths beside a parameter's route that serves the method: not a 422 for the id.
        ("DELETE", "/api/v1/users/me", "GET, HEAD, PATCH"),
        ("DELETE", "/api/v1/audit-logs/export", "GET, HEAD"),
        ("DELETE", "/healthz", "GET, HEAD"),
    ):
        response = await client.request(method, path, headers=admin.headers)
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allowed, (method, path)
        assert response.json() == {"detail": "Method Not Allowed"}
        # Whoever asks: the method is wrong before the caller is checked.
        assert (await client.request(method, path)).status_code == 405, (method, path)


async def test_head_is_get_without_the_body(
    client: httpx.AsyncClient, admin: Account, resources: Resources
) -> None:
    for path, headers in (
        ("/healthz", {}),
        (f"/api/v1/users/{admin.id}", admin.headers),
        ("/api/v1/users?limit=5", admin.headers),
        ("/api/v1/audit-logs/export", admin.headers),  # a streamed body, stopped
    ):
        got = await client.get(path, headers=headers)
        head = await client.head(path, headers=headers)
        assert (head.status_code, head.content) == (200, b""), path
        assert got.content, path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers.get("content-length") == got.headers.get("content-length"), path
        assert "x-request-id" in head.headers
    assert resources.engine.pool.checkedout() == 0  # type: ignore[attr-defined]  # COPY closed
    refused = await client.head(f"/api/v1/users/{admin.id}")
    assert (refused.status_code, refused.content) == (401, b"")
    assert refused.headers["www-authenticate"] == "Bearer"


async def test_a_trailing_slash_is_not_found_never_redirected(
    client: httpx.AsyncClient, admin: Account
) -> None:
    # A redirect would be built from the Host header, which the client chooses.
    for path in ("/api/v1/users/", "/api/v1/users/me/", "/healthz/"):
        response = await client.get(path, headers={**admin.headers, "Host": "evil.example"})
        assert response.status_code == 404, path
        assert "location" not in response.headers
        assert response.json() == {"detail": "Not Found"}
