"""Request parameters: those every list shares, and query strings read whole into a model."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

M = TypeVar("M", bound=BaseModel)

# PostgreSQL text cannot hold NUL: refused as a 422 here rather than by the database.
NO_NUL = r"^[^\x00]*$"

_WHOLE_NUMBER = re.compile(r"-?[0-9]+")


def _whole_number(value: object) -> object:
    """A number in a URL is written in decimal digits, nothing else. pydantic's lax mode
    would also read ``3.0``, `` 5 ``, ``+5`` and ``1_000``: a client that sends those
    has made a mistake it should hear about (API.md: a limit other than 1..100 is a 422)."""
    if isinstance(value, str) and not _WHOLE_NUMBER.fullmatch(value):
        raise PydanticCustomError(
            "int_parsing", "Input should be a whole number, in decimal digits"
        )
    return value


WholeNumber = BeforeValidator(_whole_number)
"""Marks an ``int`` read from a URL: decimal digits only (see ``_whole_number``)."""

PathId = Annotated[int, Path(ge=1, le=2**63 - 1), WholeNumber]


VALIDATION_ERROR = {
    "description": "Validation Error",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}


class PageQuery(BaseModel):
    """The query parameters of a page of any list; a list's own query model extends it.

    A parameter the list does not know is refused (422), not ignored: a misspelt filter
    (``?userid=5``) would otherwise answer with every row, as if it had been applied.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: Annotated[int, WholeNumber] = Field(
        default=20, ge=1, le=100, description="Page size, 1..100"
    )
    # Its minLength is documented, not enforced here: a cursor that is not one is a 400
    # (API.md), not a 422.
    cursor: str | None = Field(
        default=None,
        description="`next_cursor` or `prev_cursor` of a previous page of the same query; "
        "anything else, the empty string included, is refused with 400",
        json_schema_extra={"minLength": 1},
    )


class QueryModel(Generic[M]):
    """A dependency that reads a route's whole query string into ``model``, in one call.

    FastAPI reads declared query parameters one by one and inspects each one's type again
    on every request: about 28 µs of a worker's CPU a parameter here, 0.17 ms of the
    1.06 ms that ``GET /users`` cost in-process with six of them (measured side by side,
    the same route with and without them declared). The hottest lists read theirs here
    instead: the same validation, by the same rules (pydantic's, lax as for any query
    value), in one ``model_validate``; net of this dependency's own cost, ``GET /users``
    went from 1.131 to 1.028 and from 1.012 to 0.942 ms (two runs, both routes side by side).
    FastAPI no longer sees the parameters, so the route documents them itself: pass
    ``openapi`` as its ``openapi_extra``. A refusal is the 422 FastAPI's own would be (each
    error at ``["query", name]``, all errors at once); a model that forbids extra fields
    refuses unknown parameters the same way, and a parameter given twice is refused too:
    reading one of its values would answer, silently, a question the client did not ask
    (``?action=LOGIN&action=CREATE`` is not "either").
    """

    def __init__(self, model: type[M]) -> None:
        self.model = model
        self.openapi: dict[str, Any] = {
            "parameters": query_parameters(model),
            # FastAPI documents its 422 only where it reads the parameters itself.
            "responses": {"422": VALIDATION_ERROR},
        }

    async def __call__(self, request: Request) -> M:
        given = request.query_params.multi_items()
        values = dict(given)
        if len(values) != len(given):
            raise RequestValidationError(repeated_fields(given))
        try:
            return self.model.model_validate(values)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from None


def no_query_parameters(request: Request) -> None:
    """A dependency for a route that takes no query parameters and checks no caller."""
    names = dict.fromkeys(name for name, _ in request.query_params.multi_items())
    if names:
        raise RequestValidationError(
            [
                {"type": "extra_forbidden", "loc": ("query", name), "msg": _NOT_A_PARAMETER}
                for name in names
            ]
        )


_NOT_A_PARAMETER = "This route takes no query parameters"


def takes_query(dependant: Dependant) -> bool:
    """Whether a route reads query parameters, declared one by one or through a
    ``QueryModel``, itself or in a dependency."""
    return (
        bool(dependant.query_params)
        or isinstance(dependant.call, QueryModel)
        or any(takes_query(dependency) for dependency in dependant.dependencies)
    )


def repeated_fields(
    items: Sequence[tuple[str, Any]], *, where: str = "query"
) -> list[dict[str, Any]]:
    """A validation error for each name given more than once (none when each is once)."""
    message = "Give this parameter once" if where == "query" else "Give this field once"
    return [
        {"type": "repeated", "loc": (where, name), "msg": message}
        for name, count in Counter(name for name, _ in items).items()
        if count > 1
    ]


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def refuse_repeated_json_keys(request: Request) -> None:
    """A JSON body that names a key twice in one object is refused (422), as a query
    parameter or a form field given twice is: Python's parser keeps the last one
    (``{"role": "VIEWER", "role": "ADMIN"}`` made an ADMIN), while a proxy, a firewall or
    an audit tool reading the same bytes may keep the first.

    Called once the caller may use the route (``fund.auth``), as the query check is, so a
    request without a token is a 401 first. FastAPI has read the body by then (before any
    dependency) and the request keeps it. A body that is not JSON is left to FastAPI.
    """
    if request.method not in _BODY_METHODS:
        return
    content_type = request.headers.get("content-type")
    if content_type is not None and "json" not in content_type.lower():
        return
    body = await request.body()
    errors: list[dict[str, Any]] = []

    def object_of(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        errors.extend(repeated_fields(pairs, where="body"))
        return dict(pairs)

    try:
        json.loads(body, object_pairs_hook=object_of)
    except (ValueError, RecursionError):
        return
    if errors:
        raise RequestValidationError(errors)


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI's description of ``model``'s fields as query parameters, self-contained
    (the schemas of enums written in place, not referred to)."""
    schema = model.model_json_schema()
    definitions = schema.get("$defs", {})
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            # FastAPI's title when pydantic gives none (a field whose schema is a reference).
            "schema": {"title": name.replace("_", " ").title(), **_inlined(prop, definitions)},
        }
        if "description" in prop:
            parameter["description"] = prop["description"]
        parameters.append(parameter)
    return parameters


def _inlined(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            siblings = {key: value for key, value in node.items() if key != "$ref"}  # default
            referred = definitions[ref.removeprefix("#/$defs/")]
            return _inlined({**referred, **siblings}, definitions)
        return {key: _inlined(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inlined(item, definitions) for item in node]
    return node
