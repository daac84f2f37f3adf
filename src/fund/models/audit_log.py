"""The ``audit_logs`` table: one row per change, append-only (enforced by triggers)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, String, func
from sqlalchemy.dialects.postgresql import ENUM, INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fund.models.base import Base

if TYPE_CHECKING:
    from fund.models.user import User


class Action(StrEnum):
    """What an audit entry records (API.md section 4): the enum ``audit_action``."""

    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    LOGIN = "LOGIN"
    LOGIN_FAILED = "LOGIN_FAILED"


class ResourceType(StrEnum):
    """What an audit entry's change was made to: the enum ``audit_resource_type``."""

    USER = "user"
    AUDIT_LOG = "audit_log"


class AuditLog(Base):
    __tablename__ = "audit_logs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    """Surrogate key; the keyset tie-breaker of every audit page."""
    timestamp: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp()
    )
    """When its change was written: a user's ``updated_at`` (``created_at``) as the service
    passes it, else when the entry is written; after any wait for the row's lock, so the
    entries of one resource follow the order its changes were applied (migration 010).
    Microseconds; the sort key of audit pages."""
    user_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="RESTRICT"), nullable=True
    )
    """The actor; null for anonymous events (a failed login for an unknown email)."""
    action: Mapped[str] = mapped_column(
        ENUM(*(action.value for action in Action), name="audit_action", create_type=False),
        nullable=False,
    )
    """CREATE, UPDATE, DELETE, LOGIN, LOGIN_FAILED: ``Action``'s labels, as the PostgreSQL
    enum ``audit_action``, which refuses any other value (migration 012). Read and written
    as the label's text, as when the column was text."""
    resource_type: Mapped[str] = mapped_column(
        ENUM(*(kind.value for kind in ResourceType), name="audit_resource_type", create_type=False),
        nullable=False,
    )
    """What was changed: ``user`` or ``audit_log``, ``ResourceType``'s labels, as the
    PostgreSQL enum ``audit_resource_type`` (migration 012); read and written as text."""
    resource_id: Mapped[str] = mapped_column(String(64, collation="C"), nullable=False)
    """Id of what was changed, as text (``""`` when there is none)."""
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    """Before/after values; never a password or hash."""
    ip_address: Mapped[str | None] = mapped_column(INET, nullable=True)
    """Client address of the request that made the change."""
    user_agent: Mapped[str | None] = mapped_column(String(512), nullable=True)
    """Client ``User-Agent``, truncated to 512 characters."""
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """``X-Request-ID`` of the request that made the change."""
    is_deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    """Soft delete: may go from false to true once; nothing else in a row may change."""

    actor: Mapped[User | None] = relationship(back_populates="audit_logs", lazy="raise")
