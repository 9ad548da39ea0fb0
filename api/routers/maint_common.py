"""What the maintenance routers share: a database session per request, the acting user,
paging, and how maintenance errors become responses.

Who acts: the authenticated caller (``api.auth.principal``): a session's user or a token's
owner goes into the audit trail. (Before authentication, writes named their user in an
``X-Vigil-User`` header; it is no longer read.)

Errors: 404 for an unknown asset or work order, 422 for a bad value (the detail names the
field), 409 for a refused state transition (the body adds ``allowed``, the states the work
order may go to) or a conflict with what is stored (a duplicate code).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import PrincipalDep
from api.deps import EngineDep
from api.schemas import ErrorBody
from maintenance.errors import ConflictError, InvalidError, NotFoundError, TransitionError

log = logging.getLogger(__name__)


def session(engine: EngineDep) -> Iterator[Session]:
    """One session per request; handlers commit, anything else is rolled back at the end."""
    with Session(engine, expire_on_commit=False) as s:
        yield s


def actor(caller: PrincipalDep) -> str:
    """Who makes a change, for the audit trail: the authenticated caller (for a token, its
    user; the token id is in the security audit log)."""
    return caller.user


SessionDep = Annotated[Session, Depends(session)]
ActorDep = Annotated[str, Depends(actor)]
LimitQ = Annotated[int, Query(ge=1, le=500, description="Page size (at most 500).")]
CursorQ = Annotated[int | None, Query(ge=1, description="`next_cursor` of the previous page.")]

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown asset, work order, schedule or round."},
    409: {"model": ErrorBody, "description": "Refused transition (with `allowed`) or a conflict."},
    422: {"model": ErrorBody, "description": "A value is invalid; the detail names the field."},
}


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else text + "."


async def _on_not_found(_r: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": _sentence(str(exc))}, status_code=404)


async def _on_invalid(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidError)
    return JSONResponse({"detail": _sentence(str(exc)), "field": exc.field}, status_code=422)


async def _on_conflict(_r: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, TransitionError):
        return JSONResponse(
            {"detail": _sentence(str(exc)), "state": exc.current, "allowed": list(exc.allowed)},
            status_code=409,
        )
    return JSONResponse({"detail": _sentence(str(exc))}, status_code=409)


async def _on_integrity(request: Request, exc: Exception) -> JSONResponse:
    log.info("maintenance: %s %s conflicts with stored data: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {
            "detail": "The change conflicts with what is stored (a duplicate code, or an "
            "open work order for the same equipment and fault); reload and try again."
        },
        status_code=409,
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn maintenance errors into responses."""
    app.add_exception_handler(NotFoundError, _on_not_found)
    app.add_exception_handler(InvalidError, _on_invalid)
    app.add_exception_handler(ConflictError, _on_conflict)
    app.add_exception_handler(IntegrityError, _on_integrity)
