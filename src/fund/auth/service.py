"""Login and token checks. Failures are audited and committed like any change."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import structlog

from fund.audit.service import Actor, AuditTrail
from fund.auth.throttle import LoginThrottle
from fund.db import UnitOfWork
from fund.errors import InvalidCredentials, NotAuthenticated, NotFound, TooManyAttempts
from fund.kit.security import (
    AccessToken,
    InvalidToken,
    TokenSubject,
    issue_access_token,
    read_access_token,
    verify_password_off_loop,
)
from fund.kit.text import sign_in_address
from fund.models import Action, ResourceType
from fund.users.repository import UserRepository
from fund.users.schemas import UserRead
from fund.users.service import UserService

log = structlog.get_logger(__name__)

MAX_EMAIL_CHARS = 320


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    """A login either yields a token or a refusal that must still be committed (its audit entry)."""

    token: AccessToken | None
    refusal: InvalidCredentials | None


class AuthService:
    def __init__(
        self,
        work: UnitOfWork,
        throttle: LoginThrottle,
        *,
        token_key: bytes,
        token_minutes: int,
    ) -> None:
        self.users = UserRepository(work)
        self.audit = AuditTrail(work)
        self.throttle = throttle
        self.token_key = token_key
        self.token_minutes = token_minutes

    async def login(self, actor: Actor, email: str, password: str) -> LoginOutcome:
        # A failed attempt is recorded as typed (API.md: {"email": attempted}), bounded;
        # PostgreSQL text cannot hold NUL, so it shows as U+FFFD.
        attempted = email.replace("\x00", "\ufffd")[:MAX_EMAIL_CHARS]
        normalized = sign_in_address(email)  # as addresses are kept (fund.kit.text)
        # Only a name that could be an account's is looked up: "ad\0min@…" or a name longer
        # than any email is nobody's, whatever it becomes once made storable.
        can_be_an_account = "\x00" not in normalized and len(normalized) <= MAX_EMAIL_CHARS
        email = normalized.replace("\x00", "\ufffd")[:MAX_EMAIL_CHARS]
        retry_after = await self.throttle.attempt(email)
        if retry_after:
            # Not an audited change, but a guessing attempt to see: the security log has it.
            log.warning(
                "login_throttled", email=email, ip=actor.ip_address, retry_after=retry_after
            )
            raise TooManyAttempts(retry_after)

        try:
            # Read on its own, before any transaction: the request's transaction (and its
            # pooled connection) begins with the audit entry, after the ~40 ms password check.
            user = await self.users.get_credentials(email) if can_be_an_account else None
            # Verified even for an unknown email (against a dummy hash): same time either way.
            password_ok = await verify_password_off_loop(
                password, user["hashed_password"] if user else None
            )
        except BaseException:
            # No verdict (PostgreSQL down, the request cancelled): not a failure to count.
            with anyio.CancelScope(shield=True):
                await self.throttle.unanswered(email)
            raise
        if user is None or not password_ok or not user["is_active"]:
            await self.audit.record(
                actor,
                Action.LOGIN_FAILED,
                ResourceType.USER,
                user["id"] if user else "",
                {"email": attempted},
            )
            return LoginOutcome(None, InvalidCredentials())

        # Issued for the account as read: if its password changes or it is deactivated
        # meanwhile, the token names an older token_version, or an inactive account, and
        # every request refuses it.
        user_id = user["id"]
        await self.throttle.succeeded(email)
        await self.audit.record(actor.as_user(user_id), Action.LOGIN, ResourceType.USER, user_id)
        token = issue_access_token(
            self.token_key, user_id, user["token_version"], self.token_minutes
        )
        return LoginOutcome(token, None)


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The caller of a request: its user, and the token it came with."""

    user: UserRead
    token: TokenSubject


async def authenticate(token: str | None, *, token_key: bytes, users: UserService) -> SignedIn:
    """The active user a bearer token belongs to, read fresh (cache invalidated on change).

    A token issued before the account's last password change or deactivation names an
    older ``token_version``: refused like a forged one, unless it is the token the user
    changed their own password with.
    """
    if not token:
        raise NotAuthenticated
    try:
        subject = read_access_token(token_key, token)
    except InvalidToken as exc:
        raise NotAuthenticated from exc
    try:
        account = await users.get_account(subject.user_id)
    except NotFound as exc:
        raise NotAuthenticated from exc
    if not account.user.is_active or not subject.accepted_by(
        account.token_version, account.kept_token_id
    ):
        raise NotAuthenticated
    return SignedIn(account.user, subject)
