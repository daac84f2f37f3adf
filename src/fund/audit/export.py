"""Serialising exported audit rows: JSON Lines or CSV, the same fields as the API."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from fund.audit.repository import EXPORT_COLUMNS
from fund.audit.schemas import rfc3339


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


MEDIA_TYPES = {ExportFormat.JSONL: "application/x-ndjson", ExportFormat.CSV: "text/csv"}


_JSONL = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE


def _csv_cell(value: Any) -> str:
    """A value as CSV text: JSON literals for booleans, empty for null, times as the API's."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return rfc3339(value)
    return str(value)


def jsonl(batch: Sequence[Sequence[Any]]) -> bytes:
    """One JSON object a line. ``details`` arrives as PostgreSQL's JSON text and is embedded
    as it is; orjson renders the UTC timestamps exactly as the API does (``Z``, µs when set)."""
    lines = []
    for row in batch:
        entry = dict(zip(EXPORT_COLUMNS, row, strict=True))
        entry["details"] = orjson.Fragment(entry["details"])
        lines.append(orjson.dumps(entry, option=_JSONL))
    return b"".join(lines)


def csv_header() -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(EXPORT_COLUMNS)
    return out.getvalue().encode()


_DETAILS = EXPORT_COLUMNS.index("details")


def csv_rows(batch: Sequence[Sequence[Any]]) -> bytes:
    """Details as compact JSON text, like the API's; the other cells as ``_csv_cell``."""
    out = io.StringIO()
    writer = csv.writer(out)
    for row in batch:
        cells = [_csv_cell(value) for value in row]
        cells[_DETAILS] = orjson.dumps(orjson.loads(row[_DETAILS])).decode()
        writer.writerow(cells)
    return out.getvalue().encode()
