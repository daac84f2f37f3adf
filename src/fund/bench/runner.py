"""Runs ``fund bench``: the database, each scenario, the report (the package says what)."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from fund.audit.schemas import AuditFilters
from fund.bench import http, inprocess, queries
from fund.bench.arguments import (
    DEFAULT_OUTPUT,
    FULL_AUDIT_LOGS,
    FULL_USERS,
    SCENARIOS,
)
from fund.bench.database import (
    BENCH_ADMIN_EMAIL,
    BENCH_ADMIN_PASSWORD,
    NotBenchDatabase,
    ensure_bench_admin,
    prepare_bench_database,
)
from fund.bench.report import BenchRun, Machine, write_report
from fund.config import Settings
from fund.kit import embedded
from fund.kit.pagination import CursorCodec, page_scope
from fund.kit.security import derive_key
from fund.seed import PRODUCTION_REFUSAL
from fund.users.schemas import UserFilters


def _apply_quick(args: argparse.Namespace) -> None:
    args.users = min(args.users, 2_000)
    args.audit_logs = min(args.audit_logs, 20_000)
    args.repeats = 1
    args.http_seconds = min(args.http_seconds, 1.0)
    args.connections = min(args.connections, 8)
    args.workers = "1"
    args.cache_samples = min(args.cache_samples, 20)


def run_bench(settings: Settings, args: argparse.Namespace) -> int:
    if settings.is_production:  # it seeds through `fund seed`'s code
        print(f"fund bench: {PRODUCTION_REFUSAL}", file=sys.stderr)
        return 2
    if args.database is None:
        args.database = "fund_bench_quick" if args.quick else "fund_bench"
    if args.quick:
        _apply_quick(args)
    only = args.only.split(",")
    workers = [int(w) for w in args.workers.split(",")]
    if args.output is None:
        args.output = report_directory(settings, args, only=only)
    try:  # before any work: a report that cannot be written is known at once
        args.output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.output):
            pass
    except OSError as exc:
        print(f"fund bench: cannot write the report in {args.output}: {exc}", file=sys.stderr)
        return 2
    if not embedded.redis_answers(settings.effective_redis_url()):
        # As `fund serve` does on a bare machine: the cache scenarios need a Redis.
        settings = settings.model_copy(
            update={"redis_url": embedded.start_valkey(settings.data_dir)}
        )
    try:
        run = asyncio.run(_run(settings, args, only, workers))
    except NotBenchDatabase as exc:
        print(f"fund bench: {exc}", file=sys.stderr)
        return 2
    paths = write_report(run, args.output)
    print(run.summary())
    print(f"\nreport: {paths[0]}  ({len(paths) - 1} charts)")
    return 0


def report_directory(settings: Settings, args: argparse.Namespace, *, only: Sequence[str]) -> Path:
    """Where a report goes when ``--output`` is not given: ``docs/benchmarks`` for a full
    run (every scenario, at the kept report's sizes), the one the repository keeps; a smoke
    run's, a partial one's or a smaller one's beside the other local state, where it
    cannot replace that report."""
    full = (
        not args.quick
        and set(only) == set(SCENARIOS)
        and (args.users, args.audit_logs) == (FULL_USERS, FULL_AUDIT_LOGS)
    )
    return DEFAULT_OUTPUT if full else settings.data_dir / "benchmarks"


def _log(message: str) -> None:
    print(f"  · {message}", file=sys.stderr, flush=True)


def bench_redis_url(settings: Settings, db: int) -> str:
    parts = urlsplit(settings.effective_redis_url())
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def reproduce_command(args: argparse.Namespace, scenario: str | None = None) -> str:
    """The command line that reproduces a figure (sizes and seed included)."""
    parts = [
        "fund bench",
        f"--users {args.users}",
        f"--audit-logs {args.audit_logs}",
        f"--seed {args.seed}",
    ]
    if scenario is not None:
        parts.append(f"--only {scenario}")
    if scenario in (None, "http"):
        parts += [f"--workers {args.workers}", f"--http-seconds {args.http_seconds:g}"]
    if scenario in (None, "export"):
        parts.append(f"--export-seconds {args.export_seconds:g}")
    return " ".join(parts)


async def _machine(engine: AsyncEngine, redis_url: str) -> Machine:
    from redis.asyncio import Redis

    async with engine.connect() as conn:
        pg = str((await conn.execute(text("SHOW server_version"))).scalar_one())
    redis = Redis.from_url(redis_url)
    try:
        info = await redis.info("server")
        redis_version = f"{info.get('redis_version', '?')}"
        if "valkey_version" in info:
            redis_version = f"Valkey {info['valkey_version']}"
    finally:
        await redis.aclose()
    return Machine(
        cores=os.cpu_count() or 0,
        memory_gib=psutil.virtual_memory().total / 2**30,
        cpu=platform.processor() or platform.machine(),
        system=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        postgres=pg,
        redis=redis_version,
        load_average=os.getloadavg(),
    )


async def _run(
    settings: Settings, args: argparse.Namespace, only: list[str], workers: list[int]
) -> BenchRun:
    started = datetime.now(UTC)
    _log(f"bench database {args.database}: {args.users:,} users, {args.audit_logs:,} audit logs")
    database = await prepare_bench_database(
        settings,
        args.database,
        users=args.users,
        audit_logs=args.audit_logs,
        seed=args.seed,
        progress=not args.quick,
    )
    _log("reused" if database.reused else f"seeded in {database.seed_seconds:.1f} s")
    await ensure_bench_admin(settings, database.url)
    redis_url = bench_redis_url(settings, args.redis_db)
    engine = create_async_engine(database.url, pool_size=2)
    run = BenchRun(
        started=started,
        sizes=(args.users, args.audit_logs, args.seed),
        database=database,
        commands={s: reproduce_command(args, s) for s in SCENARIOS},
        full_command=reproduce_command(args),
        machine=await _machine(engine, redis_url),
        scenarios=only,
    )
    try:
        if "search" in only:
            _log("search: with and without indexes")
            run.search = await queries.search_scenario(engine, repeats=args.repeats, log=_log)
        if "depth" in only:
            _log("depth: OFFSET against cursor")
            run.depth = await queries.depth_scenario(engine, repeats=args.repeats, log=_log)
        if "nplusone" in only:
            _log("N+1 against include=audit_logs")
            run.n_plus_one = await queries.n_plus_one_scenario(
                engine, page_sizes=(20, 100), repeats=args.repeats
            )
        if {"cache", "export", "http"} & set(only):
            await _http_scenarios(
                run, settings, args, only, workers, engine, redis_url, database.url
            )
    finally:
        await engine.dispose()
    run.finished = datetime.now(UTC)
    return run


async def _deep_cursors(engine: AsyncEngine, codec: CursorCodec) -> dict[str, str | None]:
    """Signed cursors at the deepest page the data allows (900k rows in by default)."""
    out: dict[str, str | None] = {}
    for name, scope, key, run in (
        (
            "users",
            page_scope("users", {"role": None, "is_active": None, "q": None}),
            "created_at",
            queries.users_page(UserFilters()),
        ),
        (
            "audit",
            page_scope("audit-logs", AuditFilters().model_dump(mode="json")),
            "timestamp",
            queries.audit_page(AuditFilters()),
        ),
    ):
        first = await queries.capture(engine, run, None)
        rows = await queries.matching_rows(engine, first, queries.DEEP + queries.PAGE)
        position = await queries.position_at(
            engine, first, key, min(queries.DEEP, max(0, rows - queries.PAGE))
        )
        out[name] = codec.encode(scope, position) if position is not None else None
    return out


async def _flush_bench_cache(redis_url: str) -> None:
    """Entries cached from an earlier bench database would be served as this one's."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


async def _sample_ids(engine: AsyncEngine, count: int, seed: int) -> list[int]:
    async with engine.connect() as conn:
        low, high = (await conn.execute(text("SELECT min(id), max(id) FROM users"))).one()
        candidates = random.Random(seed).sample(range(low, high + 1), min(count * 2, high - low))
        rows = await conn.execute(
            text("SELECT id FROM users WHERE id = ANY(:ids) ORDER BY id"), {"ids": candidates}
        )
        ids = [int(r[0]) for r in rows]
    random.Random(seed).shuffle(ids)
    return ids[:count]


async def _http_scenarios(
    run: BenchRun,
    settings: Settings,
    args: argparse.Namespace,
    only: list[str],
    workers: list[int],
    engine: AsyncEngine,
    redis_url: str,
    database_url: str,
) -> None:
    secret = settings.secret()
    env = {
        **os.environ,
        "FUND_DATABASE_URL": database_url,
        "FUND_REDIS_URL": redis_url,
        "FUND_SECRET_KEY": secret.decode(),
        "FUND_DATA_DIR": str(settings.data_dir),
        "FUND_ENV": settings.env.value,
        "FUND_LOG_LEVEL": "WARNING",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    await _flush_bench_cache(redis_url)
    cursors = await _deep_cursors(engine, CursorCodec(derive_key(secret, "cursor")))
    ids = await _sample_ids(engine, max(args.cache_samples, 100), args.seed)
    routes = [
        http.Route("ping", "/healthz (the /ping floor)", ("/healthz",), authenticated=False),
        http.Route("users", "GET /users?limit=20", ("/api/v1/users?limit=20",)),
        http.Route(
            "users_deep",
            "GET /users?limit=20, deep cursor",
            (f"/api/v1/users?limit=20&cursor={cursors['users']}",),
        ),
        http.Route(
            "user", "GET /users/{id} (cached)", tuple(f"/api/v1/users/{i}" for i in ids[:100])
        ),
        http.Route("audit", "GET /audit-logs?limit=20", ("/api/v1/audit-logs?limit=20",)),
        http.Route(
            "audit_deep",
            "GET /audit-logs?limit=20, deep cursor",
            (f"/api/v1/audit-logs?limit=20&cursor={cursors['audit']}",),
        ),
        http.Route("stats", "GET /stats (cached)", ("/api/v1/stats",)),
    ]
    use_wrk = http.wrk_available()
    for index, count in enumerate(workers):
        if index and "http" not in only:
            break
        _log(f"fund serve --workers {count}")
        async with http.running_server(env, count) as server:
            token = await http.login(server.port, BENCH_ADMIN_EMAIL, BENCH_ADMIN_PASSWORD)
            if index == 0 and "cache" in only:
                _log("cache: miss against hit")
                run.cache = await http.cache_scenario(
                    server.port, token, ids[: args.cache_samples], redis_url, database_url
                )
            if index == 0 and "export" in only:
                _log("export: rows/s and server memory")
                run.export = await http.export_scenario(
                    server, token, max_seconds=args.export_seconds
                )
            if "http" not in only:
                continue
            for route in routes:
                if "cursor=None" in route.paths[0]:
                    continue  # too little data for a page past the first
                await http.prime(server.port, route, token)
                if not args.quick:  # a smoke run skips the warm-up that steadies the figures
                    await http.load(
                        server.port,
                        route,
                        token,
                        seconds=min(2.0, max(0.5, args.http_seconds / 5)),
                        connections=args.connections,
                        use_wrk=use_wrk,
                    )
                result, generator, command = await http.load(
                    server.port,
                    route,
                    token,
                    seconds=args.http_seconds,
                    connections=args.connections,
                    use_wrk=use_wrk,
                )
                run.http.append(http.LoadRun(count, route, result, generator, command))
                _log(
                    f"{count} worker(s) {route.label}: {result.rps:,.0f} req/s, "
                    f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
                )
    if "http" in only:
        _log("in-process: a worker's CPU per request")
        in_process = {
            r.key: r.paths[0]
            for r in routes
            if r.key in inprocess.ROUTES and "cursor=None" not in r.paths[0]
        }
        run.worker_cpu = await inprocess.cpu_per_request(
            settings.model_copy(
                update={
                    "database_url": database_url,
                    "redis_url": redis_url,
                    "log_level": "WARNING",
                }
            ),
            BENCH_ADMIN_EMAIL,
            BENCH_ADMIN_PASSWORD,
            in_process,
            requests=50 if args.quick else 500,
        )
        _log(", ".join(f"{key} {ms:.3f} ms" for key, ms in run.worker_cpu.items()))
