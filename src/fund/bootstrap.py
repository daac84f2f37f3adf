"""Account set-up outside HTTP: ``fund users create`` and the first development ADMIN."""

from __future__ import annotations

import getpass
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import ValidationError

from fund.audit.service import Actor
from fund.config import Settings, validation_message
from fund.db import create_engine, create_sessionmaker, unit_of_work
from fund.errors import EmailTaken, FundError
from fund.kit.cache import Cache
from fund.kit.pagination import CursorCodec
from fund.kit.text import has_letter_or_digit
from fund.users.schemas import MAX_FULL_NAME, UserCreate
from fund.users.service import UserService

FIRST_ADMIN_EMAIL = "admin@example.com"


class CreateUserFailed(Exception):
    """A clear, one-line reason for the command line."""


def _cli_actor() -> Actor:
    # No HTTP request: the entry records the operator's login and host instead.
    return Actor(
        user_id=None,
        ip_address=None,
        user_agent=f"fund-cli ({_operator()}@{socket.gethostname()})",
        request_id=None,
    )


def _operator() -> str:
    """The login running the command, or its uid where the system has no name for it: a
    container run as an arbitrary uid (``--user 1234``, OpenShift) has no passwd entry, and
    ``getpass.getuser()`` raises (KeyError before Python 3.13, OSError since)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _name_from(email: str) -> str:
    """A name for an account made without one: its address's local part, or the whole
    address when that part has no letter or digit (``___@example.com``)."""
    local = email.strip().split("@", maxsplit=1)[0]
    return (local if has_letter_or_digit(local) else email.strip())[:MAX_FULL_NAME]


async def create_user(
    settings: Settings, email: str, password: str, role: str, full_name: str | None
) -> int:
    try:
        # A too-long email is reported as one, not as the name made from it.
        # Given empty, it is refused like a blank one; only a missing name is made up.
        name = full_name if full_name is not None else _name_from(email)
        data = UserCreate(email=email, password=password, role=role, full_name=name)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {validation_message(e['msg'])}" for e in exc.errors()
        )
        raise CreateUserFailed(reasons) from exc
    try:
        async with _user_service(settings) as service:
            user = await service.create(_cli_actor(), data)
    except FundError as exc:
        raise CreateUserFailed(exc.detail) from exc
    return user.id


async def create_first_admin(settings: Settings) -> tuple[str, str] | None:
    """An empty development database gets one ADMIN with a random password, printed once."""
    try:
        async with _user_service(settings) as service:
            created = await service.create_first_admin(_cli_actor(), FIRST_ADMIN_EMAIL)
    except EmailTaken:
        return None  # another process, starting at the same moment, made it first
    if created is None:
        return None
    return created[0].email, created[1]


@asynccontextmanager
async def _user_service(settings: Settings) -> AsyncIterator[UserService]:
    """A one-off unit of work outside HTTP, committed as a request's is (``unit_of_work``)
    when the block ends, rolled back if it raises; no cache to invalidate (nothing cached a
    new user)."""
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, settings)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as work:
            yield UserService(
                work,
                Cache(None),
                # Nothing this command signs leaves it: a key of its own, so that it does
                # not make (and announce) the development key file in the working directory.
                CursorCodec(secrets.token_bytes(32)),
                cache_ttl=settings.cache_user_ttl,
            )
    finally:
        await engine.dispose()
