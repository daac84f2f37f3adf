"""Password hashing (argon2id) and signed access tokens (JWT, HS256 only)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import os
import re
import secrets
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import Type

# OWASP's argon2id recommendation: 19 MiB of memory, 2 iterations, 1 lane.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_PARALLELISM = 1
_hasher = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    type=Type.ID,
)
# Verified against when the email is unknown, so the response time does not tell.
_DUMMY_HASH = _hasher.hash("not a real password, only spends the same time")

_ALGORITHM = "HS256"
_ALGORITHMS = [_ALGORITHM]  # fixed: "none" and asymmetric confusion are impossible
# What ``issue_access_token`` makes a token id of (``secrets.token_urlsafe``): the account's
# cache entry keeps one between spaces, so nothing else is taken, even signed.
_TOKEN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
"""A token's one spelling (RFC 7515 section 7.1: base64url without padding). PyJWT also
decodes a padded signature, so ``<token>=`` would pass as a second spelling of a token."""


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A separate key per purpose, so a token key never signs a cursor and vice versa."""
    return hmac.new(secret, b"fund/" + purpose.encode(), hashlib.sha256).digest()


def normal_password(password: str) -> str:
    """A password as it is hashed: in Unicode NFKC (NIST SP 800-63B, 5.1.1.2), so the one
    typed on another keyboard or system reads the same (``é`` as one code point or as ``e``
    and an accent, which macOS and iOS may send; fullwidth letters from an IME)."""
    return unicodedata.normalize("NFKC", password)


def hash_password(password: str) -> str:
    return _hasher.hash(normal_password(password))


def verify_password(password: str, hashed: str | None) -> bool:
    """Whether ``password`` is the one ``hashed`` was made of: in NFKC, or, for a hash made
    before passwords were normalised, as typed (a second check only for a password that
    NFKC changes, known or unknown account alike). The same work whether or not ``hashed``
    exists."""
    target = hashed or _DUMMY_HASH
    normal = normal_password(password)
    ok = _verified(target, normal)
    if not ok and normal != password:
        ok = _verified(target, password)
    return ok and hashed is not None


def _verified(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


# argon2id takes ~40 ms of CPU: on the event loop that stalls every request of the worker
# (and the Redis calls waiting on it past their timeout). argon2-cffi releases the GIL while
# it works, so a thread runs it beside the loop: one of a pool of its own, a thread per core.
# More hashes at once than cores finish no sooner, and each holds 19 MiB while it runs; a
# burst of sign-ins (a spray of guessed emails) waits its turn in the pool's queue instead,
# holding nothing else (the sign-in holds no database connection while it waits).
_HASHING = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="argon2")


async def hash_password_off_loop(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_HASHING, hash_password, password)


async def verify_password_off_loop(password: str, hashed: str | None) -> bool:
    return await asyncio.get_running_loop().run_in_executor(
        _HASHING, verify_password, password, hashed
    )


class InvalidToken(Exception):
    """Missing, malformed, forged, expired or otherwise unacceptable token."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    expires_in: int


def issue_access_token(key: bytes, user_id: int, version: int, minutes: int) -> AccessToken:
    """A token for ``user_id`` at its account's ``token_version`` (claim ``ver``), with an
    id of its own (``jti``)."""
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "ver": version,
        "jti": secrets.token_urlsafe(16),
        "iat": now,
        "exp": now + timedelta(minutes=minutes),
    }
    return AccessToken(jwt.encode(claims, key, algorithm=_ALGORITHM), minutes * 60)


@dataclass(frozen=True, slots=True)
class TokenSubject:
    user_id: int
    version: int
    """The account's ``token_version`` when the token was issued; 0 if it names none
    (issued before versions existed, migration 009)."""
    token_id: str | None
    """The token's own id (``jti``, URL-safe base64); None in a token issued before
    migration 009."""

    def accepted_by(self, token_version: int, kept_token_id: str | None) -> bool:
        """Whether the account, at ``token_version`` and keeping ``kept_token_id``'s
        session, still takes this token: issued at its current version, or the one kept."""
        return self.version == token_version or (
            self.token_id is not None and self.token_id == kept_token_id
        )


def read_access_token(key: bytes, token: str) -> TokenSubject:
    """Whom the token was issued to; ``InvalidToken`` for anything else."""
    subject, expires_at = _verified_claims(key, token)
    if time.time() >= expires_at:
        raise InvalidToken
    return subject


@functools.lru_cache(maxsize=4096)
def _verified_claims(key: bytes, token: str) -> tuple[TokenSubject, float]:
    """The subject and expiry of a token whose signature and claims hold.

    A token's signature check has one answer for a given key, so a client's repeated
    token is verified once per process (bounded; refusals are not kept): the expiry is
    still checked on every use, by ``read_access_token``.
    """
    if not _COMPACT_JWS.fullmatch(token):
        raise InvalidToken
    try:
        claims = jwt.decode(
            token, key, algorithms=_ALGORITHMS, options={"require": ["exp", "iat", "sub"]}
        )
        subject = claims["sub"]
        if not (isinstance(subject, str) and subject.isascii() and subject.isdigit()):
            raise InvalidToken
        user_id = int(subject) if len(subject) <= 19 else 0
        if not 0 < user_id < 2**63:  # a user id is a positive bigint
            raise InvalidToken
        version = claims.get("ver", 0)
        if type(version) is not int or not 0 <= version < 2**31:  # an integer column
            raise InvalidToken
        token_id = claims.get("jti")
        if token_id is not None and not (
            isinstance(token_id, str) and _TOKEN_ID.fullmatch(token_id)
        ):
            raise InvalidToken
        return TokenSubject(user_id, version, token_id), float(claims["exp"])
    except (jwt.InvalidTokenError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidToken from exc
