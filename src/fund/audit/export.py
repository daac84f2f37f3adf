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


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


MEDIA_TYPES = {ExportFormat.JSONL: "application/x-ndjson", ExportFormat.CSV: "text/csv"}


def _text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | str | dict):
        return value
    return str(value)  # INET addresses


def jsonl(batch: Sequence[Row[Any]]) -> bytes:
    return b"".join(
        orjson.dumps(dict(zip(EXPORT_COLUMNS, map(_text, row), strict=True))) + b"\n"
        for row in batch
    )


def csv_header() -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(EXPORT_COLUMNS)
    return out.getvalue().encode()


def csv_rows(batch: Sequence[Row[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    for row in batch:
        writer.writerow(
            [
                orjson.dumps(v).decode()
                if isinstance(v, dict)
                else ("true" if v else "false")
                if isinstance(v, bool)
                else ""
                if v is None
                else _text(v)
                for v in row
            ]
        )
    return out.getvalue().encode()
