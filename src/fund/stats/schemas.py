"""Statistics API shape."""

from datetime import datetime

from pydantic import BaseModel


class UserStats(BaseModel):
    total: int
    active: int
    by_role: dict[str, int]


class AuditStats(BaseModel):
    total: int
    last_24h: int
    by_action: dict[str, int]


class StatsOut(BaseModel):
    users: UserStats
    audit_logs: AuditStats
    generated_at: datetime
