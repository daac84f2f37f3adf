"""Who is calling, and may they: ``CurrentUser``, the role-bound callers and the actors.

Each caller dependency is the bearer-token security scheme itself (so OpenAPI shows it)
and does the whole check in one step: token, user, role. FastAPI resolves every
dependency on every request at a cost (about 25 µs of a worker's CPU each here), and
the hottest reads pass through these.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from fund.audit.service import Actor
from fund.auth.service import authenticate
from fund.deps import AnonymousActorDep, refuse_query_not_taken, resources_of, user_service_of
from fund.errors import Forbidden
from fund.kit import request_context
from fund.kit.params import refuse_repeated_json_keys
from fund.models import Role
from fund.users.schemas import UserRead


class Caller(OAuth2PasswordBearer):
    """The active user a bearer token belongs to, refused (403) unless in ``roles``.

    ``auto_error=False``: every missing or malformed header gets our own 401 with
    ``WWW-Authenticate`` (``authenticate``).
    """

    def __init__(self, *roles: Role, read_ahead: str | None = None) -> None:
        super().__init__(
            tokenUrl="/api/v1/auth/token", auto_error=False, scheme_name="OAuth2PasswordBearer"
        )
        self.roles = frozenset(roles)
        self.read_ahead = read_ahead
        """A path parameter naming a user the route reads: fetched with the caller."""

    async def __call__(self, request: Request) -> UserRead:  # type: ignore[override]
        # Resolves the user, not the token.
        token = await super().__call__(request)
        if len(request.headers.getlist("authorization")) > 1:
            # Which one counts is each reader's guess (a proxy or an audit tool may take the
            # other): refused, as a repeated parameter, field or JSON key is.
            token = None
        users = user_service_of(request)
        if self.read_ahead is not None:
            ahead = _user_id(request.path_params.get(self.read_ahead))
            if ahead is not None:
                users.read_ahead(ahead)
        caller = await authenticate(token, token_key=resources_of(request).token_key, users=users)
        request_context.set_user_id(caller.user.id)
        request.state.session = caller.token  # the session a change is made in (actors)
        if self.roles and caller.user.role not in self.roles:
            raise Forbidden
        refuse_query_not_taken(request)
        await refuse_repeated_json_keys(request)
        return caller.user


def _user_id(raw: object) -> int | None:
    """A path segment as a user id, if it is one; the route validates it again, after auth."""
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19:
        ident = int(raw)
        return ident if 0 < ident < 2**63 else None
    return None


CurrentUser = Annotated[UserRead, Depends(Caller())]
UserReader = Annotated[UserRead, Depends(Caller(read_ahead="user_id"))]
"""``CurrentUser`` on a route that reads the user in its ``user_id``: one cache round trip
reads both, and a malformed id is still refused after the token, not before."""
StaffUser = Annotated[UserRead, Depends(Caller(Role.ADMIN, Role.ANALYST))]
AdminUser = Annotated[UserRead, Depends(Caller(Role.ADMIN))]


async def actor(request: Request, user: CurrentUser, anonymous: AnonymousActorDep) -> Actor:
    return anonymous.as_user(user.id, session=request.state.session)


async def admin_actor(request: Request, user: AdminUser, anonymous: AnonymousActorDep) -> Actor:
    return anonymous.as_user(user.id, session=request.state.session)


ActorDep = Annotated[Actor, Depends(actor)]
"""A change made by any signed-in user."""
AdminActor = Annotated[Actor, Depends(admin_actor)]
"""A change only an ADMIN may make (403 otherwise): the actor is the authorisation."""
