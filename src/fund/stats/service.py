"""Statistics: aggregate queries behind a single-flight cache entry."""

from __future__ import annotations

from datetime import UTC, datetime

from fund.audit.repository import AuditRepository
from fund.db import UnitOfWork
from fund.kit.cache import Cache, Found
from fund.stats.schemas import AuditStats, StatsOut, UserStats
from fund.users.repository import UserRepository

CACHE_KIND = "stats"
CACHE_ID = "global"


class StatsService:
    def __init__(self, work: UnitOfWork, cache: Cache, *, ttl: int) -> None:
        self.work = work
        self.users = UserRepository(work)
        self.audit = AuditRepository(work)
        self.cache = cache
        self.ttl = ttl

    async def get(self) -> Found:
        """``StatsOut`` as JSON, as the cache holds it."""
        lookup = await self.cache.get_or_build(CACHE_KIND, CACHE_ID, self.ttl, self._build)
        assert lookup.value is not None
        return Found(lookup.value, lookup.hit)

    async def _build(self) -> bytes:
        # Every count from one snapshot: a total always equals the sum of its breakdown.
        await self.work.read_one_snapshot()
        stats = StatsOut(
            users=UserStats(**await self.users.counts()),
            audit_logs=AuditStats(**await self.audit.counts()),
            generated_at=datetime.now(UTC),
        )
        return stats.model_dump_json().encode()
