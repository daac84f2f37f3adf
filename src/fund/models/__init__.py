"""ORM models, one file per table."""

from fund.models.audit_log import Action, AuditLog, ResourceType
from fund.models.base import Base
from fund.models.user import Role, User

__all__ = ["Action", "AuditLog", "Base", "ResourceType", "Role", "User"]
