"""Users API shapes. ORM models never leave the service layer as responses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fund.audit.schemas import AuditLogRead
from fund.kit.params import NO_NUL, PageQuery, QueryModel
from fund.kit.security import normal_password
from fund.kit.text import (
    EmailRefused,
    code_point,
    email_address,
    has_letter_or_digit,
    nfc,
    unprintable,
    visible,
)
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

MAX_EMAIL = 254  # RFC 5321's path limit, less its angle brackets


def _email(address: str) -> str:
    try:
        return email_address(address)
    except EmailRefused as refused:
        raise PydanticCustomError(
            "value_error", "value is not a valid email address: {reason}", {"reason": str(refused)}
        ) from None


def _trimmed(value: object) -> object:
    """Spaces around an address are dropped (``email_address``) before its length counts."""
    return value.strip() if isinstance(value, str) else value


Email = Annotated[
    str,
    Field(max_length=MAX_EMAIL),
    BeforeValidator(_trimmed),
    AfterValidator(_email),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": MAX_EMAIL}),
]


def _not_blank(password: str) -> str:
    """Spaces count towards the length (a passphrase has them), but twelve of them and
    nothing else is no password: a client that sends that, or only invisible characters
    (zero-width spaces, NULs), has lost the real one. NUL is refused anywhere: many a
    client and library ends a string there, so the password set would not be the one typed."""
    if "\x00" in password:
        raise ValueError("a password cannot hold a NUL character")
    if not visible(password):
        raise ValueError("a password needs a visible character, not only spaces")
    return password


def _as_hashed(value: object) -> object:
    """A password measured and checked as it is hashed (``normal_password``, NFKC): twelve
    characters as the user sees them, not twelve code points of which accents are some."""
    return normal_password(value) if isinstance(value, str) else value


Password = Annotated[
    str,
    Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD),
    BeforeValidator(_as_hashed),  # after the Field: it wraps the checked string, runs first
    AfterValidator(_not_blank),
]
MAX_FULL_NAME = 200


def _in_nfc(value: object) -> object:
    """Text in NFC before its length is checked: NFC can lengthen it (U+0958 is two code
    points in NFC), and the column holds what was checked."""
    return nfc(value) if isinstance(value, str) else value


InNFC = BeforeValidator(_in_nfc)


def _printable_name(name: str) -> str:
    """A name as it is kept (NFC, ``InNFC``): with a letter or a digit, nothing invisible or
    line-breaking in it (``fund.kit.text.unprintable``): it is printed in screens, exports
    and terminals."""
    refused = unprintable(name)
    if refused is not None:
        raise PydanticCustomError(
            "value_error",
            "a name cannot hold control or invisible characters (tabs, line breaks, escapes,"
            " direction overrides): {character}",
            {"character": code_point(refused)},
        )
    if not has_letter_or_digit(name):
        raise PydanticCustomError("value_error", "a name needs a letter or a digit")
    return name


FullName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_FULL_NAME),
    InNFC,
    AfterValidator(_printable_name),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_FULL_NAME}),
]


class UserListQuery(PageQuery):
    """The query string of ``GET /users``."""

    role: Role | None = None
    is_active: bool | None = None
    # In the form names are kept in (NFC), so an accent typed as two code points finds them.
    q: (
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=100, pattern=NO_NUL),
            InNFC,
        ]
        | None
    ) = None
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
