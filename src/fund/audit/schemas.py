"""Audit API shapes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
)

from fund.kit.params import NO_NUL, PageQuery, QueryModel, WholeNumber
from fund.models import Action, ResourceType


def rfc3339(moment: datetime) -> str:
    """The one rendering of an entry's time, in the API and the export alike: UTC, ``Z``, µs."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


class AuditLogRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    timestamp: datetime
    user_id: int | None
    action: str
    resource_type: str
    resource_id: str
    details: dict[str, Any]
    ip_address: str | None
    user_agent: str | None
    request_id: str | None
    is_deleted: bool

    @field_validator("ip_address", mode="before")
    @classmethod
    def _ip_as_text(cls, value: object) -> object:
        if isinstance(value, IPv4Address | IPv6Address | IPv4Interface | IPv6Interface):
            return str(value)
        return value

    @field_serializer("timestamp")
    def _timestamp_as_text(self, value: datetime) -> str:
        return rfc3339(value)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# Seconds with more than six fractional digits: entries are stored to the microsecond.
_FINER_THAN_MICROSECONDS = re.compile(r"(?<=:\d\d\.\d{6})(\d+)")
_INSTANT: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


def _to_whole_microseconds(text: str) -> str | datetime:
    """``text``, or the first microsecond at or after it when it is finer than that.

    ``since`` (inclusive) and ``until`` (exclusive) both select the stored microseconds at or
    after a bound, so rounding a finer bound up keeps exactly the entries it would select;
    pydantic alone would cut the digits, moving the bound back before some of them.
    """
    finer = _FINER_THAN_MICROSECONDS.search(text)
    if finer is None:
        return text
    cut = text[: finer.start()] + text[finer.end() :]
    if not finer.group(1).strip("0"):
        return cut
    try:
        instant = _INSTANT.validate_python(cut)
    except ValidationError:
        return cut  # pydantic says what is wrong with it, as with any other value
    try:
        return instant + timedelta(microseconds=1)
    except OverflowError as exc:
        raise ValueError("out of range") from exc


class AuditFilters(BaseModel):
    """Filters of ``GET /audit-logs`` and its export; also part of a cursor's scope."""

    model_config = ConfigDict(frozen=True)

    user_id: Annotated[int, WholeNumber] | None = Field(default=None, ge=1, le=2**63 - 1)
    action: Action | None = None
    resource_type: ResourceType | None = None
    resource_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=NO_NUL)
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    include_deleted: bool = False

    @field_validator("since", "until", mode="before")
    @classmethod
    def _iso_8601(cls, value: object) -> object:
        """A date-time as ISO 8601 text, never a number read as Unix time (pydantic's lax
        mode would take ``since=20260101`` for 1970-08-24, silently)."""
        if isinstance(value, int | float) or (
            isinstance(value, str) and _NUMBER.fullmatch(value.strip())
        ):
            raise ValueError(
                "expected an ISO 8601 date-time with an offset, e.g. 2026-01-01T00:00:00Z"
            )
        return _to_whole_microseconds(value) if isinstance(value, str) else value

    @field_validator("since", "until")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        """One instant, one cursor scope, whatever offset it was written with."""
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ValueError("out of range") from exc


class AuditListQuery(PageQuery, AuditFilters):
    """The query string of ``GET /audit-logs``: the filters, then the page."""

    @property
    def filters(self) -> AuditFilters:
        """The filters alone (a cursor's scope), as validated here."""
        return _filters_of(self)


class AuditExportQuery(AuditFilters):
    """The query string of ``GET /audit-logs/export``: the filters, then the format.

    Unknown parameters are refused, as on the lists (``PageQuery``): an export that
    ignored a misspelt filter would hand over the whole trail.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: ExportFormat = Field(default=ExportFormat.JSONL, description="jsonl or csv")

    @property
    def filters(self) -> AuditFilters:
        """The filters alone, as validated here."""
        return _filters_of(self)


def _filters_of(query: AuditFilters) -> AuditFilters:
    return AuditFilters.model_construct(
        **{name: getattr(query, name) for name in AuditFilters.model_fields}
    )


AUDIT_LIST_QUERY = QueryModel(AuditListQuery)
AUDIT_EXPORT_QUERY = QueryModel(AuditExportQuery)
