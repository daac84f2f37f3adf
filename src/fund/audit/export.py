"""Serialising exported audit rows: JSON Lines or CSV, the same fields as the API."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import Row

from fund.audit.repository import EXPORT_COLUMNS
from fund.audit.schemas import rfc3339


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


MEDIA_TYPES = {ExportFormat.JSONL: "application/x-ndjson", ExportFormat.CSV: "text/csv"}


def _json_value(value: Any) -> Any:
    """An exported value as the API's JSON shows it."""
    if isinstance(value, datetime):
        return rfc3339(value)
    if value is None or isinstance(value, bool | int | str | dict):
        return value
    return str(value)  # INET addresses


def _csv_cell(value: Any) -> str:
    """A JSON value as CSV text: JSON literals for booleans and objects, empty for null."""
    if value is None:
        return ""
    if isinstance(value, bool | dict):
        return orjson.dumps(value).decode()
    return str(_json_value(value))


def jsonl(batch: Sequence[Row[Any]]) -> bytes:
    return b"".join(
        orjson.dumps(dict(zip(EXPORT_COLUMNS, map(_json_value, row), strict=True))) + b"\n"
        for row in batch
    )


def csv_header() -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(EXPORT_COLUMNS)
    return out.getvalue().encode()


def csv_rows(batch: Sequence[Row[Any]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows([_csv_cell(value) for value in row] for row in batch)
    return out.getvalue().encode()
