"""``fund bench``'s command line: what it takes and the defaults of a full run.

Apart from the rest of the bench, whose imports (the app, matplotlib's report, the load
generator) take most of a second: ``fund --help`` and a mistyped option answer at once.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from fund.kit.arguments import whole_number

SCENARIOS = ("search", "depth", "nplusone", "cache", "export", "http")
DEFAULT_OUTPUT = Path("docs/benchmarks")
FULL_USERS = 1_000_000
FULL_AUDIT_LOGS = 10_000_000
"""The sizes of the report the repository keeps (``DEFAULT_OUTPUT``)."""


MIN_USERS = 100
MIN_AUDIT_LOGS = 1_000
MAX_WORKERS = 64


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 86_400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be more than 0 and less than a day, not {text}")
    return value


def _worker_counts(text: str) -> str:
    """``1,2``: each a worker count the HTTP scenario starts a server with."""
    counts = [part.strip() for part in text.split(",") if part.strip()]
    if not counts or not all(c.isdigit() and 1 <= int(c) <= MAX_WORKERS for c in counts):
        raise argparse.ArgumentTypeError(
            f"expected worker counts 1..{MAX_WORKERS}, comma-separated (e.g. 1,2), not {text!r}"
        )
    return ",".join(str(int(c)) for c in counts)


def _scenarios(text: str) -> str:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if not names or unknown:
        named = ", ".join(unknown) or repr(text)
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s): {named}; choose from {','.join(SCENARIOS)}"
        )
    return ",".join(names)


def _database_name(text: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", text):
        raise argparse.ArgumentTypeError(
            f"a database name of lower-case letters, digits and _ (63 at most), not {text!r}"
        )
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--users", type=whole_number(MIN_USERS), default=FULL_USERS, help="users to seed"
    )
    parser.add_argument(
        "--audit-logs",
        type=whole_number(MIN_AUDIT_LOGS),
        default=FULL_AUDIT_LOGS,
        help="audit logs to seed",
    )
    parser.add_argument(
        "--seed", type=whole_number(0), default=42, help="seed of the synthetic data"
    )
    parser.add_argument(
        "--database",
        type=_database_name,
        default=None,
        help="the bench's own database, created on the configured server (default fund_bench; "
        "fund_bench_quick with --quick, so a smoke run never replaces the full-size data); "
        "an existing database the bench did not make is never dropped",
    )
    parser.add_argument(
        "--redis-db",
        type=whole_number(0, 15),
        default=14,
        help="the bench's own Redis database number (default 14), flushed before the HTTP "
        "scenarios so no entry from other data is served",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"report directory (default {DEFAULT_OUTPUT} for a full run at the default sizes; "
        "otherwise benchmarks/ in FUND_DATA_DIR, so the report kept in the repository is never "
        "replaced by a smaller one)",
    )
    parser.add_argument(
        "--repeats", type=whole_number(1), default=5, help="EXPLAIN runs per query (median)"
    )
    parser.add_argument("--http-seconds", type=_seconds, default=10.0, help="load time per route")
    parser.add_argument(
        "--connections", type=whole_number(1, 1024), default=32, help="concurrent connections"
    )
    parser.add_argument(
        "--workers",
        type=_worker_counts,
        default="1,2",
        help="server worker counts to load, comma-separated",
    )
    parser.add_argument(
        "--export-seconds",
        type=_seconds,
        default=120.0,
        help="stop reading the export after this many seconds (the rate is over what was read)",
    )
    parser.add_argument(
        "--cache-samples", type=whole_number(1), default=200, help="ids read miss then hit"
    )
    parser.add_argument(
        "--only",
        type=_scenarios,
        default=",".join(SCENARIOS),
        help=f"scenarios to run: {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a seconds-long smoke run: 2,000 users, 20,000 audit logs, 1 s per route, 1 worker",
    )
