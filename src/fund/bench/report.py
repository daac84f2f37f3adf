"""The report: one Markdown page with tables, PNG charts, the machine and the targets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fund.bench.arguments import SCENARIOS
from fund.bench.database import BenchDatabase
from fund.bench.http import CacheResult, ExportResult, LoadRun
from fund.bench.queries import DepthResult, NPlusOneResult, SearchResult

LIST_QUERY_MS = 1.0
DEEP_PAGE_TOLERANCE = 0.20
USERS_PAGE_OF_PING = 0.25
CACHED_USER_OF_PING = 0.35
EXPORT_ROWS_PER_S = 200_000
EXPORT_FLAT_MIB = 32.0
SEED_ROWS_PER_S = 11_000_000 / 60
"""The seeding bar: 1M users plus 10M audit entries in 60 s, all in."""

CHARTS = (
    "targets.png",
    "search_indexes.png",
    "offset_vs_cursor.png",
    "n_plus_one.png",
    "cache.png",
    "export_memory.png",
    "http_rps.png",
    "http_latency.png",
)


@dataclass(frozen=True)
class Machine:
    cores: int
    memory_gib: float
    cpu: str
    system: str
    python: str
    postgres: str
    redis: str
    load_average: tuple[float, float, float]


@dataclass(frozen=True)
class Target:
    name: str
    bar: str
    measured: str
    ratio: float
    """Measured over the bar, oriented so that ≥ 1 passes."""
    passed: bool
    why: str


@dataclass
class BenchRun:
    started: datetime
    sizes: tuple[int, int, int]
    database: BenchDatabase
    commands: dict[str, str]
    full_command: str
    machine: Machine
    scenarios: list[str]
    search: list[SearchResult] = field(default_factory=list)
    depth: list[DepthResult] = field(default_factory=list)
    n_plus_one: list[NPlusOneResult] = field(default_factory=list)
    cache: CacheResult | None = None
    export: ExportResult | None = None
    http: list[LoadRun] = field(default_factory=list)
    worker_cpu: dict[str, float] = field(default_factory=dict)
    """Route key -> ms of one worker's CPU per request, in-process (``fund.bench.inprocess``)."""
    finished: datetime | None = None

    def load(self, workers: int, key: str) -> LoadRun | None:
        return next((r for r in self.http if r.workers == workers and r.route.key == key), None)

    @property
    def worker_counts(self) -> list[int]:
        return sorted({r.workers for r in self.http})

    def targets(self) -> list[Target]:
        return [
            *self._seed_target(),
            *self._list_query_target(),
            *self._http_targets(),
            *self._export_target(),
        ]

    def _seed_target(self) -> list[Target]:
        db = self.database
        if not db.seed_seconds:
            return []  # seeded by an earlier run that kept no figures
        rows = self.sizes[0] + self.sizes[1]
        rate = rows / db.seed_seconds
        passed = rate >= SEED_ROWS_PER_S
        phases = db.seed_phases
        why = ""
        if not passed:
            why = (
                f"CPU-bound on both cores: the audit entries' load took "
                f"{phases.get('audit_logs', 0):.1f} s (rows made by `INSERT … SELECT`, about "
                "2.5 µs a row on one core; two loaders reach about 1.4× one here) and their six "
                f"index builds {phases.get('indexes', 0):.1f} s after it (sorts of 10M rows; "
                "`action` and `resource_type`, five and two values, send nearly every comparison "
                "on to `timestamp` and `id`: 7.3–7.8 s and 5.3 s as enums since migration 012, "
                "13.6–16.3 s and 8.7 s as text); then "
                f"the foreign key's check {phases.get('constraints', 0):.1f} s. docs/SEEDING.md"
            )
        return [
            Target(
                "seeding",
                f"1M users + 10M entries in ≤ 60 s (≥ {SEED_ROWS_PER_S:,.0f} rows/s)",
                f"{rows:,} rows in {db.seed_seconds:.1f} s ({rate:,.0f} rows/s)"
                + (f", seeded by an earlier run ({_when(db.seeded_at)})" if db.reused else ""),
                rate / SEED_ROWS_PER_S,
                passed,
                why,
            )
        ]

    def _list_query_target(self) -> list[Target]:
        measured = [
            *((f"{s.table} {s.name}", s.indexed) for s in self.search),
            *((f"{s.table} {s.name} at depth {s.depth:,}", s.deep) for s in self.search),
            *((f"{d.table} cursor at {d.depth:,}", d.cursor) for d in self.depth),
        ]
        if not measured:
            return []
        name, worst = max(measured, key=lambda m: m[1].execution_ms)
        passed = worst.execution_ms <= LIST_QUERY_MS
        why = ""
        if not passed:
            why = (
                f"the slowest, {name}, is answered by `{worst.scan or 'a plan'}` and touches "
                f"{worst.buffers:,} buffers"
            )
            if "Bitmap" in worst.scan:
                why += (
                    ": a bitmap scan collects every matching row, then sorts them to keep the "
                    "newest 20, so its cost grows with the number of matches, not the page size"
                )
            elif "Seq Scan" in worst.scan:
                why += (
                    ": a term without three letters or digits in a row has no trigram for an "
                    "index to look up; fewer than a page of matches among the 50,000 rows "
                    "nearest, so the table is read once (docs/PAGINATION.md)"
                )
            elif worst.scan.startswith("Index Scan"):
                why += (
                    ": the index gives the order but not the filter, so rows are read and "
                    "discarded until 20 match; the rarer the match, the longer the walk"
                )
            over = [m for m, p in measured if p.execution_ms > LIST_QUERY_MS]
            if len(over) > 1:
                why += f" ({len(over)} queries over the bar: {', '.join(over)})"
        return [
            Target(
                "every list query, any depth or filter",
                f"≤ {LIST_QUERY_MS:g} ms server execution",
                f"worst {worst.execution_ms:.3f} ms ({name})",
                LIST_QUERY_MS / max(worst.execution_ms, 1e-6),
                passed,
                why,
            )
        ]

    def _http_targets(self) -> list[Target]:
        out = []
        for workers in self.worker_counts:
            ping = self.load(workers, "ping")
            for first_key, deep_key, label in (
                ("users", "users_deep", "GET /users"),
                ("audit", "audit_deep", "GET /audit-logs"),
            ):
                first, deep = self.load(workers, first_key), self.load(workers, deep_key)
                if first is None or deep is None:
                    continue
                ratio = deep.result.rps / max(first.result.rps, 1e-9)
                passed = ratio >= 1 - DEEP_PAGE_TOLERANCE
                out.append(
                    Target(
                        f"{label} deep page vs page one, {workers} worker(s)",
                        f"within {DEEP_PAGE_TOLERANCE:.0%} of page one",
                        f"{ratio:.2f} × page one's req/s (p50 {deep.result.p50_ms:.1f} vs "
                        f"{first.result.p50_ms:.1f} ms)",
                        ratio / (1 - DEEP_PAGE_TOLERANCE),
                        passed,
                        "" if passed else _why_deep(first_key, deep_key, self.worker_cpu),
                    )
                )
            if ping is None:
                continue
            for key, share in (("users", USERS_PAGE_OF_PING), ("user", CACHED_USER_OF_PING)):
                route = self.load(workers, key)
                if route is None:
                    continue
                ratio = route.result.rps / max(ping.result.rps, 1e-9)
                passed = ratio >= share
                out.append(
                    Target(
                        f"{route.route.label}, {workers} worker(s)",
                        f"≥ {share:.2f} × /ping req/s",
                        f"{ratio:.2f} × ({route.result.rps:,.0f} vs {ping.result.rps:,.0f} req/s)",
                        ratio / share,
                        passed,
                        "" if passed else _why_http(key, route, ping, self.worker_cpu),
                    )
                )
        return out

    def _export_target(self) -> list[Target]:
        if self.export is None:
            return []
        e = self.export
        fast = e.rows_per_second >= EXPORT_ROWS_PER_S
        flat = e.growth_after_warmup_mib <= EXPORT_FLAT_MIB
        reasons = []
        if not fast:
            reasons.append(
                "PostgreSQL writes each line (`row_to_json`, about 3.7 µs of CPU a row measured "
                "apart: `COPY (<the export query> LIMIT 1000000) TO '/dev/null'`) and sends it "
                "as COPY data; the server passes chunks on (about 0.9 µs a row) and the client "
                "reads them, on the same two cores. A fresh database is slower until its heap "
                "is in memory"
            )
        if not flat:
            reasons.append(f"RSS grew {e.growth_after_warmup_mib:.0f} MiB after warm-up")
        return [
            Target(
                "audit export",
                f"≥ {EXPORT_ROWS_PER_S:,} rows/s, RSS flat (≤ {EXPORT_FLAT_MIB:g} MiB growth "
                "after the first tenth)",
                f"{e.rows_per_second:,.0f} rows/s; RSS {e.rss_after_warmup_mib:.0f} → peak "
                f"{e.rss_peak_mib:.0f} MiB",
                min(
                    e.rows_per_second / EXPORT_ROWS_PER_S,
                    EXPORT_FLAT_MIB / max(e.growth_after_warmup_mib, 1e-6),
                ),
                fast and flat,
                "; ".join(reasons),
            )
        ]

    def summary(self) -> str:
        lines = [
            f"fund bench: {self.sizes[0]:,} users, {self.sizes[1]:,} audit logs (seed "
            f"{self.sizes[2]}) on {self.machine.cores} cores",
        ]
        for target in self.targets():
            mark = "PASS" if target.passed else "MISS"
            lines.append(f"  {mark}  {target.name}: {target.measured}  [bar: {target.bar}]")
        if self.search:
            gains = [
                s.unindexed.execution_ms / max(s.indexed.execution_ms, 1e-6) for s in self.search
            ]
            lines.append(f"  indexes: {min(gains):,.0f}× to {max(gains):,.0f}× faster page one")
        for n in self.n_plus_one:
            lines.append(
                f"  N+1 page of {n.page_size}: {n.naive_ms:.1f} ms / {n.naive_statements} "
                f"statements vs include {n.include_ms:.1f} ms / {n.include_statements}"
            )
        if self.cache is not None:
            lines.append(
                f"  cache: miss p50 {self.cache.miss_p50_ms:.2f} ms, hit p50 "
                f"{self.cache.hit_p50_ms:.2f} ms"
            )
        return "\n".join(lines)


def _seeding(db: BenchDatabase) -> str:
    seeded = (
        f"seeded in {db.seed_seconds:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in db.seed_phases.items())
        + ")"
        if db.seed_seconds
        else ""
    )
    if not db.reused:
        return seeded
    reused = "reused from an earlier run with the same sizes and seed"
    return f"{reused}, which {seeded} on {_when(db.seeded_at)}" if seeded else reused


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment is not None else "date not kept"


def _why_deep(first: str, deep: str, cpu: Mapping[str, float]) -> str:
    measured = (
        f"in-process, a deep page costs a worker {cpu[deep]:.3f} ms of CPU against "
        f"{cpu[first]:.3f} ms for page one ({cpu[deep] / cpu[first] - 1:+.0%}): "
        if first in cpu and deep in cpu
        else ""
    )
    return (
        f"{measured}a page from a cursor checks the cursor's signature, signs two cursors and "
        "reads a one-row probe beside the page (`UNION ALL`); PostgreSQL's share is in the "
        "depth table. Beyond that, the ratio moves with the machine's noise from run to run"
    )


_ADDS = {
    "user": "FastAPI resolving two dependencies and the path's id, the token's signature, "
    "one Redis round trip (an MGET of the caller's entry and the user's)",
    "users": "FastAPI resolving three dependencies (one reads the query string into a model), "
    "the token's signature, the caller's Redis read, a pooled connection and the asyncpg "
    "statement, rows to dicts, a signed cursor and orjson",
}


def _why_http(key: str, route: LoadRun, ping: LoadRun, cpu: Mapping[str, float]) -> str:
    per_request = 1000 / max(route.result.rps, 1e-9)
    floor = 1000 / max(ping.result.rps, 1e-9)
    why = (
        f"each request costs {per_request:.2f} ms of the cores against {floor:.2f} ms for /healthz"
    )
    if key in cpu and "ping" in cpu:
        why += (
            f"; in-process (no HTTP) the route costs a worker {cpu[key]:.3f} ms of CPU against "
            f"{cpu['ping']:.3f} ms for /healthz ({cpu['ping'] / cpu[key]:.2f} ×)"
        )
    sharing = "wrk" if route.generator == "wrk" else "the Python load generator"
    return (
        f"{why}. What the route adds: {_ADDS[key]}; {sharing}, PostgreSQL and Redis share the cores"
    )


def _failures(run: LoadRun) -> str:
    if not run.result.errors:
        return "0"
    by_status = ", ".join(f"{n} × {status}" for status, n in sorted(run.result.failures.items()))
    return f"{run.result.errors} ({by_status})"


def _fmt_ms(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def write_report(run: BenchRun, output: Path) -> list[Path]:
    """REPORT.md and its charts under ``output``; returns the report path then the charts."""
    from fund.bench import charts

    output.mkdir(parents=True, exist_ok=True)
    written = charts.draw_all(run, output)
    report = output / "REPORT.md"
    report.write_text("\n".join(_markdown(run, [p.name for p in written])) + "\n")
    return [report, *written]


def _markdown(run: BenchRun, chart_names: list[str]) -> list[str]:
    users, logs, seed = run.sizes
    m = run.machine
    db = run.database
    lines = [
        "# Benchmark report",
        "",
        f"{users:,} users and {logs:,} audit logs (seed {seed}), measured on "
        f"{run.started:%Y-%m-%d %H:%M} UTC. Every figure below comes from this one run of",
        "",
        f"    {run.full_command}",
        "",
        "Absolute figures are of this machine; the ratios are what each optimisation buys.",
        "",
        *(
            [f"Scenarios in this run: {', '.join(run.scenarios)} (`--only`).", ""]
            if len(run.scenarios) < len(SCENARIOS)
            else []
        ),
        "## Machine",
        "",
        *_table(
            ["", ""],
            [
                ["cores", f"{m.cores} ({m.cpu})"],
                ["memory", f"{m.memory_gib:.1f} GiB"],
                ["system", m.system],
                ["PostgreSQL", m.postgres],
                ["Redis", m.redis],
                ["Python", m.python],
                ["load average at start", " / ".join(f"{x:.2f}" for x in m.load_average)],
                [
                    "data",
                    f"database `{db.name}`, {_seeding(db)}",
                ],
            ],
        ),
        "",
        "PostgreSQL, Redis, the server and the load generator all share these cores.",
        "",
    ]
    lines += _targets_section(run, chart_names)
    lines += _search_section(run, chart_names)
    lines += _depth_section(run, chart_names)
    lines += _n_plus_one_section(run, chart_names)
    lines += _cache_section(run, chart_names)
    lines += _export_section(run, chart_names)
    lines += _http_section(run, chart_names)
    lines += [
        "## How these were measured",
        "",
        "- Database figures are PostgreSQL's own `Execution Time` from `EXPLAIN (ANALYZE, "
        "BUFFERS)`, median of the runs after a warm-up run, of the exact SQL and parameters "
        "the repositories send (recorded while the real repository method runs), replayed "
        "in order with the planner settings they were sent under; a page that reads before "
        "its page statement (a search with no trigram looks at the rows nearest first) "
        "counts both.",
        "- Without the indexes means: `BEGIN; DROP INDEX …` (every index of the table that "
        "backs no constraint); `EXPLAIN ANALYZE …; ROLLBACK`. The data is never changed.",
        "- N+1 and include are wall-clock times of a fresh session each, through the "
        "repositories, statements counted on the engine.",
        "- HTTP figures come from `fund serve` started on a free loopback port against the "
        "bench database, with a token from `POST /api/v1/auth/token`. Each route is first "
        "asked once and answered (a cold cache entry is built then: `/stats` takes over half "
        "a second at 10M entries), then gets a warm-up run before the measured one (not in a "
        "`--quick` run). The server logs at WARNING, so it writes no access line per request "
        "(docs/OPERATIONS.md, Logs, has what one costs); what it logged is printed after it "
        "stops.",
        "",
    ]
    return lines


def _chart(name: str, chart_names: list[str], alt: str) -> list[str]:
    return [f"![{alt}]({name})", ""] if name in chart_names else []


def _targets_section(run: BenchRun, chart_names: list[str]) -> list[str]:
    targets = run.targets()
    if not targets:
        return []
    rows = [
        [t.name, t.bar, t.measured, "**PASS**" if t.passed else "**MISS**", t.why or "—"]
        for t in targets
    ]
    return [
        "## Targets",
        "",
        *_table(["target", "bar", "measured", "", "why, where missed"], rows),
        "",
        *_chart("targets.png", chart_names, "measured over the bar, per target"),
    ]


def _search_section(run: BenchRun, chart_names: list[str]) -> list[str]:
    if not run.search:
        return []
    rows = [
        [
            f"{s.table}: {s.name}",
            _fmt_ms(s.unindexed.execution_ms),
            _fmt_ms(s.indexed.execution_ms),
            f"{s.unindexed.execution_ms / max(s.indexed.execution_ms, 1e-6):,.0f}×",
            f"{_fmt_ms(s.deep.execution_ms)} (at {s.depth:,})",
            f"`{s.indexed.scan}`",
            f"`{s.unindexed.scan}`",
        ]
        for s in run.search
    ]
    return [
        "## List queries with and without their indexes",
        "",
        "A page of 20, newest first; server execution time in ms.",
        "",
        *_table(
            [
                "query",
                "no index",
                "indexed",
                "gain",
                "indexed, deep cursor",
                "plan (indexed)",
                "plan (no index)",
            ],
            rows,
        ),
        "",
        *_chart("search_indexes.png", chart_names, "with and without indexes"),
        f"Reproduce: `{run.commands['search']}`",
        "",
    ]


def _depth_section(run: BenchRun, chart_names: list[str]) -> list[str]:
    if not run.depth:
        return []
    rows = [
        [
            d.table,
            f"{d.depth:,}",
            _fmt_ms(d.offset.execution_ms),
            _fmt_ms(d.cursor.execution_ms),
            f"{d.offset.execution_ms / max(d.cursor.execution_ms, 1e-6):,.1f}×",
            f"{d.offset.buffers:,} / {d.cursor.buffers:,}",
        ]
        for d in run.depth
    ]
    return [
        "## OFFSET against cursor",
        "",
        "The default listing, a page of 20 at each depth; server execution time in ms.",
        "",
        *_table(
            ["table", "depth", "OFFSET", "cursor", "OFFSET / cursor", "buffers OFFSET / cursor"],
            rows,
        ),
        "",
        *_chart("offset_vs_cursor.png", chart_names, "OFFSET against cursor by depth"),
        f"Reproduce: `{run.commands['depth']}`",
        "",
    ]


def _n_plus_one_section(run: BenchRun, chart_names: list[str]) -> list[str]:
    if not run.n_plus_one:
        return []
    rows = [
        [
            str(n.page_size),
            f"{_fmt_ms(n.naive_ms)} ms, {n.naive_statements} statements",
            f"{_fmt_ms(n.include_ms)} ms, {n.include_statements} statements",
            f"{n.naive_ms / max(n.include_ms, 1e-6):.1f}×",
        ]
        for n in run.n_plus_one
    ]
    return [
        "## N+1 against `include=audit_logs`",
        "",
        "A page of users with each one's 5 newest audit entries: one query per user, as "
        "`GET /audit-logs?user_id=…&limit=5` reads them (`AuditRepository.page_rows`, each "
        "in its read-only transaction that begins with its planner settings), against one "
        "LATERAL query for the page (`AuditRepository.latest_rows_by_actors`). Wall time of "
        "a fresh session, median. Statements are all those sent, the planner settings "
        "included.",
        "",
        *_table(["page size", "1 + N", "include (constant)", "gain"], rows),
        "",
        *_chart("n_plus_one.png", chart_names, "N+1 against include"),
        f"Reproduce: `{run.commands['nplusone']}`",
        "",
    ]


def _cache_section(run: BenchRun, chart_names: list[str]) -> list[str]:
    c = run.cache
    if c is None:
        return []
    return [
        "## Cache miss against hit",
        "",
        f"`GET /users/{{id}}` for {c.samples} ids, each read twice in a row on one keep-alive "
        "connection (1 worker): the first read misses (PostgreSQL, then populates Redis), the "
        "second hits. Client-side latency in ms. "
        + (
            "Every response carried the expected `X-Cache` header."
            if c.labels_ok
            else "**Some responses did not carry the expected `X-Cache` header.**"
        ),
        "",
        *_table(
            ["", "p50", "p99"],
            [
                ["miss", _fmt_ms(c.miss_p50_ms), _fmt_ms(c.miss_p99_ms)],
                ["hit", _fmt_ms(c.hit_p50_ms), _fmt_ms(c.hit_p99_ms)],
                [
                    "miss / hit",
                    f"{c.miss_p50_ms / max(c.hit_p50_ms, 1e-6):.2f}×",
                    f"{c.miss_p99_ms / max(c.hit_p99_ms, 1e-6):.2f}×",
                ],
            ],
        ),
        "",
        *_chart("cache.png", chart_names, "cache miss against hit"),
        f"Reproduce: `{run.commands['cache']}`",
        "",
    ]


def _export_section(run: BenchRun, chart_names: list[str]) -> list[str]:
    e = run.export
    if e is None:
        return []
    return [
        "## Audit export",
        "",
        "`GET /api/v1/audit-logs/export?format=jsonl&include_deleted=true`, "
        + (
            "the whole table, "
            if e.complete
            else f"cut after {e.seconds:.0f} s (`--export-seconds`) at {e.rows:,} rows, "
        )
        + "read by one client; the server's resident memory (all its processes) sampled every "
        "0.1 s while it streams.",
        "",
        *_table(
            ["rows", "MiB sent", "seconds", "rows/s", "RSS start", "RSS after first tenth", "peak"],
            [
                [
                    f"{e.rows:,}",
                    f"{e.bytes / 2**20:,.0f}",
                    f"{e.seconds:.1f}",
                    f"{e.rows_per_second:,.0f}",
                    f"{e.rss_start_mib:.0f} MiB",
                    f"{e.rss_after_warmup_mib:.0f} MiB",
                    f"{e.rss_peak_mib:.0f} MiB",
                ]
            ],
        ),
        "",
        *_chart("export_memory.png", chart_names, "server memory while exporting"),
        f"Reproduce: `{run.commands['export']}`",
        "",
    ]


def _http_section(run: BenchRun, chart_names: list[str]) -> list[str]:
    if not run.http:
        return []
    rows = []
    for r in run.http:
        ping = run.load(r.workers, "ping")
        of_ping = r.result.rps / ping.result.rps if ping and ping.result.rps else 0.0
        rows.append(
            [
                r.route.label,
                str(r.workers),
                f"{r.result.rps:,.0f}",
                f"{of_ping:.2f}",
                _fmt_ms(r.result.p50_ms),
                _fmt_ms(r.result.p99_ms),
                f"{r.result.requests:,}",
                _failures(r),
            ]
        )
    generators = sorted({r.generator for r in run.http})
    wrk = all(r.generator == "wrk" for r in run.http)
    return [
        "## HTTP on loopback",
        "",
        f"Load generator: {', '.join(generators)}; {run.http[0].result.seconds:.0f} s per route "
        "with keep-alive connections. The deep-cursor routes start 900,000 rows in (or as deep "
        "as the data allows); "
        + (
            "`GET /users/{id}` reads one warm id (wrk takes one URL)."
            if wrk
            else "`GET /users/{id}` rotates over 100 warm ids."
        ),
        "",
        (
            "wrk, the server, PostgreSQL and Redis share the cores. With one worker the server "
            "process is the bottleneck and wrk runs beside it, so the `× /ping` ratios are "
            "close to the server's own; MEASURED.md has this machine kind's floors under the "
            "same wrk settings (`/ping` 12,900 req/s with 1 worker)."
            if wrk
            else "wrk is not installed here (Debian and Ubuntu: `apt-get install wrk`), so a "
            "Python generator made these figures. It shares the cores with the server and "
            "costs more CPU per request than wrk, so it bounds the `/healthz` floor lowest: "
            "the `× /ping` ratios below read better than they would against a wrk floor "
            "(MEASURED.md: `/ping` 12,900 req/s with 1 worker under wrk on this machine)."
        ),
        "",
        *_table(
            ["route", "workers", "req/s", "× /ping", "p50 ms", "p99 ms", "requests", "errors"],
            rows,
        ),
        "",
        *_chart("http_rps.png", chart_names, "requests per second by route"),
        *_chart("http_latency.png", chart_names, "p50 and p99 by route"),
        f"Reproduce: `{run.commands['http']}`. One load run, as the generator ran it: "
        f"`{run.http[0].command}`",
        "",
        *_worker_cpu_section(run),
    ]


def _worker_cpu_section(run: BenchRun) -> list[str]:
    if not run.worker_cpu:
        return []
    labels = {r.route.key: r.route.label for r in run.http}
    floor = run.worker_cpu.get("ping")
    rows = [
        [
            labels.get(key, key),
            f"{ms:.3f}",
            f"{floor / ms:.2f}" if floor else "–",
        ]
        for key, ms in run.worker_cpu.items()
    ]
    return [
        "### A worker's CPU per request, in-process",
        "",
        "The same routes called through ASGI in a loop, in the benchmark's own process (no "
        "HTTP, no load generator): milliseconds of that process's CPU per request, the best "
        "of five rounds (`fund.bench.inprocess`). It is what a route costs a worker by "
        "itself; PostgreSQL's and Redis's own work is not in it. `× /healthz` is the "
        "requests/s ratio a worker alone could reach.",
        "",
        *_table(["route", "ms of CPU", "× /healthz"], rows),
        "",
    ]
