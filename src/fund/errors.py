"""Domain errors, raised by services, and their one mapping to HTTP statuses."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar, NoReturn

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class FundError(Exception):
    """Base of every error a service raises on purpose."""

    status = HTTPStatus.BAD_REQUEST
    detail = "Bad request"
    default_headers: ClassVar[dict[str, str]] = {}

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.detail)
        self.detail = detail or self.detail
        self.headers: dict[str, str] = dict(self.default_headers)


class BadCursor(FundError):
    status = HTTPStatus.BAD_REQUEST
    detail = "Invalid cursor"


class NotAuthenticated(FundError):
    status = HTTPStatus.UNAUTHORIZED
    detail = "Could not validate credentials"
    default_headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class InvalidCredentials(NotAuthenticated):
    detail = "Incorrect email or password"


class Forbidden(FundError):
    status = HTTPStatus.FORBIDDEN
    detail = "Not allowed for your role"


class NotFound(FundError):
    status = HTTPStatus.NOT_FOUND
    detail = "Not found"


class Conflict(FundError):
    status = HTTPStatus.CONFLICT
    detail = "Conflict"


class EmailTaken(Conflict):
    detail = "A user with this email already exists"


class LastAdmin(Conflict):
    detail = "The last active ADMIN cannot be demoted or deactivated"


class TooManyAttempts(FundError):
    status = HTTPStatus.TOO_MANY_REQUESTS
    detail = "Too many failed login attempts; try again later"

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = max(1, retry_after)
        self.headers["Retry-After"] = str(self.retry_after)


class Unavailable(FundError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    detail = "Service temporarily unavailable"
    default_headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class ExportsBusy(Unavailable):
    detail = "Too many audit exports in progress; try again later"
    default_headers: ClassVar[dict[str, str]] = {"Retry-After": "5"}


def error_response(error: FundError) -> JSONResponse:
    """The one HTTP rendering of a domain error."""
    return JSONResponse(
        {"detail": error.detail}, status_code=error.status, headers=error.headers or None
    )


class ErrorOut(BaseModel):
    """The body of every error but 422 (whose ``detail`` lists the fields refused)."""

    detail: str


def documented(*errors: type[FundError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the domain errors a route may answer with."""
    responses: dict[int | str, dict[str, Any]] = {}
    for error in errors:
        entry = responses.setdefault(int(error.status), {"model": ErrorOut, "description": ""})
        entry["description"] = "; ".join(d for d in (entry["description"], error.detail) if d)
    return responses


async def method_not_allowed() -> NoReturn:
    """The endpoint of a method a literal path does not serve but a sibling with a path
    parameter does: ``DELETE /users/me`` would otherwise reach ``DELETE /users/{user_id}``
    and be a 422 for the id "me". It gets the 405, with ``Allow``, that any other path
    answers an unserved method with (registered with ``include_in_schema=False``, before
    the parameter's route)."""
    raise StarletteHTTPException(405)
