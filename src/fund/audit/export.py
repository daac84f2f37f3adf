"""The export's framing: media types, the CSV header and line ends.

PostgreSQL writes each entry's line (``AuditRepository.stream_lines``); this module
only joins the lines of a batch into the bytes sent.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from fund.audit.repository import EXPORT_COLUMNS
from fund.audit.schemas import ExportFormat

MEDIA_TYPES = {ExportFormat.JSONL: "application/x-ndjson", ExportFormat.CSV: "text/csv"}

# CSV ends its records with CRLF (RFC 4180, as Python's csv module writes them).
LINE_END = {ExportFormat.JSONL: "\n", ExportFormat.CSV: "\r\n"}


def csv_header() -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(EXPORT_COLUMNS)
    return out.getvalue().encode()


def joined(lines: Sequence[str], export_format: ExportFormat) -> bytes:
    """A batch of lines as the bytes of the body, each line ended."""
    end = LINE_END[export_format]
    return (end.join(lines) + end).encode()
