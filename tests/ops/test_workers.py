"""``fund serve --workers 2``: every route answers, a cache invalidation made through one
worker is seen through the other, ``/metrics`` sums both workers, and SIGTERM drains."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi import FastAPI
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from fund.cli import _metrics_directory
from fund.deps import Resources
from fund.kit.metrics import MULTIPROC_DIR_ENV
from fund.models import Role
from tests.conftest import Account, make_account
from tests.ops.processes import serve_environment, spare_port, start_serve

USER_ROUTE = "/api/v1/users/{user_id}"


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base_url: str
    port: int
    metrics_dir: Path
    log: Path

    def requests_by_worker(self, method: str, route: str) -> Counter[int]:
        """Requests each worker served on ``route``, from its own metrics file."""
        counts: Counter[int] = Counter()
        for path in self.metrics_dir.glob("counter_*.db"):
            pid = int(path.stem.split("_")[1])
            for family in MultiProcessCollector.merge([str(path)], accumulate=True):  # type: ignore[no-untyped-call]
                for sample in family.samples:
                    labels = sample.labels
                    if (
                        sample.name == "fund_http_requests_total"
                        and labels.get("method") == method
                        and labels.get("route") == route
                    ):
                        counts[pid] += int(sample.value)
        return counts


@pytest.fixture
def served(database_url: str, redis_url: str, tmp_path: Path, app: FastAPI) -> Iterator[Served]:
    port = spare_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    log = tmp_path / "serve.log"
    env = serve_environment(
        database_url,
        redis_url,
        tmp_path / "data",
        FUND_SHUTDOWN_TIMEOUT="20",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    process = start_serve(env, port, log, "--workers", "2")
    served = Served(process, f"http://127.0.0.1:{port}", port, metrics_dir, log)
    try:
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            for child in (
                psutil.Process(process.pid).children(recursive=True)
                if psutil.pid_exists(process.pid)
                else []
            ):
                child.kill()
            process.wait(10)


@pytest.fixture
async def http(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    # No keep-alive: every request opens a fresh connection, which either worker may accept.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=served.base_url, limits=limits, timeout=30) as client:
        yield client


async def test_two_workers_share_cache_invalidation_metrics_and_drain_on_sigterm(
    served: Served, http: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    await every_route_answers(served, http, resources, admin)
    await invalidation_through_one_worker_is_seen_through_the_other(served, http, resources, admin)
    await metrics_sum_both_workers(served, http)
    await hostile_requests_are_refused_without_a_500(served)
    await sigterm_drains_the_request_in_flight_and_exits_cleanly(served, admin)


async def every_route_answers(
    served: Served, http: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    h = admin.headers
    expect = [
        (await http.get("/healthz"), 200),
        (await http.get("/readyz"), 200),
        (await http.get("/docs"), 200),
        (
            await http.post(
                "/api/v1/auth/token",
                data={"username": admin.user.email, "password": admin.password},
            ),
            200,
        ),
        (await http.get("/api/v1/users/me", headers=h), 200),
        (await http.patch("/api/v1/users/me", json={"full_name": "Operator"}, headers=h), 200),
        (await http.get("/api/v1/users", params={"include": "audit_logs"}, headers=h), 200),
    ]
    created = await http.post(
        "/api/v1/users",
        json={
            "email": "worker-made@example.com",
            "password": "a-long-enough-password",
            "full_name": "W",
        },
        headers=h,
    )
    assert created.status_code == 201, created.text
    uid = created.json()["id"]
    expect += [
        (await http.get(f"/api/v1/users/{uid}", headers=h), 200),
        (await http.patch(f"/api/v1/users/{uid}", json={"role": "ANALYST"}, headers=h), 200),
        (await http.delete(f"/api/v1/users/{uid}", headers=h), 204),
        (await http.get("/api/v1/stats", headers=h), 200),
    ]
    entries = await http.get("/api/v1/audit-logs", params={"limit": 5}, headers=h)
    assert entries.status_code == 200 and entries.json()["items"]
    entry_id = entries.json()["items"][0]["id"]
    expect += [
        (await http.get(f"/api/v1/audit-logs/{entry_id}", headers=h), 200),
        (await http.get("/api/v1/audit-logs/export", params={"format": "csv"}, headers=h), 200),
        (await http.get("/api/v1/audit-logs/export", params={"format": "jsonl"}, headers=h), 200),
        (await http.delete(f"/api/v1/audit-logs/{entry_id}", headers=h), 204),
        (await http.get("/metrics"), 200),
    ]
    for response, status in expect:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.headers["x-request-id"]

    # Compared with the route table, so a route added later cannot be forgotten here.
    app_routes = {
        (method, path)
        for path, operations in resources_openapi(resources).items()
        for method in operations
    }
    for _ in range(20):  # the last request's count may land just after its response
        scraped = await http.get("/metrics")
        answered = {
            (s.labels["method"].lower(), s.labels["route"])
            for family in text_string_to_metric_families(scraped.text)
            for s in family.samples
            if s.name == "fund_http_requests_total" and int(s.labels["status"]) < 400
        }
        if app_routes <= answered:
            break
        await asyncio.sleep(0.05)
    assert app_routes <= answered, app_routes - answered


def resources_openapi(resources: Resources) -> dict[str, dict[str, object]]:
    from fund.main import create_app

    paths: dict[str, dict[str, object]] = create_app(resources.settings).openapi()["paths"]
    return paths


async def invalidation_through_one_worker_is_seen_through_the_other(
    served: Served, http: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    target = await make_account(resources, Role.VIEWER, full_name="Before Rename")
    url = f"/api/v1/users/{target.id}"

    # Warm the shared cache until both workers served the user, one of them from Redis.
    # A write leaves a short tombstone (fund.kit.cache.TOMBSTONE_MS) during which reads miss:
    # loop on the condition, with a deadline that only guards against a hang.
    cache_states: set[str] = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        response = await http.get(url, headers=admin.headers)
        assert response.status_code == 200
        assert response.json()["full_name"] == "Before Rename"
        cache_states.add(response.headers["x-cache"])
        if len(served.requests_by_worker("GET", USER_ROUTE)) == 2 and "hit" in cache_states:
            break
    else:
        pytest.fail(f"both workers never served: {served.requests_by_worker('GET', USER_ROUTE)}")

    before_patch = served.requests_by_worker("PATCH", USER_ROUTE)
    renamed = await http.patch(url, json={"full_name": "After Rename"}, headers=admin.headers)
    assert renamed.status_code == 200
    patched_by = await counted_soon(
        lambda: served.requests_by_worker("PATCH", USER_ROUTE) - before_patch
    )
    assert len(patched_by) == 1
    reads_before = served.requests_by_worker("GET", USER_ROUTE)

    after_states: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        response = await http.get(url, headers=admin.headers)
        assert response.status_code == 200
        # Whichever worker answers, the write that returned is visible: never the cached old name.
        assert response.json()["full_name"] == "After Rename"
        after_states.append(response.headers["x-cache"])
        served_since = served.requests_by_worker("GET", USER_ROUTE) - reads_before
        if len(served_since) == 2 and "hit" in after_states:
            break
    else:
        pytest.fail("both workers did not serve reads after the PATCH")
    other_worker = set(served_since) - set(patched_by)
    assert other_worker, "the worker that did not take the PATCH served reads after it"


async def counted_soon(count: Callable[[], Counter[int]]) -> Counter[int]:
    """A worker counts a request just after sending its response: wait for the count."""
    for _ in range(200):
        counted = count()
        if counted:
            return counted
        await asyncio.sleep(0.05)
    return count()


async def metrics_sum_both_workers(served: Served, http: httpx.AsyncClient) -> None:
    for _ in range(20):
        per_worker = served.requests_by_worker("GET", USER_ROUTE)
        scraped = await http.get("/metrics")
        if served.requests_by_worker("GET", USER_ROUTE) == per_worker:
            break  # no count landed during the scrape
    assert len(per_worker) == 2
    total = sum(
        s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
        if s.name == "fund_http_requests_total"
        and s.labels.get("method") == "GET"
        and s.labels.get("route") == USER_ROUTE
    )
    assert total == sum(per_worker.values())
    assert "fund_db_queries_total" in scraped.text


async def raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 30)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def hostile_requests_are_refused_without_a_500(served: Served) -> None:
    bad_host = await raw_exchange(served.port, b"GET /healthz HTTP/1.1\r\nHost: [\r\n\r\n")
    assert bad_host.startswith(b"HTTP/1.1 400"), bad_host
    huge = b"x" * 200_000
    huge_header = await raw_exchange(
        served.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + huge + b"\r\n\r\n"
    )
    assert huge_header.startswith(b"HTTP/1.1 431"), huge_header[:200]
    oversized = await raw_exchange(
        served.port,
        b"POST /api/v1/auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 50000000\r\n\r\n",
    )
    assert oversized.startswith(b"HTTP/1.1 413"), oversized[:200]


async def sigterm_drains_the_request_in_flight_and_exits_cleanly(
    served: Served, admin: Account
) -> None:
    workers = psutil.Process(served.process.pid).children(recursive=True)
    body = (
        f"username={admin.user.email}&password={admin.password}".replace(" ", "+")
        .replace("@", "%40")
        .encode()
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    local_port = writer.get_extra_info("sockname")[1]
    writer.write(
        b"POST /api/v1/auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    await writer.drain()
    # Wait until a worker has accepted this connection: the request is then in flight.
    for _ in range(100):
        if any(
            c.raddr and c.raddr.port == local_port
            for w in workers
            if w.is_running()
            for c in w.net_connections(kind="tcp")
        ):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("no worker accepted the connection")
    await asyncio.sleep(0.3)  # lets the worker parse the headers it already has

    served.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(1.0)
    assert served.process.poll() is None, "the server exited with a request in flight"
    writer.write(body[10:])
    await writer.drain()
    # A draining server answers with `Connection: close`: read to EOF, since the
    # head and the body may arrive in separate segments.
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"access_token" in answer

    code = await asyncio.to_thread(served.process.wait, 60)
    assert code == 0, served.log.read_text()[-3000:]
    # Every process it started ends (multiprocessing's resource tracker follows its parent).
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]
    log = served.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    events = [json.loads(line).get("event") for line in log.splitlines() if line.startswith("{")]
    assert "stopped" in events


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Note: a\x00b\r\n\r\n",
        b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /healthz?x=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\xff\xfe not http at all\r\n\r\n",
    ],
    ids=["nul-in-a-header", "content-length-not-a-number", "request-line-too-long", "garbage"],
)
async def test_what_the_http_parser_cannot_read_is_answered_in_json(
    served: Served, request_bytes: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(request_bytes)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # then the server closes
    writer.close()

    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    assert status == "HTTP/1.1 400 Bad Request"
    assert headers["content-type"] == "application/json"
    assert len(headers["x-request-id"]) == 32
    assert json.loads(body) == {"detail": "Malformed HTTP request: it could not be parsed"}
    assert headers["x-request-id"] in served.log.read_text()  # the operator can find it


def test_metrics_directory_is_made_for_several_workers_and_removed_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)
    with _metrics_directory(1):
        assert MULTIPROC_DIR_ENV not in os.environ
    with _metrics_directory(2):
        path = Path(os.environ[MULTIPROC_DIR_ENV])
        assert path.is_dir() and not any(path.iterdir())
    assert not path.exists()
    assert MULTIPROC_DIR_ENV not in os.environ
    monkeypatch.setenv(MULTIPROC_DIR_ENV, "/operator/chose/this")
    with _metrics_directory(4):
        assert os.environ[MULTIPROC_DIR_ENV] == "/operator/chose/this"
