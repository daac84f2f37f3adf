"""The export's framing: media types and the CSV header.

PostgreSQL writes each entry's line and its end (``AuditRepository.copy_lines``: LF for
JSON Lines, CRLF for CSV records, as RFC 4180 and Python's csv module end them).
"""

from __future__ import annotations

import csv
import io

from fund.audit.repository import EXPORT_COLUMNS
from fund.audit.schemas import ExportFormat

MEDIA_TYPES = {ExportFormat.JSONL: "application/x-ndjson", ExportFormat.CSV: "text/csv"}


def csv_header() -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(EXPORT_COLUMNS)
    return out.getvalue().encode()
