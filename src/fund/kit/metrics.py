"""Prometheus metrics.

With several workers, ``fund serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at an
empty directory before the workers are spawned, so each worker imports
``prometheus_client`` already in multiprocess mode and writes its samples to
its own files there; ``/metrics``, whichever worker answers, sums the files of
every worker, past and present (counters stay monotonic across worker restarts).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "fund_http_requests_total",
    "HTTP requests by route template, method and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "fund_http_request_duration_seconds",
    "HTTP request latency by route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DB_QUERIES = Counter("fund_db_queries", "SQL statements sent to PostgreSQL.")
CACHE_HITS = Counter("fund_cache_hits", "Cache reads answered by Redis.", ["kind"])
CACHE_MISSES = Counter("fund_cache_misses", "Cache reads that went to PostgreSQL.", ["kind"])
CACHE_ERRORS = Counter(
    "fund_cache_errors", "Redis calls that failed or were skipped by the circuit breaker."
)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def render() -> tuple[bytes, str]:
    """The exposition text, summed over all worker processes when there are several."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exited() -> None:
    """Tell the multiprocess collector this worker is gone (drops its live-gauge files)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
