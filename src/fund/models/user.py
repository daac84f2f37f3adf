"""The ``users`` table: platform accounts and their role."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, Boolean, DateTime, Enum, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fund.models.base import Base

if TYPE_CHECKING:
    from fund.models.audit_log import AuditLog


class Role(StrEnum):
    ADMIN = "ADMIN"
    ANALYST = "ANALYST"
    VIEWER = "VIEWER"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    """Surrogate key; also the keyset tie-breaker of every users page."""
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    """Stored lower-case; unique (``uq_users_email``)."""
    full_name: Mapped[str] = mapped_column(String(200), nullable=False, server_default="")
    """Display name, searchable by substring (trigram index)."""
    hashed_password: Mapped[str] = mapped_column(Text, nullable=False)
    """argon2id hash in PHC string form; never leaves the server."""
    role: Mapped[Role] = mapped_column(
        Enum(Role, name="user_role", values_callable=lambda e: [m.value for m in e]),
        nullable=False,
        server_default=Role.VIEWER.value,
    )
    """ADMIN, ANALYST or VIEWER; read on every request, so a change applies at once."""
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    """False once deactivated; rows are never deleted."""
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.statement_timestamp()
    )
    """Creation time (microseconds), when its INSERT ran; the sort key of users pages."""
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True),
        nullable=False,
        server_default=func.statement_timestamp(),  # as created_at, to the microsecond
        onupdate=func.clock_timestamp(),
    )
    """Time of the last change: when it was written, after any wait for the row's lock, so
    it never goes back (migration 010). Equal to ``created_at`` until the first change."""
    token_version: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    """Raised by a password change and a deactivation: access tokens issued at an earlier
    version are refused (migration 009). Never leaves the server."""
    kept_token_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The id (``jti``) of the one token of an earlier version still accepted: the one the
    user changed their own password with. Never leaves the server."""

    # raiseload: a lazy load is an error, so an N+1 cannot come back unnoticed.
    audit_logs: Mapped[list[AuditLog]] = relationship(
        back_populates="actor", lazy="raise", viewonly=True
    )
