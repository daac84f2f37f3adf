"""Who is calling, and may they: ``CurrentUser``, ``ActorDep`` and the role guards."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from fund.audit.service import Actor
from fund.auth.service import authenticate
from fund.deps import AnonymousActorDep, UserServiceDep, resources_of
from fund.errors import Forbidden
from fund.kit import request_context
from fund.models import Role
from fund.users.schemas import UserRead

# auto_error=False: every malformed header gets our own 401 with WWW-Authenticate.
bearer = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


async def current_user(
    request: Request, token: Annotated[str | None, Depends(bearer)], users: UserServiceDep
) -> UserRead:
    user = await authenticate(token, token_key=resources_of(request).token_key, users=users)
    request_context.set_user_id(user.id)
    return user


CurrentUser = Annotated[UserRead, Depends(current_user)]


async def actor(user: CurrentUser, anonymous: AnonymousActorDep) -> Actor:
    return anonymous.as_user(user.id)


ActorDep = Annotated[Actor, Depends(actor)]


def require(*roles: Role) -> Callable[[UserRead], Awaitable[UserRead]]:
    """A dependency that lets only ``roles`` through (403 otherwise)."""

    async def guard(user: CurrentUser) -> UserRead:
        if user.role not in roles:
            raise Forbidden
        return user

    return guard


AdminUser = Annotated[UserRead, Depends(require(Role.ADMIN))]
StaffUser = Annotated[UserRead, Depends(require(Role.ADMIN, Role.ANALYST))]
