"""Request-scoped dependencies as ``Annotated`` aliases, so route signatures read like prose."""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fund.audit.schemas import AuditFilters, ExportFormat
from fund.audit.service import Actor, AuditService
from fund.auth.service import AuthService
from fund.auth.throttle import LoginThrottle
from fund.config import Settings
from fund.db import UnitOfWork, asyncpg_dsn, unit_of_work
from fund.kit.cache import Cache
from fund.kit.pagination import CursorCodec
from fund.kit.params import VALIDATION_ERROR, no_query_parameters, takes_query
from fund.kit.request_context import client_ip, request_id
from fund.kit.slots import Slots
from fund.stats.service import StatsService
from fund.users.service import UserService


@dataclass
class Resources:
    """What the process holds for its lifetime; built once in the app's lifespan."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    cache: Cache
    cursors: CursorCodec
    token_key: bytes
    throttle: LoginThrottle
    export_slots: Slots
    """Audit exports streaming at once in this process (``Settings.export_slots``)."""

    @property
    def database_dsn(self) -> str:
        """The database as asyncpg takes it, for a connection of its own (``/readyz``)."""
        url = self.settings.database_url
        if url is None:
            raise RuntimeError("FUND_DATABASE_URL is not set")
        return asyncpg_dsn(url)


def resources_of(request: Request) -> Resources:
    """The process's resources. The request-scoped dependencies below read them through
    ``Request`` rather than through ``ResourcesDep``: one dependency fewer for FastAPI to
    resolve, per layer, on every request."""
    resources: Resources = request.app.state.resources
    return resources


async def get_resources(request: Request) -> Resources:
    return resources_of(request)


ResourcesDep = Annotated[Resources, Depends(get_resources)]


class UnitOfWorkRoute(APIRoute):
    """A route whose request is one unit of work, committed when the endpoint returns.

    The handler FastAPI builds for the route reads the request, resolves the dependencies,
    runs the endpoint and renders its response without sending it; the unit wraps all of
    that, so its commit comes before the response leaves (a client that got its answer can
    read its own write), and an error anywhere in it rolls the unit back before the error
    is answered. Dependencies read the unit from the request (``work_of``).
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if not self.takes_query:  # documented: any query parameter is a 422 here
            self.responses.setdefault(422, VALIDATION_ERROR)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def in_unit_of_work(request: Request) -> Response:
            async with unit_of_work(resources_of(request).sessions) as work:
                request.scope[_WORK] = work
                return await handler(request)

        return in_unit_of_work

    @functools.cached_property
    def takes_query(self) -> bool:
        return takes_query(self.dependant)


def refuse_query_not_taken(request: Request) -> None:
    """Refuses (422) the query parameters of a request whose route takes none, as a list
    refuses one it does not know: ignored, ``DELETE /users/5?dry_run=true`` would delete.
    The caller checks call it once the caller may use the route (``fund.auth``), so a
    request without a token is a 401 first, as on the lists."""
    if not request.scope["query_string"]:
        return  # the usual case, on every request: nothing more to look at
    route = request.scope["route"]
    if isinstance(route, UnitOfWorkRoute) and not route.takes_query:
        no_query_parameters(request)


_WORK = "fund.work"


def work_of(request: Request) -> UnitOfWork:
    """The request's unit of work; its route must be a ``UnitOfWorkRoute``."""
    work: UnitOfWork | None = request.scope.get(_WORK)
    if work is None:
        raise RuntimeError(f"{request.url.path}: its router needs route_class=UnitOfWorkRoute")
    return work


_USERS = "fund.users"


def user_service_of(request: Request) -> UserService:
    """The request's one ``UserService``: the caller check reads through it before the
    endpoint does (``UserService.read_ahead``). Made on first use; a plain call rather than
    a sub-dependency of every caller check, which FastAPI would resolve on every request."""
    users: UserService | None = request.scope.get(_USERS)
    if users is None:
        resources = resources_of(request)
        users = request.scope[_USERS] = UserService(
            work_of(request),
            resources.cache,
            resources.cursors,
            cache_ttl=resources.settings.cache_user_ttl,
        )
    return users


async def get_user_service(request: Request) -> UserService:
    return user_service_of(request)


async def get_audit_service(request: Request) -> AuditService:
    return AuditService(work_of(request), resources_of(request).cursors)


async def audit_export(
    resources: Resources, filters: AuditFilters, export_format: ExportFormat
) -> AsyncGenerator[bytes, None]:
    """An export's body, on a unit of work of its own: the stream outlives the request's."""
    async with UnitOfWork(resources.sessions) as work:
        chunks = AuditService(work, resources.cursors).export(
            filters, export_format, slots=resources.export_slots
        )
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk


async def get_auth_service(request: Request) -> AuthService:
    resources = resources_of(request)
    return AuthService(
        work_of(request),
        resources.throttle,
        token_key=resources.token_key,
        token_minutes=resources.settings.access_token_minutes,
    )


async def get_stats_service(request: Request) -> StatsService:
    resources = resources_of(request)
    return StatsService(work_of(request), resources.cache, ttl=resources.settings.cache_stats_ttl)


UserServiceDep = Annotated[UserService, Depends(get_user_service)]
AuditServiceDep = Annotated[AuditService, Depends(get_audit_service)]
AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]
StatsServiceDep = Annotated[StatsService, Depends(get_stats_service)]


async def anonymous_actor(request: Request) -> Actor:
    resources = resources_of(request)
    return Actor(
        user_id=None,
        ip_address=client_ip(request.scope, trust_forwarded=resources.settings.trust_forwarded_for),
        user_agent=request.headers.get("user-agent"),
        request_id=request_id(),
    )


AnonymousActorDep = Annotated[Actor, Depends(anonymous_actor)]
