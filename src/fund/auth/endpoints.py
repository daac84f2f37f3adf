"""``/api/v1/auth``: the OAuth2 password flow (the /docs Authorize button uses it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordRequestForm

from fund.auth.schemas import TokenOut
from fund.deps import AnonymousActorDep, AuthServiceDep, UnitOfWorkRoute
from fund.errors import (
    InvalidCredentials,
    TooManyAttempts,
    Unavailable,
    documented,
    error_response,
)
from fund.kit.params import no_query_parameters, repeated_fields

router = APIRouter(route_class=UnitOfWorkRoute, prefix="/auth", tags=["auth"])


@router.post(
    "/token",
    response_model=TokenOut,
    responses=documented(InvalidCredentials, TooManyAttempts, Unavailable),
    dependencies=[Depends(no_query_parameters)],
)
async def issue_token(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    actor: AnonymousActorDep,
    auth: AuthServiceDep,
) -> TokenOut | JSONResponse:
    # A field given twice is refused, as a list's repeated parameter is: the form model would
    # take the last, and "which email was that sign-in for?" must have one answer.
    repeated = repeated_fields((await request.form()).multi_items(), where="body")
    if repeated:
        raise RequestValidationError(repeated)
    outcome = await auth.login(actor, form.username, form.password)
    if outcome.refusal is not None:
        # Returned, not raised: the LOGIN_FAILED entry must commit with this request.
        return error_response(outcome.refusal)
    assert outcome.token is not None
    return TokenOut(access_token=outcome.token.token, expires_in=outcome.token.expires_in)
