"""User rules: who exists, with which role; every change audited in its own transaction."""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from fund.audit.service import Actor, AuditTrail
from fund.db import UnitOfWork
from fund.errors import EmailTaken, Forbidden, LastAdmin, NotAuthenticated, NotFound
from fund.kit.cache import Cache, Found
from fund.kit.pagination import CursorCodec, Page, PageStart
from fund.kit.security import hash_password_off_loop
from fund.models import Action, ResourceType, Role, User
from fund.users.repository import UserRepository
from fund.users.schemas import (
    UserCreate,
    UserFilters,
    UserRead,
    UserSelfUpdate,
    UserUpdate,
)

CACHE_KIND = "user"
RECENT_AUDIT_LOGS = 5


@dataclass(frozen=True, slots=True)
class Account:
    """A user as authentication needs it: as the API shows it, and which tokens are good."""

    user: UserRead
    token_version: int
    kept_token_id: str | None


def _entry_of(row: dict[str, Any]) -> bytes:
    """A user's cache entry: ``<token_version> <kept_token_id or nothing> <UserRead JSON>``.

    ``GET /users/{id}`` answers a hit with the JSON as it is, unparsed; authentication also
    needs the rest, which never leaves the server. (A token id has no space: ``jti``s are
    URL-safe base64.)
    """
    shown = UserRead.model_validate(row).model_dump_json().encode()
    kept = (row["kept_token_id"] or "").encode()
    return b"%d %s %s" % (row["token_version"], kept, shown)


@functools.lru_cache(maxsize=1024)
def _account(entry: bytes) -> Account:
    """The account a cache entry describes. Remembered by the entry's bytes, so a change to
    the user (a new entry) is never answered from here: every request authenticates, and
    parsing the same entry again each time cost 2 % of ``GET /users``."""
    version, kept, shown = entry.split(b" ", 2)
    return Account(UserRead.model_validate_json(shown), int(version), kept.decode() or None)


def _shown(entry: Found) -> Found:
    """A cache entry's ``UserRead`` JSON, as found."""
    return Found(entry.value.split(b" ", 2)[2], entry.hit)


class UserService:
    def __init__(
        self,
        work: UnitOfWork,
        cache: Cache,
        cursors: CursorCodec,
        *,
        cache_ttl: int,
    ) -> None:
        self.work = work
        self.repository = UserRepository(work)
        self.audit = AuditTrail(work)
        self.cache = cache
        self.cursors = cursors
        self.cache_ttl = cache_ttl
        self._ahead: set[int] = set()
        self._read: dict[int, bytes | None] = {}  # entries read ahead, each used once

    # -- reads -------------------------------------------------------------------

    async def get_account(self, user_id: int) -> Account:
        """The user by id and which of its tokens are good, from the cache when warm.

        Authentication reads through here, on every request.
        """
        return _account((await self._entry(user_id)).value)

    def read_ahead(self, user_id: int) -> None:
        """This request will read ``user_id`` too: fetch it with the next read of the cache.

        A route that reads the user in its path first authenticates its caller, which reads
        the caller's entry; asked ahead, that one round trip to Redis brings both.
        """
        self._ahead.add(user_id)

    async def read_json(self, caller: UserRead, user_id: int) -> Found:
        """``GET /users/{id}``: the user as ``UserRead`` JSON, from the cache when warm (no
        parse on a hit), if ``caller`` may see it (a VIEWER sees only itself)."""
        if caller.role is Role.VIEWER and caller.id != user_id:
            raise Forbidden
        return _shown(await self._entry(user_id))

    async def _entry(self, user_id: int) -> Found:
        """The user's cache entry (``_entry_of``), read through the cache."""
        if user_id in self._read:
            cached = self._read.pop(user_id)
        elif not self._ahead:  # every request's caller read: nothing asked ahead
            cached = (await self.cache.get_many(CACHE_KIND, (user_id,)))[0]
        else:
            ahead, self._ahead = self._ahead, set()
            ids = [user_id, *(ahead - {user_id})]
            values = await self.cache.get_many(CACHE_KIND, ids)
            cached = values[0]
            self._read.update((i, v) for i, v in zip(ids, values, strict=True) if i in ahead)
        if cached is not None:
            return Found(cached, hit=True)
        value = await self.cache.load_through(
            CACHE_KIND, user_id, self.cache_ttl, lambda: self._load(user_id)
        )
        if value is None:
            raise NotFound("User not found")
        return Found(value, hit=False)

    async def _load(self, user_id: int) -> bytes | None:
        row = await self.repository.get_row(user_id)
        return None if row is None else _entry_of(row)

    async def page(
        self, filters: UserFilters, *, limit: int, cursor: str | None
    ) -> Page[dict[str, Any]]:
        """A page of users as rows of exactly the fields ``UserRead`` shows."""
        start = self._start(filters, cursor)
        return await self.repository.page_rows(
            filters, limit=limit, position=start.position, encode=start.encode
        )

    async def page_with_audit_logs(
        self, caller: UserRead, filters: UserFilters, *, limit: int, cursor: str | None
    ) -> Page[dict[str, Any]]:
        """The same page, each user with their newest audit entries (one more statement):
        rows of exactly the fields ``UserWithAuditRead`` shows.

        Only for an ADMIN (403 otherwise): the entries are the audit trail's, which only an
        ADMIN may read (``GET /audit-logs``); an ANALYST lists users without them.
        """
        if caller.role is not Role.ADMIN:
            raise Forbidden
        start = self._start(filters, cursor)
        page = await self.repository.page_rows(
            filters, limit=limit, position=start.position, encode=start.encode, reads_on=True
        )
        entries = await self.audit.latest_by_actors(
            [user["id"] for user in page.items], RECENT_AUDIT_LOGS
        )
        by_actor: dict[int, list[dict[str, Any]]] = {}
        for entry in entries:  # newest first within each actor
            by_actor.setdefault(entry["user_id"], []).append(entry)
        for user in page.items:
            user["recent_audit_logs"] = by_actor.get(user["id"], [])
        return page

    def _start(self, filters: UserFilters, cursor: str | None) -> PageStart:
        scope = {"role": filters.role, "is_active": filters.is_active, "q": filters.q}
        return self.cursors.start("users", scope, cursor)

    # -- changes -----------------------------------------------------------------

    async def create(self, actor: Actor, data: UserCreate) -> UserRead:
        # Hashed before the first statement begins the transaction: ~40 ms its pooled
        # connection need not be held for.
        hashed_password = await hash_password_off_loop(data.password)
        if await self.repository.email_taken(data.email):
            raise EmailTaken
        user = User(
            email=data.email,
            full_name=data.full_name,
            hashed_password=hashed_password,
            role=data.role,
            is_active=data.is_active,
        )
        try:
            await self.repository.add(user)
        except IntegrityError as exc:  # a concurrent insert of the same email won the race
            raise EmailTaken from exc
        view = UserRead.model_validate(user)
        await self.audit.record(
            actor,
            Action.CREATE,
            ResourceType.USER,
            user.id,
            {"after": view.model_dump(mode="json")},
            at=user.created_at,
        )
        return view

    async def update(
        self, actor: Actor, user_id: int, data: UserUpdate | UserSelfUpdate
    ) -> UserRead:
        requested = data.changes()
        # Hashed before any row is locked: ~40 ms the locks below need not be held for.
        new_hash = (
            await hash_password_off_loop(requested["password"]) if "password" in requested else None
        )
        # Before the row: a change that may take an active ADMIN away (``_keep_an_admin``).
        ordered = (
            await self.repository.lock_admin_removals_if_admin(user_id)
            if requested.get("role", Role.ADMIN) is not Role.ADMIN
            or requested.get("is_active") is False
            else False
        )
        user = await self._lock_for_change(actor, user_id)
        own = actor.user_id == user.id
        changes: dict[str, Any] = {}

        if "email" in requested and requested["email"] != user.email:
            if await self.repository.email_taken(requested["email"], besides=user.id):
                raise EmailTaken
            changes["email"] = {"old": user.email, "new": requested["email"]}
        for field in ("full_name", "role", "is_active"):
            if field in requested and requested[field] != getattr(user, field):
                old, new = getattr(user, field), requested[field]
                changes[field] = {"old": _plain(old), "new": _plain(new)}
        await self._keep_an_admin(
            user,
            role=requested.get("role", user.role),
            is_active=requested.get("is_active", user.is_active),
            ordered=ordered,
        )
        if new_hash is not None:
            user.hashed_password = new_hash
            changes["password"] = "changed"  # noqa: S105 (a marker, not a secret)
        deactivated = changes.get("is_active") == {"old": True, "new": False}
        if deactivated or new_hash is not None:
            # A user changing their own password stays signed in where they did it.
            keep = actor.session.token_id if own and actor.session and not deactivated else None
            self._end_sessions(user, keep=keep)
        if not changes:
            return UserRead.model_validate(user)

        for field, change in changes.items():
            if field != "password":
                setattr(user, field, change["new"] if field != "role" else Role(change["new"]))
        try:
            await self.repository.save(user)
        except IntegrityError as exc:
            raise EmailTaken from exc
        await self._record_changes(actor, user, changes)
        self._invalidate_after_commit(user.id)
        return UserRead.model_validate(user)

    async def _lock_for_change(self, actor: Actor, user_id: int) -> User:
        """The user's row, locked for the change (404 if there is none).

        A change to one's own account made in a session the locked account no longer takes
        is refused (401): it ended, by a reset or a deactivation, while the request waited
        for the row. Without this, a password change racing an admin's reset could choose
        the password after the reset and keep its session.
        """
        user = await self.repository.get_for_update(user_id)
        if user is None:
            raise NotFound("User not found")
        session = actor.session if actor.user_id == user.id else None
        if session and not session.accepted_by(user.token_version, user.kept_token_id):
            raise NotAuthenticated
        return user

    async def _record_changes(self, actor: Actor, user: User, changes: dict[str, Any]) -> None:
        """An UPDATE entry for ``changes``, but a deactivation is recorded as one (DELETE),
        whichever route made it: an auditor listing deactivations by action finds them all.
        Each at the change's ``updated_at``."""
        deactivated = changes.get("is_active") == {"old": True, "new": False}
        updated = {f: c for f, c in changes.items() if not (deactivated and f == "is_active")}
        if updated:
            await self.audit.record(
                actor,
                Action.UPDATE,
                ResourceType.USER,
                user.id,
                {"changes": updated},
                at=user.updated_at,
            )
        if deactivated:
            await self.audit.record(
                actor, Action.DELETE, ResourceType.USER, user.id, at=user.updated_at
            )

    async def deactivate(self, actor: Actor, user_id: int) -> None:
        """``DELETE /users/{id}``: the same change as ``PATCH`` with ``is_active: false``
        (its rules, its DELETE entry, its sessions ended); nothing when already inactive."""
        await self.update(actor, user_id, UserUpdate(is_active=False))

    async def create_first_admin(self, actor: Actor, email: str) -> tuple[UserRead, str] | None:
        """In development, an empty database gets one ADMIN with a random password."""
        if await self.repository.any_user():
            return None
        password = secrets.token_urlsafe(18)
        view = await self.create(
            actor,
            UserCreate(email=email, password=password, full_name="Administrator", role=Role.ADMIN),
        )
        return view, password

    async def _keep_an_admin(
        self, user: User, *, role: Role, is_active: bool, ordered: bool
    ) -> None:
        """Refuse the change that would leave no active ADMIN.

        Only a change that takes an active ADMIN away is checked, and those few take turns
        on one advisory lock (``ADMIN_REMOVAL_LOCK``): each looks for another active ADMIN
        in a statement that starts once it holds the lock, so, under READ COMMITTED, it sees
        what the change before it committed. Two admins demoting each other at once cannot
        both pass: the second finds the first gone. The look locks no row, and no other
        admin's row is ever locked, so neither a VIEWER's deactivation nor an admin's change
        to their own account waits for a change to some other admin's account.

        The lock is taken before the user's row, if an unlocked read of the row finds an
        active ADMIN (``ordered``). Taken after it, with rows locked ``FOR UPDATE`` as they
        were, it deadlocked those two admins: the one holding the lock writes an audit entry
        whose foreign key takes a KEY SHARE lock on its actor's row, which the other held
        while it waited for the lock. Rows are now locked ``FOR NO KEY UPDATE``, which KEY
        SHARE passes (``UserRepository.get_for_update``), but an email change in the same
        request takes the stronger lock, so the order stays.

        Only a user made an active ADMIN between that read and the row lock gets the lock
        here, after the row; should that rare order close a cycle, PostgreSQL breaks it and
        the change is a 409 "retry", never a pass.
        """
        if not (user.role is Role.ADMIN and user.is_active) or (role is Role.ADMIN and is_active):
            return  # takes no active ADMIN away
        if not ordered:
            await self.repository.lock_admin_removals()
        if not await self.repository.another_active_admin(besides=user.id):
            raise LastAdmin

    @staticmethod
    def _end_sessions(user: User, *, keep: str | None) -> None:
        """Every access token of ``user`` is refused from now on, but the one whose id
        (``jti``) is ``keep``."""
        user.token_version += 1
        user.kept_token_id = keep

    def _invalidate_after_commit(self, user_id: int) -> None:
        async def invalidate() -> None:
            await self.cache.invalidate(CACHE_KIND, user_id)

        self.work.after_commit(invalidate)


def _plain(value: object) -> object:
    return value.value if isinstance(value, Role) else value
