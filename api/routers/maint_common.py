"""What the maintenance routers share: a database session per request, the acting user,
paging, and how maintenance errors become responses.

Who acts: until authentication lands, every write names its user in the ``X-Vigil-User``
header (required on writes, 1-100 printable characters); it goes into the audit trail.

Errors: 404 for an unknown asset or work order, 422 for a bad value (the detail names the
field), 409 for a refused state transition (the body adds ``allowed``, the states the work
order may go to) or a conflict with what is stored (a duplicate code).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import EngineDep
from api.schemas import ErrorBody
from maintenance.errors import ConflictError, InvalidError, NotFoundError, TransitionError

log = logging.getLogger(__name__)
_USER_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,100}\Z")


def session(engine: EngineDep) -> Iterator[Session]:
    """One session per request; handlers commit, anything else is rolled back at the end."""
    with Session(engine, expire_on_commit=False) as s:
        yield s


def actor(
    x_vigil_user: Annotated[
        str | None,
        Header(description="Who is making this change, for the audit trail (until authentication lands)."),
    ] = None,
) -> str:
    if x_vigil_user is None or not x_vigil_user.strip():
        raise InvalidError(
            "header X-Vigil-User",
            "is required on every change: say who is making it (e.g. X-Vigil-User: jane.doe)",
        )
    if not _USER_RE.match(x_vigil_user):
        raise InvalidError("header X-Vigil-User", "must be 1-100 printable characters")
    return x_vigil_user.strip()


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
