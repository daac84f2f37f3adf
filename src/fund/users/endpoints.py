"""``/api/v1/users``: HTTP in, HTTP out; the rules live in the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from fund.auth.dependencies import ActorDep, AdminActor, CurrentUser, StaffUser, UserReader
from fund.deps import UnitOfWorkRoute, UserServiceDep
from fund.errors import (
    BadCursor,
    EmailTaken,
    Forbidden,
    LastAdmin,
    NotAuthenticated,
    NotFound,
    Unavailable,
    documented,
    method_not_allowed,
)
from fund.kit.params import PathId
from fund.kit.schemas import CachedJSON, PageJSON, PageOut
from fund.users.schemas import (
    USER_LIST_QUERY,
    UserCreate,
    UserFilters,
    UserListQuery,
    UserRead,
    UserSelfUpdate,
    UserUpdate,
    UserWithAuditRead,
)

router = APIRouter(
    route_class=UnitOfWorkRoute,
    prefix="/users",
    tags=["users"],
    responses=documented(NotAuthenticated, Unavailable),
)


@router.get(
    "",
    response_model=PageOut[UserWithAuditRead] | PageOut[UserRead],
    responses=documented(BadCursor, Forbidden),
    openapi_extra=USER_LIST_QUERY.openapi,
)
async def list_users(
    caller: StaffUser,
    query: Annotated[UserListQuery, Depends(USER_LIST_QUERY)],
    users: UserServiceDep,
) -> PageJSON:
    """Newest first (`created_at DESC, id DESC`), in cursor pages. `include=audit_logs`
    (each user's 5 newest entries) is for an ADMIN only, as the audit trail is."""
    filters = UserFilters(role=query.role, is_active=query.is_active, q=query.q)
    if query.include == "audit_logs":
        page = await users.page_with_audit_logs(
            caller, filters, limit=query.limit, cursor=query.cursor
        )
    else:
        page = await users.page(filters, limit=query.limit, cursor=query.cursor)
    return PageJSON(page)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    responses=documented(Forbidden, EmailTaken),
)
async def create_user(data: UserCreate, actor: AdminActor, users: UserServiceDep) -> UserRead:
    return await users.create(actor, data)


@router.get("/me", response_model=UserRead)
async def read_me(user: CurrentUser) -> UserRead:
    return user


@router.patch("/me", response_model=UserRead, responses=documented())
async def update_me(
    data: UserSelfUpdate, user: CurrentUser, actor: ActorDep, users: UserServiceDep
) -> UserRead:
    """Changes the caller's name or password. A password change ends every other session
    of the account: tokens issued before it are refused, but the one it was made with."""
    return await users.update(actor, user.id, data)


router.add_api_route(
    "/me", method_not_allowed, methods=["DELETE"], include_in_schema=False, response_model=None
)


@router.get("/{user_id}", response_model=UserRead, responses=documented(Forbidden, NotFound))
async def read_user(user_id: PathId, caller: UserReader, users: UserServiceDep) -> Response:
    return CachedJSON(await users.read_json(caller, user_id))


@router.patch(
    "/{user_id}",
    response_model=UserRead,
    responses=documented(Forbidden, NotFound, EmailTaken, LastAdmin),
)
async def update_user(
    user_id: PathId, data: UserUpdate, actor: AdminActor, users: UserServiceDep
) -> UserRead:
    """A password change or a deactivation ends the account's sessions (all of them; an
    admin changing their own password keeps the one it was made in)."""
    return await users.update(actor, user_id, data)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,  # no body, so no Content-Type either
    responses=documented(Forbidden, NotFound, LastAdmin),
)
async def deactivate_user(user_id: PathId, actor: AdminActor, users: UserServiceDep) -> None:
    """Deactivates the account (`is_active=false`) and ends its sessions; rows are never
    removed."""
    await users.deactivate(actor, user_id)
