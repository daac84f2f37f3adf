"""The fund command: serve the API, migrate the database, create users, seed data, benchmark.

Settings come from FUND_* environment variables and an optional .env file (README.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import io
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from fund.bench.arguments import add_arguments as add_bench_arguments
from fund.kit.arguments import whole_number

if TYPE_CHECKING:
    from alembic.config import Config

    from fund.config import Settings

# The rest (pydantic settings, SQLAlchemy, asyncpg, Alembic, the app) is imported once the
# command line has been read: `fund --help` and a mistyped option answer in a tenth of a
# second instead of a second.


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    import asyncpg
    from alembic.util import CommandError
    from pydantic import ValidationError
    from sqlalchemy.exc import DBAPIError

    from fund.config import (
        UnsafeSettingsError,
        get_settings,
        settings_problem,
        unknown_variables,
        variables_given,
    )
    from fund.kit import embedded
    from fund.kit.logging import configure_logging

    try:
        settings = get_settings()
    except (UnsafeSettingsError, ValidationError, UnicodeDecodeError) as exc:
        for line in settings_problem(exc).splitlines():
            print(f"fund: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    for name in unknown_variables(variables_given()):
        print(f"fund: warning: {name} is not a setting (misspelt?); ignored", file=sys.stderr)
    configure_logging(json=settings.logs_as_json, level=settings.log_level)
    # SIGTERM (a process manager stopping us) and SIGHUP (the terminal closed) must unwind
    # like Ctrl-C, so that the embedded servers this command started are stopped too: left
    # running, the embedded PostgreSQL would outlive every later run.
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGHUP, _raise_terminated)
    try:
        code = args.handler(args, settings)
    except (CommandError, DBAPIError, asyncpg.PostgresError, OSError) as exc:
        if isinstance(exc, OSError) and _in_data_dir(exc, settings.data_dir):
            # A setting's fault, as a bad value is: named, and exit 2.
            print(
                f"fund: FUND_DATA_DIR: cannot use {exc.filename}: {exc.strerror}", file=sys.stderr
            )
            code = 2
        else:
            # The environment's fault (no database there, no such revision), not the code's:
            # one line that says what to fix, no traceback.
            print(f"fund: {_environment_error(exc)}", file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        print("fund: interrupted", file=sys.stderr)
        code = 130
    except Terminated as stop:
        code = 128 + stop.signum
    finally:
        embedded.stop_all()
    raise SystemExit(code or 0)


def _in_data_dir(exc: OSError, data_dir: Path) -> bool:
    """Whether ``exc`` is about ``FUND_DATA_DIR`` or a path in it (it cannot be made, say)."""
    if not exc.filename:
        return False
    path, base = Path(os.fsdecode(exc.filename)).absolute(), data_dir.absolute()
    return path == base or base in path.parents


def _environment_error(exc: BaseException) -> str:
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    # A table, column or type the code expects is missing: the schema is behind the code.
    not_migrated = {
        asyncpg.UndefinedTableError.sqlstate,
        asyncpg.UndefinedColumnError.sqlstate,
        asyncpg.UndefinedObjectError.sqlstate,  # the enums of migration 012, say
    }
    refused = isinstance(exc, DBAPIError | asyncpg.PostgresError)
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig  # the driver's message, without SQLAlchemy's statement and link
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        why = str(exc) or "no answer within FUND_DB_CONNECT_TIMEOUT"  # a timeout says nothing
        return f"cannot reach the database ({why}): is FUND_DATABASE_URL right, and is it up?"
    if getattr(exc, "sqlstate", None) in not_migrated:
        return (
            f"the database is not migrated for this version of fund ({str(exc).splitlines()[0]})"
            ": run `fund db upgrade`"
        )
    if refused:
        return f"the database refused: {str(exc).splitlines()[0]}"
    return str(exc)


MAX_WORKERS_PER_CORE = 8
MAX_WORKERS = MAX_WORKERS_PER_CORE * (os.cpu_count() or 1)
"""Past this, workers only share the cores, each with its own pool of connections: a typo
(``--workers 1000``) on a 2-core machine took its memory and every connection PostgreSQL had."""

FROM_STDIN = "-"
"""``--password -``: the password is the first line of standard input."""
MAX_ROWS = 1_000_000_000
"""The most rows ``fund seed`` makes of each kind in one run."""


def _revision(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a revision: e.g. 008, -1 or base")
    return text


class Terminated(Exception):
    """SIGTERM or SIGHUP arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def _hang_up_as_terminate(_signum: int, _frame: FrameType | None) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fund", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="apply pending migrations, then serve the HTTP API",
        description="Apply pending migrations, then serve the HTTP API until stopped "
        "(Ctrl-C or SIGTERM: requests in flight finish first).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=whole_number(1, 65535), default=8000, help="TCP port")
    serve.add_argument(
        "--workers",
        type=whole_number(1, MAX_WORKERS),
        default=1,
        help=f"worker processes (about one a core; at most {MAX_WORKERS_PER_CORE} a core)",
    )
    serve.set_defaults(handler=_serve)

    db = sub.add_parser("db", help="database migrations (Alembic)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply every pending migration").set_defaults(
        handler=_db_upgrade
    )
    down = db_sub.add_parser(
        "downgrade",
        help="revert to revision REV (e.g. 008, -1, base)",
        description="Revert the schema to revision REV. Reverting a migration drops what it "
        "made: below 001 (base) every table of the service goes, users and the whole audit "
        "trail with it.",
    )
    down.add_argument("revision", type=_revision, metavar="REV", help="e.g. 008, -1 or base")
    down.set_defaults(handler=_db_downgrade)
    db_sub.add_parser("current", help="show the applied revision").set_defaults(handler=_db_current)

    users = sub.add_parser("users", help="manage users")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    create = users_sub.add_parser(
        "create",
        help="create a user and print its id",
        description="Create a user (recorded in the audit trail as made by this command) and "
        "print its id.",
    )
    create.add_argument("--email", required=True, help="stored lower-case; unique")
    create.add_argument(
        "--password",
        required=True,
        help="at least 12 characters; - reads it from the first line of standard input, "
        "so it stays out of the shell's history and the process list",
    )
    create.add_argument("--role", required=True, help="ADMIN, ANALYST or VIEWER")
    create.add_argument(
        "--full-name", default=None, help="default: the part of the email before the @"
    )
    create.set_defaults(handler=_users_create)

    seed = sub.add_parser(
        "seed", help="bulk synthetic users and audit entries, deterministic per seed"
    )
    rows = whole_number(0, MAX_ROWS)
    seed.add_argument("--users", type=rows, required=True, help="users to add")
    seed.add_argument("--audit-logs", type=rows, required=True, help="audit entries to add")
    seed.add_argument(
        "--seed", type=whole_number(0), default=42, help="same seed, same rows (default 42)"
    )
    seed.set_defaults(handler=_seed)

    bench = sub.add_parser("bench", help="run the benchmark scenarios and write the report")
    bench.set_defaults(handler=_bench)
    add_bench_arguments(bench)
    return parser


def database_url(settings: Settings) -> str:
    """The configured database, or the embedded one started now (development only)."""
    from fund.kit import embedded

    if settings.database_url:
        return settings.database_url
    url = embedded.start_postgres(settings.data_dir)
    os.environ["FUND_DATABASE_URL"] = url  # worker processes and the app read it
    return url


def _settings_with_database(settings: Settings) -> Settings:
    from fund.config import get_settings

    url = database_url(settings)
    get_settings.cache_clear()
    return settings.model_copy(update={"database_url": url})


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn
    from alembic import command

    from fund.config import Environment, get_settings
    from fund.kit import embedded
    from fund.kit.http_protocol import JSONErrorsHttpToolsProtocol

    refused = _cannot_listen(args.host, args.port)
    if refused is not None:
        message, code = refused
        print(f"fund: {message}", file=sys.stderr)
        return code
    settings = _settings_with_database(settings)
    if (
        settings.redis_url is None
        and settings.env is Environment.DEVELOPMENT
        and not embedded.redis_answers(settings.effective_redis_url())
    ):
        os.environ["FUND_REDIS_URL"] = embedded.start_valkey(settings.data_dir)
        get_settings.cache_clear()
    assert settings.database_url is not None
    # Once, here, before any worker exists: workers never race on migrations.
    command.upgrade(_migrations(settings.database_url, settings), "head")
    # Made now when it is generated, so the workers all read the same key from disk.
    settings.secret()
    if settings.env is Environment.DEVELOPMENT:
        asyncio.run(_first_admin(settings))
    # uvicorn drains on SIGINT and SIGTERM only, and a signal handler that raises is lost
    # on its event loop: a closed terminal (SIGHUP) asks for the same stop as SIGTERM.
    # (Several workers: uvicorn's supervisor takes SIGHUP itself, to restart them.)
    signal.signal(signal.SIGHUP, _hang_up_as_terminate)
    with _metrics_directory(args.workers), contextlib.suppress(Terminated):
        # A single server re-raises SIGTERM after draining: a requested stop, a clean exit.
        uvicorn.run(
            "fund.main:create_worker_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_config=None,
            access_log=False,
            proxy_headers=settings.trust_forwarded_for,
            # Trusted from any peer, as the setting promises (reachable through the proxy
            # alone): uvicorn's default trusts only 127.0.0.1, so a proxy on another host
            # had its X-Forwarded-Proto ignored (no https, no HSTS).
            forwarded_allow_ips="*" if settings.trust_forwarded_for else None,
            timeout_graceful_shutdown=settings.shutdown_timeout,
            http=JSONErrorsHttpToolsProtocol,
        )
    return 0


def _cannot_listen(host: str, port: int) -> tuple[str, int] | None:
    """Why ``fund serve`` could not listen on ``host:port``, and its exit code (2: a bad
    ``--host``; 1: the address is taken or not this machine's); None if it can.

    Checked before the migrations and the embedded servers, so the error is one line at
    once rather than a traceback in uvicorn's log after the start-up. Each address the
    host resolves to is tried as asyncio's ``create_server`` binds them (uvicorn's one
    worker): one this machine does not have is skipped, one that is taken refuses. (The
    address could still be taken in between: uvicorn then reports it.)
    """
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"--host {host}: {exc.strerror}", 2
    except UnicodeError:  # an empty or overlong label: refused before any lookup
        return f"--host {host}: not a host name or address", 2
    unavailable: OSError | None = None
    bound = False
    for family, kind, protocol, _, address in found:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    return f"cannot listen on {host}:{port}: {exc.strerror or exc}", 1
                unavailable = exc
            else:
                bound = True
    if not bound and unavailable is not None:
        return f"cannot listen on {host}:{port}: {unavailable.strerror or unavailable}", 1
    return None


@contextmanager
def _metrics_directory(workers: int) -> Iterator[None]:
    """With several workers, an empty directory for their metric files, removed afterwards.

    It is set in the environment before uvicorn spawns the workers, so prometheus_client
    starts in multiprocess mode in each of them. A directory the operator set is used as is.
    """
    from fund.kit.metrics import MULTIPROC_DIR_ENV

    if workers <= 1 or os.environ.get(MULTIPROC_DIR_ENV):
        yield
        return
    path = tempfile.mkdtemp(prefix="fund-metrics-")
    os.environ[MULTIPROC_DIR_ENV] = path
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)
        del os.environ[MULTIPROC_DIR_ENV]


async def _first_admin(settings: Settings) -> None:
    from fund.bootstrap import create_first_admin

    created = await create_first_admin(settings)
    if created is not None:
        email, password = created
        print(
            f"\nCreated the first ADMIN (development only):\n  email:    {email}\n"
            f"  password: {password}\n",
            file=sys.stderr,
        )


def _migrations(url: str, settings: Settings, *, stdout: TextIO = sys.stdout) -> Config:
    """Alembic's configuration for ``url``, connecting as the service does (its timeout)."""
    from fund.db import alembic_config

    return alembic_config(url, connect_timeout=settings.db_connect_timeout, stdout=stdout)


def _db_upgrade(_: argparse.Namespace, settings: Settings) -> int:
    from alembic import command

    command.upgrade(_migrations(database_url(settings), settings), "head")
    return 0


def _db_downgrade(args: argparse.Namespace, settings: Settings) -> int:
    from alembic import command

    command.downgrade(_migrations(database_url(settings), settings), args.revision)
    return 0


def _db_current(_: argparse.Namespace, settings: Settings) -> int:
    from alembic import command

    shown = io.StringIO()
    command.current(_migrations(database_url(settings), settings, stdout=shown), verbose=False)
    print(shown.getvalue().strip() or "none: no migration applied (fund db upgrade applies them)")
    return 0


def _users_create(args: argparse.Namespace, settings: Settings) -> int:
    from fund.bootstrap import CreateUserFailed, create_user

    password = args.password
    if password == FROM_STDIN:
        password = sys.stdin.readline().rstrip("\r\n")
    settings = _settings_with_database(settings)
    try:
        user_id = asyncio.run(
            create_user(settings, args.email, password, args.role, args.full_name)
        )
    except CreateUserFailed as exc:
        print(f"fund: {exc}", file=sys.stderr)
        return 1
    print(user_id)
    return 0


def _seed(args: argparse.Namespace, settings: Settings) -> int:
    from fund.seed import run_seed

    settings = _settings_with_database(settings)
    return run_seed(settings, users=args.users, audit_logs=args.audit_logs, seed=args.seed)


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from fund.bench.runner import run_bench

    settings = _settings_with_database(settings)
    return run_bench(settings, args)
