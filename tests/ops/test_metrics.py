"""``/metrics``: Prometheus text, labelled by route template, DB and cache counters."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from fund.deps import Resources
from tests.conftest import Account
from tests.helpers import statements_sent

USER_ROUTE = "/api/v1/users/{user_id}"


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_requests_are_counted_by_route_template_never_raw_path(
    client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    before = await scrape(client)
    for _ in range(3):
        assert (
            await client.get(f"/api/v1/users/{viewer.id}", headers=admin.headers)
        ).status_code == 200
    assert (await client.get("/api/v1/users/987654321", headers=admin.headers)).status_code == 404
    assert (await client.get("/no/such/route/42")).status_code == 404
    after = await scrape(client)

    ok = {"method": "GET", "route": USER_ROUTE, "status": "200"}
    assert (
        value(after, "fund_http_requests_total", **ok)
        - value(before, "fund_http_requests_total", **ok)
        == 3
    )
    missing = {"method": "GET", "route": USER_ROUTE, "status": "404"}
    assert (
        value(after, "fund_http_requests_total", **missing)
        - value(before, "fund_http_requests_total", **missing)
        == 1
    )
    latency = {"method": "GET", "route": USER_ROUTE}
    assert (
        value(after, "fund_http_request_duration_seconds_count", **latency)
        - value(before, "fund_http_request_duration_seconds_count", **latency)
        == 4
    )
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, "fund_http_requests_total", **unmatched) > value(
        before, "fund_http_requests_total", **unmatched
    )
    routes = {dict(labels).get("route") for _, labels in after}
    # No label carries an id: an unbounded label set would grow Prometheus without limit.
    assert not any(r and any(ch.isdigit() for ch in r.replace("/api/v1", "")) for r in routes)
    assert str(viewer.id) not in {dict(labels).get("route") for _, labels in after}


async def test_the_documentation_pages_are_counted_under_their_own_paths(
    client: httpx.AsyncClient,
) -> None:
    pages = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")
    before = await scrape(client)
    for page in pages:
        assert (await client.get(page)).status_code == 200
    after = await scrape(client)

    def counted(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], route: str) -> float:
        return value(samples, "fund_http_requests_total", method="GET", route=route, status="200")

    for page in pages:
        assert counted(after, page) - counted(before, page) == 1, page
    assert counted(after, "unmatched") == counted(before, "unmatched")


async def test_db_queries_total_counts_every_statement(
    client: httpx.AsyncClient, resources: Resources, admin: Account
) -> None:
    before = value(await scrape(client), "fund_db_queries_total")
    with statements_sent(resources.engine) as seen:
        response = await client.get("/api/v1/users", headers=admin.headers)
        assert response.status_code == 200
    after = value(await scrape(client), "fund_db_queries_total")

    assert seen, "listing users sent no SQL"
    assert after - before == len(seen)


async def test_cache_hits_and_misses_are_counted(
    client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    before = await scrape(client)
    first = await client.get(f"/api/v1/users/{viewer.id}", headers=admin.headers)
    second = await client.get(f"/api/v1/users/{viewer.id}", headers=admin.headers)
    after = await scrape(client)

    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    hits = sum(v for (n, _), v in after.items() if n == "fund_cache_hits_total") - sum(
        v for (n, _), v in before.items() if n == "fund_cache_hits_total"
    )
    misses = sum(v for (n, _), v in after.items() if n == "fund_cache_misses_total") - sum(
        v for (n, _), v in before.items() if n == "fund_cache_misses_total"
    )
    assert hits >= 1
    assert misses >= 1
    assert ("fund_cache_errors_total", ()) in after
