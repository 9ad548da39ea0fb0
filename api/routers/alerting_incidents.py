"""Incidents (pages) and their acknowledgement: through the API, and through the signed,
expiring, single-use links sent to phones.

The alerting service owns escalation; these routes record an ack or resolve in the database
(``alerting_command``), mark the incident at once, and the service applies it within a
second, stopping the climb and every pending delivery.

A link's GET only shows a confirmation page (mail scanners and chat previews fetch links);
the button on it POSTs, which uses the link.
"""

from __future__ import annotations

import html
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from alerting import store as alerting_store
from alerting.errors import AlertingError
from api.auth import PrincipalDep
from api.deps import EngineDep, NowMsDep
from api.security import store as security_store
from api.security.policy import check_site_filter

router = APIRouter(prefix="/api/v1/alerting", tags=["alerting"])

STATES = ("pending", "open", "acked", "resolved", "silenced")


class ActionIn(BaseModel):
    by: str | None = Field(None, min_length=1, max_length=128,
                           description="Always the caller; if sent, it must be the caller's user name.")


@router.get("/incidents", summary="Incidents, newest first")
def list_incidents(
    db: EngineDep,
    caller: PrincipalDep,
    state: Annotated[str | None, Query(description=f"One of {', '.join(STATES)}.")] = None,
    site: Annotated[str | None, Query(description="Only this site.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    if state is not None and state not in STATES:
        raise HTTPException(422, f"state {state!r} is not one of {', '.join(STATES)}.")
    check_site_filter(caller, site)
    with db.connect() as conn:
        found = alerting_store.list_incidents(conn, state=state, site=site, limit=limit)
    return {"incidents": [i for i in found if caller.sees(str(i["site"]))]}


@router.get("/incidents/{incident_id}", summary="One incident with its alerts and every delivery attempt")
def get_incident(db: EngineDep, incident_id: str) -> dict[str, Any]:
    with db.connect() as conn:
        inc = alerting_store.get_incident(conn, incident_id)
    if inc is None:
        raise HTTPException(404, f"no incident {incident_id!r}; list them at /api/v1/alerting/incidents.")
    return inc


def _act(db: EngineDep, incident_id: str, action: str, body: ActionIn, caller: Any,
         now_ms: int) -> dict[str, Any]:
    # The actor is the authenticated caller; a `by` naming someone else is refused, not ignored.
    if body.by is not None and body.by != caller.user:
        raise HTTPException(403, f"field 'by': the {action} is recorded as the caller ({caller.user!r}); "
                                 "leave it out.")
    by = caller.user
    try:
        with db.begin() as conn:
            state = alerting_store.add_command(conn, incident_id, action, by, "api", now_ms)
    except AlertingError as e:
        raise HTTPException(404, f"{e}; list incidents at /api/v1/alerting/incidents.") from None
    return {"id": incident_id, "state": state}


@router.post("/incidents/{incident_id}/ack", summary="Acknowledge: stop the escalation")
def ack(db: EngineDep, now: NowMsDep, incident_id: str, caller: PrincipalDep,
        body: ActionIn | None = None) -> dict[str, Any]:
    return _act(db, incident_id, "ack", body or ActionIn(), caller, now)


@router.post("/incidents/{incident_id}/resolve", summary="Resolve: end the incident")
def resolve(db: EngineDep, now: NowMsDep, incident_id: str, caller: PrincipalDep,
            body: ActionIn | None = None) -> dict[str, Any]:
    return _act(db, incident_id, "resolve", body or ActionIn(), caller, now)


_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Vigil</title>
<style>body{{font-family:sans-serif;margin:2em;font-size:1.1em}}
button{{font-size:1.3em;padding:.6em 1.4em}}</style>
</head><body>{content}</body></html>"""

_VERB = {"ack": "Acknowledge", "resolve": "Resolve"}


def _page(content: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(content=content), status_code=status)


@router.get("/links/{token}", summary="The page a link in a message opens (changes nothing)",
            response_class=HTMLResponse)
def link_page(db: EngineDep, now: NowMsDep, token: str) -> HTMLResponse:
    with db.connect() as conn:
        info = alerting_store.find_link(conn, token)
        inc = alerting_store.get_incident(conn, info.incident_id) if info else None
    if info is None or inc is None:
        return _page("<p>This link is not valid: it was never issued or was mistyped.</p>", 404)
    title = html.escape(str(inc["title"]))
    if info.used_ms is not None:
        return _page(f"<h2>{title}</h2><p>This link was already used. "
                     f"The incident is {inc['state']}.</p>", 410)
    if now >= info.expires_ms:
        return _page(f"<h2>{title}</h2><p>This link has expired. The incident is {inc['state']}.</p>", 410)
    verb = _VERB.get(info.action, info.action)
    return _page(f"<h2>{title}</h2><p>State: {inc['state']}. You are {html.escape(info.person)}.</p>"
                 f'<form method="post"><button type="submit">{verb}</button></form>')


@router.post("/links/{token}", summary="Use a link: acknowledge or resolve, once",
             response_class=HTMLResponse)
def use_link(db: EngineDep, now: NowMsDep, token: str, request: Request) -> HTMLResponse:
    try:
        with db.begin() as conn:
            info = alerting_store.use_link(conn, token, now)
            # in the same transaction: the security audit log has every acknowledgement
            security_store.record(conn, now, f"link:{info.person}", f"incident.{info.action}",
                                  info.incident_id, client=request.client.host if request.client else "",
                                  via="phone link")
    except AlertingError as e:
        return _page(f"<p>{html.escape(str(e))}</p>", 410)
    done = "acknowledged" if info.action == "ack" else "resolved"
    return _page(f"<h2>Incident {done}</h2><p>Thank you, {html.escape(info.person)}. "
                 "The escalation has stopped.</p>")
