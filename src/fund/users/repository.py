"""All SQL on ``users``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from fund.kit.pagination import Keyset, Page, Position, keyset_page
from fund.models import Role, User

KEYSET = Keyset(User.created_at, User.id)
# Reads that show users never fetch the password hash; touching it is an error, not a query.
WITHOUT_HASH = defer(User.hashed_password, raiseload=True)


@dataclass(frozen=True, slots=True)
class UserFilters:
    role: Role | None = None
    is_active: bool | None = None
    q: str | None = None


def _like_pattern(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: int) -> User | None:
        return await self.session.get(User, user_id, options=[WITHOUT_HASH])

    async def get_for_update(self, user_id: int) -> User | None:
        return await self.session.get(User, user_id, with_for_update=True)

    async def get_by_email(self, email: str) -> User | None:
        return await self.session.scalar(select(User).where(User.email == email))

    async def email_taken(self, email: str, *, besides: int | None = None) -> bool:
        stmt = select(User.id).where(User.email == email)
        if besides is not None:
            stmt = stmt.where(User.id != besides)
        return await self.session.scalar(stmt.limit(1)) is not None

    async def add(self, user: User) -> User:
        self.session.add(user)
        await self.session.flush()
        await self.session.refresh(user)  # server defaults: created_at, updated_at
        return user

    async def save(self, user: User) -> User:
        await self.session.flush()
        await self.session.refresh(user, ["updated_at"])
        return user

    async def lock_active_admins(self) -> list[int]:
        """Ids of active admins, row-locked so two concurrent demotions cannot both pass."""
        result = await self.session.scalars(
            select(User.id)
            .where(User.role == Role.ADMIN, User.is_active.is_(True))
            .order_by(User.id)
            .with_for_update()
        )
        return list(result.all())

    async def any_user(self) -> bool:
        return await self.session.scalar(select(User.id).limit(1)) is not None

    async def page(
        self,
        filters: UserFilters,
        *,
        limit: int,
        position: Position | None,
        encode: Callable[[Position], str],
    ) -> Page[User]:
        stmt = select(User).options(WITHOUT_HASH)
        if filters.role is not None:
            stmt = stmt.where(User.role == filters.role)
        if filters.is_active is not None:
            stmt = stmt.where(User.is_active.is_(filters.is_active))
        if filters.q:
            pattern = _like_pattern(filters.q)
            # Both sides are answered by trigram GIN indexes (migration 004).
            stmt = stmt.where(
                or_(
                    User.email.like(pattern, escape="\\"),
                    func.lower(User.full_name).like(pattern, escape="\\"),
                )
            )
        return await keyset_page(
            self.session,
            stmt,
            KEYSET,
            limit=limit,
            position=position,
            encode=encode,
            key_of=lambda u: (u.created_at, u.id),
        )

    async def counts(self) -> dict[str, Any]:
        total, active = (
            await self.session.execute(
                select(func.count(), func.count().filter(User.is_active.is_(True))).select_from(
                    User
                )
            )
        ).one()
        by_role = {
            role.value: count
            for role, count in await self.session.execute(
                select(User.role, func.count()).group_by(User.role)
            )
        }
        return {"total": total, "active": active, "by_role": by_role}
