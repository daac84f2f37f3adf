"""Users API shapes. ORM models never leave the service layer as responses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from fund.audit.schemas import AuditLogRead
from fund.kit.params import NO_NUL, PageQuery, QueryModel
from fund.models import Role


@dataclass(frozen=True, slots=True)
class UserFilters:
    """The filters of ``GET /users`` (its query, less the page), as the service and the
    repository take them; also part of a cursor's scope."""

    role: Role | None = None
    is_active: bool | None = None
    q: str | None = None


MIN_PASSWORD = 12
MAX_PASSWORD = 256

Email = Annotated[EmailStr, Field(max_length=320), AfterValidator(str.lower)]


def _not_blank(password: str) -> str:
    """Spaces count towards the length (a passphrase has them), but twelve of them and
    nothing else is no password: a client that sends that has lost the real one."""
    if password.isspace():
        raise ValueError("a password cannot be only spaces")
    return password


Password = Annotated[
    str, Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD), AfterValidator(_not_blank)
]
# A name is printed in back-office screens, exports and terminals: no control characters
# (C0, DEL, C1), which could break a CSV reader's lines or restyle a terminal (ESC).
_CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f"
NO_CONTROL = f"^[^{_CONTROL_CHARACTERS}]*$"
_CONTROL = re.compile(f"[{_CONTROL_CHARACTERS}]")
MAX_FULL_NAME = 200


def _no_control_characters(name: str) -> str:
    if _CONTROL.search(name):
        raise ValueError("a name cannot hold control characters (tabs, line breaks, escapes)")
    return name


FullName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_FULL_NAME),
    AfterValidator(_no_control_characters),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": MAX_FULL_NAME, "pattern": NO_CONTROL}
    ),
]


class UserListQuery(PageQuery):
    """The query string of ``GET /users``."""

    role: Role | None = None
    is_active: bool | None = None
    q: str | None = Field(default=None, min_length=1, max_length=100, pattern=NO_NUL)
    include: Literal["audit_logs"] | None = None


USER_LIST_QUERY = QueryModel(UserListQuery)


class UserRead(BaseModel):
    """A user as the API shows it: no password, no hash. Frozen: authentication shares one
    parsed copy of a cache entry between requests (``fund.users.service._account``)."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: int
    email: str
    full_name: str
    role: Role
    is_active: bool
    created_at: datetime
    updated_at: datetime


class UserWithAuditRead(UserRead):
    recent_audit_logs: list[AuditLogRead]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email
    password: Password
    full_name: FullName
    role: Role = Role.VIEWER
    is_active: StrictBool = True


class _Patch(BaseModel):
    """A partial update: absent fields stay as they are; ``null`` is not a value."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(k for k, v in data.items() if v is None)
            if nulls:
                raise ValueError(f"null is not allowed for: {', '.join(nulls)}")
        return data

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


def _unchanged() -> Any:
    """An omitted field's default (None, never validated): not a value a client may send, nor
    shown as one. The field's type stays the value's alone, so a refused value is reported
    at the field itself, not once per member of a ``T | None`` union whose names spell out
    pydantic's validators."""
    return Field(default=None, json_schema_extra=_without_default)


def _without_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class UserUpdate(_Patch):
    email: Email = _unchanged()
    full_name: FullName = _unchanged()
    role: Role = _unchanged()
    is_active: StrictBool = _unchanged()
    password: Password = _unchanged()


class UserSelfUpdate(_Patch):
    full_name: FullName = _unchanged()
    password: Password = _unchanged()
