"""The API's errors and how each becomes a response.

Invariant: every error response is JSON ``{"detail": "<sentences>"}`` saying what is wrong
and what to do; FastAPI's own validation errors, unknown routes and store outages included.
Parameter problems are 422 (the status FastAPI already uses for them, so a client sees one
status for every bad parameter), unknown devices and metrics 404, a store that does not
answer 503.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.timerange import QueryError
from ingest.store import StoreError
from wire import WireError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """The API could not do what it was asked (e.g. start serving); the message says why."""


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else text + "."


def explain_validation(errors: Sequence[Any]) -> str:
    """One sentence per problem, naming where the bad value was and what was received."""
    sentences: list[str] = []
    for item in errors:
        loc = [str(p) for p in item.get("loc", ())]
        where_kind = {"query": "query parameter", "path": "path segment", "header": "header"}.get(
            loc[0] if loc else "", "field"
        )
        name = ".".join(loc[1:]) if len(loc) > 1 else ".".join(loc)
        where = f"{where_kind} {name!r}"
        if item.get("type") == "missing":
            sentences.append(f"{where} is required.")
            continue
        got = item.get("input")
        shown = "" if got is None or isinstance(got, dict | list) else f" (got {str(got)[:80]!r})"
        sentences.append(_sentence(f"{where}: {item.get('msg', 'invalid value')}{shown}"))
    return " ".join(sentences) or "The request is invalid."


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _error(422, explain_validation(exc.errors()))


async def _on_query(request: Request, exc: Exception) -> JSONResponse:
    return _error(422, _sentence(str(exc)))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    # Starlette's router answers unknown paths and methods with bare phrases.
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"There is no route {request.url.path}; the API is described at /docs."
    elif exc.status_code == 405 and detail == "Method Not Allowed":
        detail = f"{request.method} is not allowed on {request.url.path}; see /docs for its methods."
    return _error(exc.status_code, _sentence(str(detail)), getattr(exc, "headers", None))


async def _on_store(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreError)
    if exc.retryable:
        # An outage: the client may retry; logged once per request at warning, not as a crash.
        log.warning("store unavailable during %s %s: %s", request.method, request.url.path, exc)
        return _error(
            503,
            _sentence(f"The time-series store did not answer: {exc}") + " Try again shortly.",
            {"Retry-After": "5"},
        )
    log.error("store refused %s %s: %s", request.method, request.url.path, exc)
    return _error(500, _sentence(f"The time-series store refused the query: {exc}"))


async def _on_out_of_range(request: Request, exc: Exception) -> JSONResponse:
    # A number the request passed validation with but the database cannot hold (SQLite's and
    # PostgreSQL's integers are 64-bit): the caller's value, not a server fault.
    log.info("%s %s: a value is out of the database's range: %s", request.method, request.url.path, exc)
    return _error(422, "A number in the request is out of range (integers must fit in 64 bits); "
                       "check ids, cursors, limits and times.")


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this reply, so the server logs its traceback.
    return _error(
        500, f"Internal error ({type(exc).__name__}) while serving {request.url.path}; see the API log."
    )


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the ``{"detail": ...}`` shape."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(QueryError, _on_query)
    app.add_exception_handler(WireError, _on_query)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(StoreError, _on_store)
    app.add_exception_handler(OverflowError, _on_out_of_range)
    app.add_exception_handler(DataError, _on_out_of_range)
    app.add_exception_handler(Exception, _on_unexpected)
