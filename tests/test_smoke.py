import httpx

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
        ("OPTIONS", "/api/v1/users/me", "GET, PATCH"),
        ("PUT", "/api/v1/users/me", "GET, PATCH"),
        ("PUT", f"/api/v1/users/{admin.id}", "DELETE, GET, PATCH"),
        ("PUT", "/api/v1/users", "GET, POST"),
        ("POST", "/api/v1/audit-logs/7", "DELETE, GET"),
        ("POST", "/api/v1/audit-logs/export", "GET"),
        ("DELETE", "/healthz", "GET"),
    ):
        response = await client.request(method, path, headers=admin.headers)
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allowed, (method, path)
        assert response.json() == {"detail": "Method Not Allowed"}
