"""``/api/v1/stats`` (ADMIN and ANALYST)."""

from __future__ import annotations

from fastapi import APIRouter

from fund.auth.dependencies import StaffUser
from fund.deps import StatsServiceDep, UnitOfWorkRoute
from fund.errors import Forbidden, NotAuthenticated, Unavailable, documented
from fund.kit.schemas import CachedJSON
from fund.stats.schemas import StatsOut

router = APIRouter(
    route_class=UnitOfWorkRoute,
    prefix="/stats",
    tags=["stats"],
    responses=documented(NotAuthenticated, Forbidden, Unavailable),
)


@router.get("", response_model=StatsOut)
async def read_stats(_: StaffUser, stats: StatsServiceDep) -> CachedJSON:
    """Cached up to `FUND_CACHE_STATS_TTL` seconds (`X-Cache: hit|miss`)."""
    return CachedJSON(await stats.get())
