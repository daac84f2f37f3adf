"""Settings: environment variables with the ``FUND_`` prefix, and an optional ``.env``."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import structlog
from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

log = structlog.get_logger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
ENV_PREFIX = "FUND_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_POSTGRESQL_SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg"}
_URL_PARAMETERS = {"host", "port", "ssl", "sslmode", "target_session_attrs"}
"""What a database URL's query may hold: what both asyncpg's ``connect()`` and its DSN take
(``host``/``port`` for a socket directory or several hosts; ``sslmode`` read as ``ssl``)."""
_REDIS_SCHEMES = {"redis", "rediss", "unix"}


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class UnsafeSettingsError(RuntimeError):
    """A production process was asked to start with a development-only default."""


_HOUR = 3600
_YEAR = 365 * 24 * _HOUR


class Settings(BaseSettings):
    # An empty variable counts as unset, as the shell's ``FUND_X=`` and an unexpanded
    # ``${X}`` in a deployment mean: never an empty signing key, never "" for a database.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True
    )

    env: Environment = Environment.DEVELOPMENT
    database_url: str | None = None
    """``postgresql+asyncpg://…``; unset runs an embedded PostgreSQL under ``data_dir``."""
    redis_url: str | None = None
    """Unset: ``redis://127.0.0.1:6379/0``; in development an embedded server if none answers."""
    secret_key: SecretStr | None = None
    """Signs access tokens and cursors. Unset: a random key kept under ``data_dir``."""
    data_dir: Path = Path(".fund")
    access_token_minutes: int = Field(default=30, ge=1, le=24 * 60)
    # Every number has a range: a value past it (a typo, `inf`) is refused at start, exit 2,
    # rather than accepted and failing later (a TTL Redis cannot take switched the cache off
    # silently; a statement timeout past PostgreSQL's int failed every connection).
    cache_user_ttl: int = Field(default=300, ge=1, le=_YEAR)
    cache_stats_ttl: int = Field(default=3600, ge=1, le=_YEAR)
    docs_enabled: bool | None = None
    """Serve ``/docs``; defaults to on except in production."""
    behind_tls: bool = False
    """Set HSTS on responses (the service sits behind a TLS-terminating proxy)."""
    trust_forwarded_for: bool = False
    """Take the client IP and scheme from ``X-Forwarded-For``/``-Proto`` (only behind a proxy)."""
    max_request_bytes: int = Field(default=1_048_576, ge=1024, le=1 << 30)
    """Largest request body accepted; a larger one is answered 413 without reading it all."""
    shutdown_timeout: int = Field(default=30, ge=1, le=_HOUR)
    """Seconds a stopping worker waits for requests in flight before closing them."""

    db_pool_size: int = Field(default=20, ge=1, le=1000)
    db_max_overflow: int = Field(default=0, ge=0, le=1000)
    """Extra connections beyond ``db_pool_size``; each is closed when it comes back, so a load
    that keeps needing them opens a PostgreSQL backend every few requests (OPERATIONS.md)."""
    db_pool_timeout: float = Field(default=5.0, gt=0, le=_HOUR, allow_inf_nan=False)
    db_connect_timeout: float = Field(default=5.0, gt=0, le=_HOUR, allow_inf_nan=False)
    exports_per_worker: int | None = Field(default=None, ge=1, le=1000)
    """Audit exports a worker streams at once, each on a pooled connection for as long as it
    lasts; one more waits up to ``db_pool_timeout`` for a turn, then gets a 503. Unset: half
    of ``db_pool_size``, so exports never take the connections every other request needs."""
    db_statement_timeout_ms: int = Field(default=15_000, ge=0, le=2**31 - 1)  # PostgreSQL's int
    redis_socket_timeout: float = Field(default=0.05, gt=0, le=60, allow_inf_nan=False)
    """Redis socket timeout in seconds: a hung Redis costs at most this per call."""
    redis_breaker_cooldown: float = Field(default=2.0, gt=0, le=_HOUR, allow_inf_nan=False)
    """Seconds the cache stays bypassed after a failure before Redis is probed again."""

    login_max_failures: int = Field(default=5, ge=1, le=1000)
    login_lockout_seconds: int = Field(default=300, ge=1, le=_YEAR)
    log_json: bool | None = None
    """JSON log lines; defaults to on except in development."""
    log_level: str = "INFO"
    """One of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case)."""

    @field_validator("database_url")
    @classmethod
    def _postgresql_url(cls, value: str | None) -> str | None:
        """A PostgreSQL URL for asyncpg. ``postgresql://`` (libpq's form) is read as
        ``postgresql+asyncpg://``, and its ``sslmode`` as asyncpg's ``ssl``, which takes
        the same values; anything else is refused here, in one line, not by the driver."""
        if value is None:
            return None
        try:
            url = make_url(value)
            port = url.port
        except (ArgumentError, ValueError):
            raise ValueError(
                "not a database URL; expected postgresql+asyncpg://user@host:port/database"
            ) from None
        if url.drivername not in _POSTGRESQL_SCHEMES:
            raise ValueError(
                f"{url.drivername}:// is not a database fund runs on; "
                "expected postgresql+asyncpg://user@host:port/database"
            )
        if port is not None and not 1 <= port <= 65535:
            raise ValueError("the port must be between 1 and 65535")
        if not url.database:
            # asyncpg would take the user's name for it: `postgres`, the maintenance database.
            raise ValueError("name the database: postgresql+asyncpg://user@host:port/database")
        query = dict(url.query)
        unknown = sorted(set(query) - _URL_PARAMETERS)
        if unknown:
            # asyncpg takes the query as keyword arguments and has none of these (a TypeError
            # deep in the first connection). Say which, and what stands for the usual ones.
            raise ValueError(
                f"the URL parameter {unknown[0]!r} is not supported (supported: "
                f"{', '.join(sorted(_URL_PARAMETERS))}; the connect timeout is "
                "FUND_DB_CONNECT_TIMEOUT, the statement timeout FUND_DB_STATEMENT_TIMEOUT_MS)"
            )
        if "sslmode" in query:
            query.setdefault("ssl", query["sslmode"])
            del query["sslmode"]
        url = url.set(drivername="postgresql+asyncpg", query=query)
        return url.render_as_string(hide_password=False)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises on a port out of range)
        except ValueError:
            raise ValueError("not a Redis URL; expected redis://host:port/db") from None
        if parts.scheme not in _REDIS_SCHEMES:
            raise ValueError("expected redis://, rediss:// or unix://")
        # redis-py reads a database number it cannot parse as none, which is database 0:
        # a typo would move the cache into a database another application may use.
        query = parse_qsl(parts.query, keep_blank_values=True)
        numbers = [value for name, value in query if name == "db"]
        if parts.scheme != "unix" and parts.path not in ("", "/"):
            numbers.append(parts.path[1:])
        if not all(number.isascii() and number.isdigit() for number in numbers):
            raise ValueError("the database must be a number: redis://host:port/0")
        return value

    @field_validator("data_dir")
    @classmethod
    def _a_directory(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file, not a directory")
        return value

    @field_validator("secret_key")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be blank; unset it for a generated key in development")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError("expected one of " + ", ".join(LOG_LEVELS))
        return level

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.env is Environment.PRODUCTION:
            missing = []
            if self.secret_key is None:
                missing.append("FUND_SECRET_KEY")
            if self.database_url is None:
                missing.append("FUND_DATABASE_URL (the embedded database is for development)")
            if missing:
                raise UnsafeSettingsError(
                    "FUND_ENV=production refuses unsafe defaults; set " + ", ".join(missing)
                )
            if len(self.secret_key.get_secret_value().strip()) < 32:  # type: ignore[union-attr]
                raise UnsafeSettingsError("FUND_SECRET_KEY must be at least 32 characters")
        return self

    @property
    def export_slots(self) -> int:
        return self.exports_per_worker or max(1, self.db_pool_size // 2)

    @property
    def is_production(self) -> bool:
        return self.env is Environment.PRODUCTION

    @property
    def docs_on(self) -> bool:
        return self.docs_enabled if self.docs_enabled is not None else not self.is_production

    @property
    def logs_as_json(self) -> bool:
        return (
            self.log_json if self.log_json is not None else self.env is not Environment.DEVELOPMENT
        )

    def effective_redis_url(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL

    def secret(self) -> bytes:
        """The signing secret; in development a random one is made once and kept on disk."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / "secret_key"
        if path.exists():
            # Every start says so, not only the one that made it (API.md: "with a warning").
            log.warning("secret_key_from_data_dir", path=str(path), hint="set FUND_SECRET_KEY")
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # Written whole and readable by its owner only before it appears under its name
            # (a hard link fails if the name exists): a process that gets here at the same
            # moment reads the one key that won, never a half-written or second one.
            draft = path.with_name(f".secret_key.{secrets.token_hex(8)}")
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48))
            try:
                os.link(draft, path)
                log.warning("secret_key_generated", path=str(path), hint="set FUND_SECRET_KEY")
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        return path.read_text().strip().encode()


@lru_cache
def get_settings() -> Settings:
    return Settings()


_OTHER_VARIABLES = {
    "FUND_TEST_POSTGRES_URL",  # the test suite's servers (tests/services.py)
    "FUND_TEST_REDIS_URL",
}


def variables_given(env_file: Path = Path(".env")) -> list[str]:
    """The names of the variables the settings are read from: the environment's and those
    of the ``.env`` file, if there is one (``Settings`` reads both)."""
    names = list(os.environ)
    try:
        names.extend(dotenv_values(env_file))
    except (OSError, UnicodeDecodeError):  # unreadable: ``Settings`` has said so already
        pass
    return names


def unknown_variables(environ: Iterable[str] = os.environ) -> list[str]:
    """``FUND_`` variables that are no setting: a misspelt one is otherwise silently
    ignored, and its default used."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | _OTHER_VARIABLES
    return sorted(  # a set: a name in the environment and in .env is named once
        {
            name
            for name in environ
            if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
        }
    )


def validation_message(message: str) -> str:
    """A validation error's message as a reader should see it: pydantic prefixes the ones
    our validators raise with ``Value error, ``, which says nothing to them."""
    return message.removeprefix("Value error, ")


def settings_problem(exc: ValidationError | UnsafeSettingsError | UnicodeDecodeError) -> str:
    """What is wrong with the settings, one line per variable, naming it as the operator
    set it; never the value (it may be a password or a key)."""
    if isinstance(exc, UnsafeSettingsError):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return f"the .env file is not UTF-8 text ({exc.reason} at byte {exc.start})"
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        name = ENV_PREFIX + "_".join(str(part) for part in error["loc"]).upper()
        message = validation_message(error["msg"])
        lines.append(f"{name}: {message}")
    return "\n".join(lines)
