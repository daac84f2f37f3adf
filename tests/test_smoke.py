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
