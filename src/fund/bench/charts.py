"""PNG charts of a bench run (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.ticker import FuncFormatter, NullFormatter

from fund.bench.report import BenchRun

GOOD_COLOUR = "#2e7d32"
BAD_COLOUR = "#c62828"
BEFORE_COLOUR = "#9e9e9e"
AFTER_COLOUR = "#1565c0"


def draw_all(run: BenchRun, output: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    drawers: list[tuple[str, bool, Callable[[Any, BenchRun], None]]] = [
        ("targets.png", bool(run.targets()), _targets),
        ("search_indexes.png", bool(run.search), _search),
        ("offset_vs_cursor.png", bool(run.depth), _depth),
        ("n_plus_one.png", bool(run.n_plus_one), _n_plus_one),
        ("cache.png", run.cache is not None, _cache),
        ("export_memory.png", run.export is not None, _export),
        ("http_rps.png", bool(run.http), _http_rps),
        ("http_latency.png", bool(run.http), _http_latency),
    ]
    written = []
    for name, has_data, draw in drawers:
        path = output / name
        if not has_data:
            path.unlink(missing_ok=True)  # no stale chart from an earlier run
            continue
        figure = plt.figure(figsize=(9, 5), dpi=100)
        try:
            draw(figure, run)
            figure.tight_layout()
            figure.savefig(path)
        finally:
            plt.close(figure)
        written.append(path)
    return written


def _targets(figure: Any, run: BenchRun) -> None:
    targets = run.targets()
    ax = figure.add_subplot()
    names = [t.name for t in targets]
    ratios = [t.ratio for t in targets]
    colours = [GOOD_COLOUR if t.passed else BAD_COLOUR for t in targets]
    ax.barh(names, ratios, color=colours)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_yaxis()
    ax.set_xlabel("measured / bar (≥ 1 passes; log scale)")
    ax.set_title("Targets: green PASS, red MISS")
    for y, t in enumerate(targets):
        ax.text(t.ratio, y, f" {'PASS' if t.passed else 'MISS'}", va="center", fontsize=8)


def _search(figure: Any, run: BenchRun) -> None:
    ax = figure.add_subplot()
    names = [f"{s.table}: {s.name}" for s in run.search]
    ys = range(len(names))
    ax.barh(
        [y - 0.2 for y in ys],
        [s.unindexed.execution_ms for s in run.search],
        height=0.4,
        color=BEFORE_COLOUR,
        label="without indexes",
    )
    ax.barh(
        [y + 0.2 for y in ys],
        [max(s.indexed.execution_ms, 1e-3) for s in run.search],
        height=0.4,
        color=AFTER_COLOUR,
        label="with indexes",
    )
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--", label="1 ms bar")
    ax.set_xlabel("server execution time, ms (log scale)")
    ax.set_title("A page of 20: with and without the indexes")
    ax.legend(fontsize=8)


def _depth(figure: Any, run: BenchRun) -> None:
    ax = figure.add_subplot()
    # Depths as evenly spaced categories: 0 and 10k stay readable beside 900k.
    depths = sorted({d.depth for d in run.depth})
    slot = {depth: i for i, depth in enumerate(depths)}
    for table, marker in (("users", "o"), ("audit_logs", "s")):
        points = [d for d in run.depth if d.table == table]
        if not points:
            continue
        xs = [slot[d.depth] for d in points]
        ax.plot(
            xs,
            [d.offset.execution_ms for d in points],
            marker=marker,
            color=BEFORE_COLOUR,
            label=f"{table} OFFSET",
        )
        ax.plot(
            xs,
            [max(d.cursor.execution_ms, 1e-3) for d in points],
            marker=marker,
            color=AFTER_COLOUR,
            label=f"{table} cursor",
        )
    ax.set_xticks(range(len(depths)), [f"{d:,}" for d in depths])
    ax.set_yscale("log")
    ax.set_xlabel("rows before the page (0 is page one)")
    ax.set_ylabel("server execution time, ms (log scale)")
    ax.set_title("OFFSET against cursor, by depth")
    ax.legend(fontsize=8)


def _n_plus_one(figure: Any, run: BenchRun) -> None:
    ax = figure.add_subplot()
    sizes = [str(n.page_size) for n in run.n_plus_one]
    xs = range(len(sizes))
    naive = ax.bar(
        [x - 0.2 for x in xs],
        [n.naive_ms for n in run.n_plus_one],
        width=0.4,
        color=BEFORE_COLOUR,
        label="1 + N statements",
    )
    include = ax.bar(
        [x + 0.2 for x in xs],
        [n.include_ms for n in run.n_plus_one],
        width=0.4,
        color=AFTER_COLOUR,
        label="include=audit_logs (constant)",
    )
    ax.bar_label(naive, labels=[f"{n.naive_statements} stmts" for n in run.n_plus_one])
    ax.bar_label(include, labels=[f"{n.include_statements} stmts" for n in run.n_plus_one])
    ax.set_xticks(list(xs), [f"page of {s}" for s in sizes])
    ax.set_ylabel("wall time, ms")
    ax.set_title("Users with their 5 newest audit entries")
    ax.legend(fontsize=8)


def _cache(figure: Any, run: BenchRun) -> None:
    assert run.cache is not None
    c = run.cache
    ax = figure.add_subplot()
    xs = range(2)
    ax.bar(
        [x - 0.2 for x in xs],
        [c.miss_p50_ms, c.miss_p99_ms],
        0.4,
        color=BEFORE_COLOUR,
        label="miss",
    )
    ax.bar(
        [x + 0.2 for x in xs], [c.hit_p50_ms, c.hit_p99_ms], 0.4, color=AFTER_COLOUR, label="hit"
    )
    ax.set_xticks(list(xs), ["p50", "p99"])
    ax.set_ylabel("client latency, ms")
    ax.set_title("GET /users/{id}: cache miss against hit (1 worker, one connection)")
    ax.legend(fontsize=8)


def _export(figure: Any, run: BenchRun) -> None:
    assert run.export is not None
    e = run.export
    ax = figure.add_subplot()
    samples = [(0.0, 0, e.rss_start_mib), *e.samples]
    ax.plot([s[1] for s in samples], [s[2] for s in samples], color=AFTER_COLOUR)
    ax.set_xlabel("rows streamed")
    ax.set_ylabel("server RSS (all processes), MiB")
    ax.set_ylim(0, e.rss_peak_mib * 1.25)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_title(f"Audit export: {e.rows_per_second:,.0f} rows/s; server memory while streaming")


def _grouped_by_route(run: BenchRun) -> tuple[list[str], list[int]]:
    labels: list[str] = []
    for r in run.http:
        if r.route.label not in labels:
            labels.append(r.route.label)
    return labels, run.worker_counts


def _http_rps(figure: Any, run: BenchRun) -> None:
    labels, workers = _grouped_by_route(run)
    ax = figure.add_subplot()
    width = 0.8 / len(workers)
    for i, count in enumerate(workers):
        values = [(lr.result.rps if (lr := _find(run, count, label)) else 0.0) for label in labels]
        ax.barh(
            [y + i * width for y in range(len(labels))],
            values,
            height=width,
            label=f"{count} worker(s)",
        )
    ax.set_yticks([y + width * (len(workers) - 1) / 2 for y in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xlabel("requests/s")
    ax.set_title("HTTP on loopback: requests/s by route")
    ax.legend(fontsize=8)


def _http_latency(figure: Any, run: BenchRun) -> None:
    labels, workers = _grouped_by_route(run)
    ax = figure.add_subplot()
    width = 0.8 / (2 * len(workers))
    for i, count in enumerate(workers):
        for j, (name, pick) in enumerate((("p50", "p50_ms"), ("p99", "p99_ms"))):
            values = [
                (getattr(lr.result, pick) if (lr := _find(run, count, label)) else 0.0)
                for label in labels
            ]
            ax.barh(
                [y + (2 * i + j) * width for y in range(len(labels))],
                values,
                height=width,
                label=f"{name}, {count} worker(s)",
            )
    ax.set_yticks([y + width * (2 * len(workers) - 1) / 2 for y in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("latency, ms (log scale)")
    ax.set_title("HTTP on loopback: p50 and p99 by route")
    ax.legend(fontsize=8)


def _find(run: BenchRun, workers: int, label: str) -> Any:
    return next((r for r in run.http if r.workers == workers and r.route.label == label), None)
