"""``/healthz``, ``/readyz`` and ``/metrics`` (outside ``/api/v1``: no token)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from fund.db import database_answers
from fund.deps import ResourcesDep
from fund.kit import metrics

router = APIRouter(tags=["operations"])

READY_TIMEOUT = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "PostgreSQL does not answer (same body)"}})
async def readyz(resources: ResourcesDep) -> JSONResponse:
    """503 when PostgreSQL does not answer; ``degraded`` when only Redis does not."""
    answers = await database_answers(resources.database_dsn, READY_TIMEOUT)
    database = "ok" if answers else "down"
    cache = "ok" if await resources.cache.ping() else "down"
    ok = database == "ok" and cache == "ok"
    return JSONResponse(
        {"status": "ok" if ok else "degraded", "database": database, "cache": cache},
        status_code=503 if database == "down" else 200,
    )


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
