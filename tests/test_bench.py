"""``fund bench`` at a tiny scale: seed, every scenario, and a report with every figure.

Presence, not timings: the figures of a seconds-long run on a shared machine mean nothing,
but every table, chart and target line must be there, and the bench must reuse its data.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import pytest

from fund.bench import http
from fund.bench.arguments import DEFAULT_OUTPUT, SCENARIOS, add_arguments
from fund.bench.database import NotBenchDatabase, drop_bench_database, prepare_bench_database
from fund.bench.http import parse_wrk
from fund.bench.report import CHARTS
from fund.bench.runner import report_directory, run_bench
from fund.config import Environment, Settings
from tests.conftest import SECRET
from tests.services import PostgresServer

SECTIONS = (
    "## Machine",
    "## Targets",
    "## List queries with and without their indexes",
    "## OFFSET against cursor",
    "## N+1 against `include=audit_logs`",
    "## Cache miss against hit",
    "## Audit export",
    "## HTTP on loopback",
)
HTTP_ROUTES = (
    "/healthz (the /ping floor)",
    "GET /users?limit=20",
    "GET /users?limit=20, deep cursor",
    "GET /users/{id} (cached)",
    "GET /audit-logs?limit=20",
    "GET /audit-logs?limit=20, deep cursor",
    "GET /stats (cached)",
)
TARGETS = (
    "seeding",
    "every list query, any depth or filter",
    "GET /users deep page vs page one, 1 worker(s)",
    "GET /audit-logs deep page vs page one, 1 worker(s)",
    "GET /users?limit=20, 1 worker(s)",
    "GET /users/{id} (cached), 1 worker(s)",
    "audit export",
)


def _bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def bench_settings(
    postgres: PostgresServer, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return Settings(
        env=Environment.TEST,
        database_url=postgres.url("postgres"),
        redis_url=redis_url,
        secret_key=SECRET,
        data_dir=tmp_path_factory.mktemp("fund-bench-data"),
        log_json=True,
    )


async def test_a_small_run_writes_every_table_chart_and_target(
    bench_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"fund_test_{os.getpid()}_bench"
    output = tmp_path / "report"
    args = _bench_args(
        "--quick",
        "--users",
        "400",
        "--audit-logs",
        "4000",
        "--database",
        name,
        "--output",
        str(output),
        "--http-seconds",
        "0.5",
        "--connections",
        "4",
        "--redis-db",
        "13",  # not the default: a developer's `make bench` may be running meanwhile
    )
    try:
        code = await asyncio.to_thread(run_bench, bench_settings, args)
        # Same sizes and seed: the data is reused, not seeded again.
        again = await prepare_bench_database(
            bench_settings, name, users=400, audit_logs=4000, seed=42, progress=False
        )
    finally:
        await drop_bench_database(bench_settings, name)

    assert code == 0
    assert again.reused
    # …and still knows how long its seeding took, for the reports of the runs that reuse it.
    assert again.seed_seconds is not None and again.seed_seconds > 0
    assert set(again.seed_phases) >= {"users", "audit_logs", "indexes"}
    assert again.seeded_at is not None
    report = (output / "REPORT.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    for chart in CHARTS:
        png = output / chart
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), chart
        assert f"]({chart})" in report, chart
    for figure in ("cores", "memory", "PostgreSQL", "Redis"):
        assert re.search(rf"^\| {figure} \| \S", report, re.MULTILINE), figure
    for route in HTTP_ROUTES:
        assert f"| {route} | 1 |" in report, route
    assert "### A worker's CPU per request, in-process" in report
    for route in HTTP_ROUTES[:-1]:  # all but /stats
        assert re.search(rf"^\| {re.escape(route)} \| \d+\.\d{{3}} \| \d", report, re.M), route
    for target in TARGETS:
        assert re.search(rf"^\| {re.escape(target)} \|.*\*\*(PASS|MISS)\*\*", report, re.M), target
    assert report.count("Reproduce: `fund bench --users 400 --audit-logs 4000 --seed 42") == 6
    assert "built-in asyncio keep-alive client" in report or "Load generator: wrk" in report

    # 1 + N statements against a constant number, whatever the page size.
    n_plus_one = re.findall(
        r"^\| (\d+) \| [\d.,]+ ms, (\d+) statements \| [\d.,]+ ms, (\d+) st", report, re.M
    )
    assert [size for size, _, _ in n_plus_one] == ["20", "100"]
    (_, naive_20, include_20), (_, naive_100, include_100) = n_plus_one
    assert include_20 == include_100
    assert int(naive_100) > int(naive_20) > int(include_20)

    summary = capsys.readouterr().out
    assert "fund bench: 400 users, 4,000 audit logs" in summary
    assert summary.count("PASS") + summary.count("MISS") == len(TARGETS)
    assert str(output / "REPORT.md") in summary


def test_wrk_output_is_read_into_the_same_figures() -> None:
    output = """Running 10s test @ http://127.0.0.1:8000/healthz
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.41ms  601.00us  12.00ms   80.00%
  Latency Distribution
     50%    2.40ms
     75%    2.70ms
     90%    3.10ms
     99%  850.00us
  129000 requests in 10.00s, 18.00MB read
  Non-2xx or 3xx responses: 3
Requests/sec:  12900.12
Transfer/sec:      1.80MB
"""
    result = parse_wrk(output)
    assert result.requests == 129_000
    assert result.errors == 3
    assert result.seconds == 10.0
    assert result.rps == 12900.12
    assert result.p50_ms == 2.4
    assert result.p99_ms == 0.85
    assert result.failures == {"non-2xx/3xx": 3}


@pytest.mark.parametrize(
    "argv",
    [
        ("--only", "search,teleport"),
        ("--only", ","),
        ("--users", "-5"),
        ("--users", "99"),  # below the smallest data the scenarios can read
        ("--audit-logs", "many"),
        ("--workers", "a"),
        ("--workers", "0"),
        ("--workers", "1,,x"),
        ("--http-seconds", "0"),
        ("--export-seconds", "nan"),
        ("--connections", "0"),
        ("--repeats", "0"),
        ("--redis-db", "16"),
        ("--database", 'x"; DROP DATABASE fund; --'),
        ("--database", "Fund"),
    ],
)
def test_a_bad_argument_is_refused_before_anything_runs(
    argv: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        _bench_args(*argv)
    assert refused.value.code == 2
    assert f"argument {argv[0]}:" in capsys.readouterr().err


def test_a_report_that_cannot_be_written_is_refused_before_anything_runs(
    bench_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocked = tmp_path / "a file"
    blocked.write_text("")
    args = _bench_args("--quick", "--database", "must_not_be_made", "--output", str(blocked))

    assert run_bench(bench_settings, args) == 2
    assert "cannot write the report" in capsys.readouterr().err


async def test_a_database_the_bench_did_not_make_is_never_dropped(
    bench_settings: Settings, postgres: PostgresServer, database: str
) -> None:
    # The service's own database, say, named by mistake: its rows must survive.
    conn = await asyncpg.connect(postgres.dsn(database))
    try:
        await conn.execute(
            "INSERT INTO users (email, hashed_password) VALUES ('keep@example.com', 'x')"
        )

        with pytest.raises(NotBenchDatabase):
            await prepare_bench_database(
                bench_settings, database, users=400, audit_logs=4000, seed=42, progress=False
            )

        assert await conn.fetchval("SELECT email FROM users") == "keep@example.com"
    finally:
        await conn.close()


async def test_the_python_load_generator_measures_a_real_server(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    # The full run above takes wrk where it is installed; without wrk (a newcomer's machine,
    # `apt-get install wrk` not done) the bench loads the server with this generator.
    env = {
        **os.environ,
        "FUND_DATABASE_URL": database_url,
        "FUND_REDIS_URL": redis_url,
        "FUND_SECRET_KEY": SECRET,
        "FUND_DATA_DIR": str(tmp_path),
        "FUND_LOG_LEVEL": "WARNING",
    }
    route = http.Route("ping", "/healthz", ("/healthz",), authenticated=False)
    async with http.running_server(env, 1) as server:
        result, generator, command = await http.load(
            server.port, route, "", seconds=1.0, connections=2, use_wrk=False
        )
    assert generator.startswith("built-in asyncio keep-alive client")
    assert command.startswith("python -m fund.bench.loadgen")
    assert result.requests > 0 and result.errors == 0
    assert result.rps > 0 and 0 < result.p50_ms <= result.p99_ms


def test_a_smoke_or_partial_run_never_replaces_the_kept_report(bench_settings: Settings) -> None:
    """Only a full run writes to docs/benchmarks by default; ``--quick`` or ``--only`` would
    replace the 1M-row report there with a smaller one."""
    local = bench_settings.data_dir / "benchmarks"

    def where(*argv: str, only: Sequence[str] = SCENARIOS) -> Path:
        return report_directory(bench_settings, _bench_args(*argv), only=only)

    assert where() == DEFAULT_OUTPUT
    assert where("--workers", "1,2", "--http-seconds", "10") == DEFAULT_OUTPUT
    assert where("--quick") == local
    assert where(only=["search"]) == local
    assert where("--users", "100000", "--audit-logs", "1000000") == local
    assert _bench_args("--quick").output is None  # settled by report_directory when it runs


def test_the_bench_refuses_production_and_a_smoke_run_keeps_to_its_own_database(
    bench_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It seeds through `fund seed`'s code (users sharing one known password), which refuses
    production; and a --quick run used to drop and reseed the full-size fund_bench."""
    production = bench_settings.model_copy(update={"env": Environment.PRODUCTION})
    assert run_bench(production, _bench_args("--quick")) == 2
    assert "refuses FUND_ENV=production" in capsys.readouterr().err

    blocked = tmp_path / "a file"
    blocked.write_text("")
    quick = _bench_args("--quick", "--output", str(blocked))
    full = _bench_args("--output", str(blocked))
    assert run_bench(bench_settings, quick) == run_bench(bench_settings, full) == 2  # no work
    assert (quick.database, full.database) == ("fund_bench_quick", "fund_bench")
