"""The dashboard's HTML pages: one small shell per view, filled in by a vanilla JS module.

The server renders only the shell (navigation, who is logged in, what they may do); each
view's module (``static/<view>.js``) fetches the JSON API and then applies live events from
``/api/v1/stream``. So the pages use exactly the API that scripts use, with the same
permissions, and a page never needs a full reload to stay current.

Every page but ``/login`` needs a session: without one the browser is sent to
``/login?next=<page>``. The caller's role and permissions are written into the shell so the
page shows only the actions the API would allow (the API checks again on every action).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Annotated, Final
from urllib.parse import quote

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Permission, Principal
from api.dashboard.routes import ReadDep

STATIC_DIR: Final = Path(__file__).parent / "static"
# npm installs the front-end libraries here (package.json at the repository root).
VENDOR_DIR: Final = Path(__file__).resolve().parents[2] / "node_modules"

router = APIRouter(include_in_schema=False)

NAV: Final = (
    ("/", "Overview", "overview"),
    ("/alarms", "Alarms", "alarms"),
    ("/work-orders", "Work orders", "workorders"),
    ("/fleet", "Fleet", "fleet"),
    ("/oncall", "On call", "oncall"),
    ("/rounds", "Rounds", "rounds"),
    ("/buildings", "Buildings", "buildings"),
)

_SHELL: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Vigil</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/dashboard/style.css">{head}
</head><body data-view="{view}">
<header class="top"><a class="brand" href="/">Vigil</a>
<nav>{nav}</nav>
<span class="live" id="live" title="live updates">●</span>
<span class="who">{user} <small>({role})</small></span>
<button class="link" id="logout" type="button">Log out</button></header>
<main id="app" aria-live="polite"><p class="muted">Loading…</p></main>
<script id="principal" type="application/json">{principal}</script>
<script type="module" src="/static/dashboard/{module}.js"></script>
</body></html>
"""


class LoginRedirect:
    """ASGI middleware: a page (not ``/api/`` nor ``/static/``) answering 401 sends the browser
    to ``/login?next=<page>`` instead. Whoever refuses (the app-wide guard or the page's own
    ``requires``), the person sees the login form, and API clients still get their 401."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "GET" or path.startswith(("/api/", "/static/")):
            await self.app(scope, receive, send)
            return
        redirected = False

        async def send_or_redirect(message: Message) -> None:
            nonlocal redirected
            if message["type"] == "http.response.start" and message["status"] == 401:
                redirected = True
                query = scope.get("query_string", b"").decode("latin-1")
                target = path + (f"?{query}" if query else "")
                location = f"/login?next={quote(target, safe='')}"
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", location.encode()), (b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
            if not redirected:
                await send(message)

        await self.app(scope, receive, send_or_redirect)


def _principal_json(p: Principal) -> str:
    data = {
        "user": p.user,
        "role": p.role,
        "sites": sorted(p.sites) if p.sites is not None else None,
        "can": sorted(perm.value for perm in Permission if p.can(perm)),
    }
    # </script> cannot appear inside JSON text once "<" is escaped.
    return json.dumps(data).replace("<", "\\u003c")


def shell(p: Principal, view: str, title: str, module: str, head: str = "") -> HTMLResponse:
    nav = "".join(
        f'<a href="{href}"{" class=on" if key == view else ""}>{label}</a>' for href, label, key in NAV
    )
    return HTMLResponse(
        _SHELL.format(
            title=html.escape(title),
            view=view,
            nav=nav,
            user=html.escape(p.user),
            role=html.escape(p.role),
            principal=_principal_json(p),
            module=module,
            head=head,
        ),
        headers={"Cache-Control": "no-store"},
    )


def _page(p: Principal, view: str, title: str, module: str, head: str = "") -> Response:
    return shell(p, view, title, module, head)


@router.get("/login", response_class=HTMLResponse)
def login_page() -> HTMLResponse:
    return HTMLResponse(
        (STATIC_DIR / "login.html").read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"}
    )


# The one page without a session (api.security.policy.is_public reads this mark).
login_page.__vigil_public__ = True  # type: ignore[attr-defined]


@router.get("/", response_class=HTMLResponse)
def overview_page(p: ReadDep) -> Response:
    return _page(p, "overview", "Overview", "overview")


@router.get("/alarms", response_class=HTMLResponse)
def alarms_page(p: ReadDep) -> Response:
    return _page(p, "alarms", "Alarms", "alarms")


@router.get("/work-orders", response_class=HTMLResponse)
def board_page(p: ReadDep) -> Response:
    return _page(p, "workorders", "Work orders", "workorders")


_UPLOT: Final = '\n<link rel="stylesheet" href="/static/vendor/uplot/dist/uPlot.min.css">'


@router.get("/equipment/{eq_id}", response_class=HTMLResponse)
def equipment_page(p: ReadDep, eq_id: Annotated[int, PathParam(ge=1)]) -> Response:
    return _page(p, "equipment", f"Equipment {eq_id}", "equipment", _UPLOT)


@router.get("/fleet", response_class=HTMLResponse)
def fleet_page(p: ReadDep) -> Response:
    return _page(p, "fleet", "Fleet health", "fleet")


@router.get("/oncall", response_class=HTMLResponse)
def oncall_page(p: ReadDep) -> Response:
    return _page(p, "oncall", "On call", "oncall")


@router.get("/rounds", response_class=HTMLResponse)
def rounds_page(p: ReadDep) -> Response:
    return _page(p, "rounds", "Inspection rounds", "rounds")


@router.get("/buildings", response_class=HTMLResponse)
def buildings_page(p: ReadDep) -> Response:
    return _page(p, "buildings", "Buildings", "buildings")
