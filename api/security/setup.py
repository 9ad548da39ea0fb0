"""What ``create_app`` installs for security besides the guard: the rate limiters, CORS
(closed unless ``cors_origins`` names origins), the API docs (open in demo mode, behind a
login in production), and the bootstrap administrator of an empty user table."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import Engine

from api.security import store
from api.security.policy import Limits
from api.settings import ApiSettings

log = logging.getLogger(__name__)


def install(app: FastAPI, settings: ApiSettings) -> None:
    app.state.vigil_limits = Limits.from_settings(settings)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=True,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])
    _install_docs(app, settings)


def _install_docs(app: FastAPI, settings: ApiSettings) -> None:
    # Routes of the app, so they pass the guard: in production /docs and /openapi.json need a
    # session or token (the schema maps every route an attacker could try); in demo mode they
    # are marked public.
    async def openapi_json(_request: Request) -> JSONResponse:
        return JSONResponse(app.openapi())

    async def swagger_ui(_request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs",
                                   oauth2_redirect_url="/docs/oauth2-redirect")

    async def swagger_redirect(_request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(_request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    endpoints: tuple[tuple[str, Any], ...] = (
        ("/openapi.json", openapi_json), ("/docs", swagger_ui), ("/docs/oauth2-redirect", swagger_redirect),
        ("/redoc", redoc))
    for path, endpoint in endpoints:
        endpoint.__vigil_public__ = settings.mode == "demo"
        app.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)


def bootstrap_admin(engine: Engine, settings: ApiSettings) -> None:
    """Create the first administrator from the settings when there is no user at all."""
    password = settings.bootstrap_admin_password.get_secret_value()
    if not password:
        return
    now = time.time_ns() // 1_000_000
    with engine.begin() as conn:
        if store.count_users(conn):
            return
        store.create_user(conn, settings.bootstrap_admin, password, "admin", None, now,
                          check_strength=settings.mode != "demo")
        store.record(conn, now, "system:bootstrap", "user.create", settings.bootstrap_admin, role="admin")
    log.warning("api: created the first administrator %r from bootstrap_admin_password; change the "
                "password with `vigil user passwd %s`", settings.bootstrap_admin, settings.bootstrap_admin)




# The demo's users: known passwords, printed at start and in the README. Only for
# `vigil demo` (mode "demo"); a production API never creates them.
DEMO_PASSWORD_SUFFIX = "-demo-pass"
DEMO_USERS: tuple[tuple[str, str], ...] = (
    ("admin", "admin"), ("engineer", "engineer"), ("operator", "operator"),
    ("technician", "technician"), ("viewer", "viewer"))


def demo_users(database_url: str, first_site: str | None = None) -> list[tuple[str, str, str, str]]:
    """Create the demo users (if missing) on ``database_url``; returns (user, password, role,
    sites) for the banner. ``viewer`` sees only ``first_site``, to show site scoping."""
    from api.security import tables
    from wire import database

    engine = database.create(database_url)
    out: list[tuple[str, str, str, str]] = []
    try:
        tables.upgrade(engine)
        now = time.time_ns() // 1_000_000
        with engine.begin() as conn:
            for user, role in DEMO_USERS:
                sites = [first_site] if role == "viewer" and first_site else None
                password = f"{user}{DEMO_PASSWORD_SUFFIX}"
                if store.get_user(conn, user) is None:
                    store.create_user(conn, user, password, role, sites, now, check_strength=False)
                    store.record(conn, now, "system:demo", "user.create", user, role=role)
                out.append((user, password, role, ", ".join(sites) if sites else "every site"))
    finally:
        engine.dispose()
    return out
