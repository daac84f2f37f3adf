"""Production mode refuses unsafe settings; the HTTP edge answers hostile input with 4xx."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from structlog.testing import capture_logs

from fund.config import (
    Environment,
    Settings,
    UnsafeSettingsError,
    settings_problem,
    unknown_variables,
)
from fund.main import create_app
from tests.conftest import SECRET, Account
from tests.ops.processes import (
    FUND,
    environment_without_fund,
    serve_environment,
    spare_port,
    start_serve,
)


def production(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": Environment.PRODUCTION,
        "database_url": "postgresql+asyncpg://fund@db.internal/fund",
        "secret_key": SECRET,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def test_a_development_key_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    def development() -> Settings:
        return Settings(_env_file=None, env=Environment.DEVELOPMENT, data_dir=tmp_path)

    # Several workers start at once: every one must end up with the same key.
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: development().secret(), range(8)))

    [key] = keys
    assert len(key) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert [f.name for f in tmp_path.iterdir()] == ["secret_key"]  # no draft left behind
    with capture_logs() as logged:
        assert development().secret() == key
    # Each start using the kept key says so, not only the one that made it.
    assert [e["event"] for e in logged] == ["secret_key_from_data_dir"]


def test_production_settings_refuse_unsafe_defaults() -> None:
    with pytest.raises(UnsafeSettingsError, match="FUND_SECRET_KEY"):
        production(secret_key=None)
    with pytest.raises(UnsafeSettingsError, match="at least 32 characters"):
        production(secret_key="too-short-a-key")
    with pytest.raises(UnsafeSettingsError, match="FUND_DATABASE_URL"):
        production(database_url=None)
    safe = production()
    assert safe.is_production and not safe.docs_on and safe.logs_as_json
    assert production(docs_enabled=True).docs_on
    # Development keeps its conveniences: no key, embedded database.
    assert Settings(_env_file=None, env=Environment.DEVELOPMENT).docs_on


def test_an_empty_variable_is_unset_and_a_blank_key_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FUND_SECRET_KEY", "")
    monkeypatch.setenv("FUND_DATABASE_URL", "")
    unset = Settings(_env_file=None, env=Environment.DEVELOPMENT, data_dir=tmp_path)
    assert unset.secret_key is None and unset.database_url is None
    assert len(unset.secret()) >= 32  # a generated key, never the empty one
    with pytest.raises(UnsafeSettingsError, match="FUND_DATABASE_URL"):
        production(database_url=None)
    monkeypatch.setenv("FUND_SECRET_KEY", "   ")
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, env=Environment.DEVELOPMENT)
    assert settings_problem(refused.value) == (
        "FUND_SECRET_KEY: must not be blank; unset it for a generated key in development"
    )
    with pytest.raises(UnsafeSettingsError, match="at least 32 characters"):
        production(secret_key=" " * 28 + "abcd")


def test_database_urls_are_read_for_asyncpg_or_refused_in_one_line() -> None:
    def url(value: str) -> str | None:
        return Settings(_env_file=None, database_url=value).database_url

    assert url("postgresql://u:p%40ss@db:5432/fund?sslmode=require") == (
        "postgresql+asyncpg://u:p%40ss@db:5432/fund?ssl=require"
    )
    assert url("postgres://u@db/fund") == "postgresql+asyncpg://u@db/fund"
    assert url("postgresql://u@/fund?host=/run/pg&port=5433&target_session_attrs=any") == (
        "postgresql+asyncpg://u@/fund?host=%2Frun%2Fpg&port=5433&target_session_attrs=any"
    )
    for value, problem in {
        "garbage": "not a database URL",
        "sqlite:///fund.db": "sqlite:// is not a database fund runs on",
        "postgresql+psycopg://u@db/fund": "postgresql+psycopg:// is not a database fund runs on",
        "postgresql://u:pw@db:99999/fund": "the port must be between 1 and 65535",
        "postgresql://[::1/fund": "not a database URL",
        # asyncpg takes the query as keywords: these were a TypeError's 90-line traceback.
        "postgresql://u@db/fund?connect_timeout=10": "the URL parameter 'connect_timeout'",
        "postgresql://u@db/fund?application_name=x": "the URL parameter 'application_name'",
        # Without a database asyncpg takes the user's name: `postgres`, the maintenance one.
        "postgresql://postgres@db:5432/": "name the database",
        "postgresql://postgres@db": "name the database",
    }.items():
        with pytest.raises(ValidationError) as refused:
            url(value)
        assert settings_problem(refused.value).startswith(f"FUND_DATABASE_URL: {problem}")
    for value in ("garbage", "http://cache:6379/0", "redis://cache:99999/0"):
        with pytest.raises(ValidationError) as refused:
            Settings(_env_file=None, redis_url=value)
        assert settings_problem(refused.value).startswith("FUND_REDIS_URL: ")


def test_a_data_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "state"
    a_file.write_text("not a directory")
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, data_dir=a_file)
    assert settings_problem(refused.value) == f"FUND_DATA_DIR: {a_file} is a file, not a directory"


def test_unknown_fund_variables_are_named() -> None:
    environ = ["FUND_ENV", "FUND_ACESS_TOKEN_MINUTES", "PATH", "FUND_TEST_POSTGRES_URL"]
    assert unknown_variables(environ) == ["FUND_ACESS_TOKEN_MINUTES"]
    # Set both in the environment and in .env: named once.
    assert unknown_variables([*environ, "FUND_ACESS_TOKEN_MINUTES"]) == ["FUND_ACESS_TOKEN_MINUTES"]


def test_a_misspelt_variable_in_the_env_file_is_named_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FUND_ACESS_TOKEN_MINUTES=5\nFUND_CACHE_USER_TTL=60\n")
    done = subprocess.run(  # noqa: S603 (our own command, fixed arguments)
        [FUND, "db", "current"],
        check=False,
        env=environment_without_fund(
            FUND_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
        ),
        cwd=tmp_path,  # reads this .env
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1  # no database there: the warning came first
    assert done.stderr.splitlines()[0] == (
        "fund: warning: FUND_ACESS_TOKEN_MINUTES is not a setting (misspelt?); ignored"
    )
    assert "FUND_CACHE_USER_TTL" not in done.stderr


def run_fund(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our own command, fixed arguments)
        [FUND, "serve", "--port", "1"],
        check=False,
        env=environment_without_fund(FUND_ENV="production", FUND_DATA_DIR=str(tmp_path), **env),
        cwd=tmp_path,  # no stray .env
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fund_command_refuses_to_start_in_production_without_safe_settings(tmp_path: Path) -> None:
    no_key = run_fund(tmp_path, FUND_DATABASE_URL="postgresql+asyncpg://fund@db.internal/fund")
    assert no_key.returncode == 2
    assert "FUND_SECRET_KEY" in no_key.stderr
    short_key = run_fund(
        tmp_path,
        FUND_DATABASE_URL="postgresql+asyncpg://fund@db.internal/fund",
        FUND_SECRET_KEY="short",
    )
    assert short_key.returncode == 2
    assert "at least 32 characters" in short_key.stderr
    embedded = run_fund(tmp_path, FUND_SECRET_KEY=SECRET)
    assert embedded.returncode == 2
    assert "FUND_DATABASE_URL" in embedded.stderr
    assert "Traceback" not in no_key.stderr + short_key.stderr + embedded.stderr
    assert not (tmp_path / "postgres").exists()  # nothing was started


@pytest.fixture
async def production_app(settings: Settings) -> AsyncIterator[FastAPI]:
    prod = settings.model_copy(update={"env": Environment.PRODUCTION, "behind_tls": True})
    application = create_app(prod)
    async with application.router.lifespan_context(application):
        yield application


async def test_production_turns_docs_off_and_sets_security_headers(
    production_app: FastAPI, admin: Account
) -> None:
    transport = httpx.ASGITransport(app=production_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await http.get(path)).status_code == 404
        response = await http.get("/api/v1/users/me", headers=admin.headers)
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["strict-transport-security"].startswith("max-age=")


async def test_development_serves_docs_and_sets_hsts_only_over_https(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        docs = await http.get("/docs")
        assert docs.status_code == 200
        assert "strict-transport-security" not in docs.headers
        assert docs.headers["x-content-type-options"] == "nosniff"
        assert "no-store" not in docs.headers.get("cache-control", "")
    async with httpx.AsyncClient(transport=transport, base_url="https://test") as https:
        secure = await https.get("/healthz")
    assert secure.headers["strict-transport-security"].startswith("max-age=")


async def test_oversized_body_is_413_whether_declared_or_streamed(
    client: httpx.AsyncClient, settings: Settings, admin: Account
) -> None:
    big = b'{"email": "a@example.com", "full_name": "' + b"x" * settings.max_request_bytes + b'"}'
    declared = await client.post(
        "/api/v1/users", content=big, headers={**admin.headers, "Content-Type": "application/json"}
    )
    assert declared.status_code == 413
    assert declared.json() == {"detail": "Request body too large"}
    assert declared.headers["x-request-id"]

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = await client.post(
        "/api/v1/users",
        content=chunks(),
        headers={**admin.headers, "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413
    form = await client.post(
        "/api/v1/auth/token",
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 413


@pytest.mark.parametrize(
    "host", ["[", "bad host", "a/b", "x" * 300, "example.com:99999999", "[::1", "exa\\mple.com"]
)
async def test_malformed_host_is_400_never_500(client: httpx.AsyncClient, host: str) -> None:
    response = await client.get("/api/v1/users/me", headers={"Host": host})
    assert response.status_code == 400
    assert response.json() == {"detail": "Invalid Host header"}


@pytest.mark.parametrize(
    "host", ["example.com", "127.0.0.1:8000", "[::1]:8000", "api.fund-internal"]
)
async def test_wellformed_host_passes(client: httpx.AsyncClient, host: str) -> None:
    assert (await client.get("/healthz", headers={"Host": host})).status_code == 200


async def test_bad_content_length_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/token", content=b"username=a", headers={"Content-Length": "ten"}
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "Invalid Content-Length header"}


async def test_huge_headers_are_431(client: httpx.AsyncClient, admin: Account) -> None:
    padded = {**admin.headers, "X-Padding": "x" * 70_000}
    response = await client.get("/api/v1/users/me", headers=padded)
    assert response.status_code == 431
    assert response.json() == {"detail": "Request header fields too large"}
    assert (await client.get("/api/v1/users/me", headers=admin.headers)).status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/abc",
        "redis://127.0.0.1:6379/13x",
        "redis://127.0.0.1:6379/-1",
        "redis://127.0.0.1:6379/0/1",
        "redis://127.0.0.1:6379?db=one",
        "redis://127.0.0.1:6379/?db=",
        "unix:///run/redis.sock?db=x",
    ],
)
def test_a_redis_database_that_is_not_a_number_is_refused(url: str) -> None:
    """redis-py would read it as no database, that is database 0: another's, perhaps."""
    with pytest.raises(ValidationError, match="the database must be a number"):
        Settings(_env_file=None, redis_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/",
        "redis://127.0.0.1:6379/13",
        "rediss://user:secret@cache.internal:6380/2",
        "unix:///run/redis.sock?db=3",
    ],
)
def test_a_redis_url_with_a_database_number_or_none_is_taken(url: str) -> None:
    assert Settings(_env_file=None, redis_url=url).redis_url == url


async def _raw_get(app: FastAPI, http_version: str, headers: list[tuple[bytes, bytes]]) -> int:
    """``GET /healthz`` through ASGI with exactly ``headers`` (httpx always adds a Host)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": http_version,
        "method": "GET",
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


async def test_an_http_1_1_request_needs_exactly_one_host(app: FastAPI) -> None:
    """RFC 9112 section 3.2: a server answers 400 to an HTTP/1.1 request without a Host or
    with more than one (uvicorn passes both through)."""
    host = (b"host", b"127.0.0.1:8000")
    assert await _raw_get(app, "1.1", []) == 400
    assert await _raw_get(app, "1.1", [host, (b"host", b"other.example")]) == 400
    assert await _raw_get(app, "1.1", [host]) == 200
    assert await _raw_get(app, "1.0", []) == 200  # HTTP/1.0 had no Host to require


async def test_a_trusted_proxy_on_another_host_gives_the_scheme(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """``FUND_TRUST_FORWARDED_FOR`` takes ``X-Forwarded-Proto`` from the proxy wherever it
    runs (OPERATIONS.md): uvicorn, told nothing, trusts it from 127.0.0.1 alone, so behind
    a load balancer on another host no request was https and none got HSTS."""
    port = spare_port()
    env = serve_environment(
        database_url, redis_url, tmp_path / "data", FUND_TRUST_FORWARDED_FOR="true"
    )
    process = start_serve(env, port, tmp_path / "serve.log")
    try:
        # From 127.0.0.5: a peer that is not uvicorn's default trusted address.
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.5")
        async with httpx.AsyncClient(
            transport=transport, base_url=f"http://127.0.0.1:{port}"
        ) as http:
            proxied = await http.get("/healthz", headers={"X-Forwarded-Proto": "https"})
            plain = await http.get("/healthz")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)

    assert proxied.status_code == plain.status_code == 200
    assert "strict-transport-security" in proxied.headers
    assert "strict-transport-security" not in plain.headers
