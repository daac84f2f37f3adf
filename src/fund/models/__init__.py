"""ORM models, one file per table."""

from fund.models.audit_log import AuditLog
from fund.models.base import Base
from fund.models.user import Role, User

__all__ = ["AuditLog", "Base", "Role", "User"]
