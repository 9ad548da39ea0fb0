"""Anomalies found by analytics, newest change first, with filters; one anomaly with its history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from analytics import db
from api.auth import PrincipalDep
from api.deps import EngineDep
from api.schemas import BAD_PARAM
from api.security.policy import check_site_filter
from api.timerange import QueryError, iso, parse_time
from wire import check_id
from wire.anomaly import Anomaly

router = APIRouter(prefix="/api/v1", tags=["anomalies"])

MAX_LIMIT = 1000


class AnomalyOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    site: str
    device: str
    kind: str | None
    agent: str | None
    state: str
    severity: str
    fault: str
    summary: str
    started_ms: int
    started: str
    updated_ms: int
    updated: str
    cleared_ms: int | None
    metrics: list[str]
    detectors: list[str]
    expected: dict[str, float]
    observed: dict[str, float]


class AnomalyEventOut(BaseModel):
    state: str
    ts_ms: int
    ts: str
    severity: str
    summary: str


class AnomalyList(BaseModel):
    anomalies: list[AnomalyOut]
    next_offset: int | None


class AnomalyDetail(AnomalyOut):
    history: list[AnomalyEventOut]


def _out(s: db.Stored) -> AnomalyOut:
    a: Anomaly = s.anomaly
    return AnomalyOut(
        id=s.id, site=s.site, device=s.device, kind=a.kind, agent=a.agent, state=s.state,
        severity=a.severity, fault=a.fault, summary=a.summary, started_ms=a.started_ms,
        started=iso(a.started_ms), updated_ms=a.ts_ms, updated=iso(a.ts_ms), cleared_ms=a.cleared_ms,
        metrics=list(a.metrics), detectors=list(a.detectors), expected=dict(a.expected),
        observed=dict(a.observed),
    )


def _choices(name: str, text: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if text is None:
        return ()
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    wrong = [v for v in values if v not in allowed]
    if wrong or not values:
        raise QueryError(f"{name}={text[:80]!r}: use one or more of {', '.join(allowed)}, comma-separated")
    return values


@router.get(
    "/anomalies",
    summary="Anomalies, newest change first, filtered by site, device, state, severity and time",
    response_model=AnomalyList,
    responses=BAD_PARAM,
)
async def list_anomalies(
    engine: EngineDep,
    caller: PrincipalDep,
    site: Annotated[str | None, Query(description="Site id.")] = None,
    device: Annotated[str | None, Query(description="Device id.")] = None,
    state: Annotated[str | None, Query(description="open, updated, cleared (comma-separated).")] = None,
    severity: Annotated[str | None, Query(
        description="info, warning, minor, major, critical (comma-separated).")] = None,
    since: Annotated[str | None, Query(description="Anomalies still open at or after this time.")] = None,
    until: Annotated[str | None, Query(description="Anomalies that started before this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")] = 100,
    offset: Annotated[int, Query(ge=0, description="From `next_offset` of the previous page.")] = 0,
) -> AnomalyList:
    if site is not None:
        check_id("site", site)
        check_site_filter(caller, site)
    if device is not None:
        check_id("device", device)
    q = db.Query(
        site=site, device=device, states=_choices("state", state, db.STATES),
        severities=_choices("severity", severity, db.SEVERITIES),
        since_ms=parse_time("since", since) if since is not None else None,
        until_ms=parse_time("until", until) if until is not None else None,
        limit=limit + 1, offset=offset,
    )
    if q.since_ms is not None and q.until_ms is not None and q.since_ms >= q.until_ms:
        raise QueryError(f"since ({iso(q.since_ms)}) must be before until ({iso(q.until_ms)})")
    rows = await run_in_threadpool(db.list_anomalies, engine, q)
    more = len(rows) > limit
    # Site scope: others' anomalies are left out; paging stays in the unfiltered order, so a
    # page of a site-limited caller may be shorter than `limit`.
    return AnomalyList(anomalies=[_out(r) for r in rows[:limit] if caller.sees(r.site)],
                       next_offset=offset + limit if more else None)


@router.get(
    "/anomalies/{anomaly_id}",
    summary="One anomaly with its lifecycle events, oldest first",
    response_model=AnomalyDetail,
    responses={**BAD_PARAM, 404: {"description": "No anomaly has this id."}},
)
async def get_anomaly(
    engine: EngineDep,
    anomaly_id: Annotated[str, Path(max_length=128, description="The anomaly's id, e.g. `an-1f2e…`.")],
) -> AnomalyDetail:
    found = await run_in_threadpool(db.get_anomaly, engine, anomaly_id)
    if found is None:
        raise HTTPException(404, f"no anomaly has id {anomaly_id[:128]!r}; list them at /api/v1/anomalies")
    stored, history = found
    return AnomalyDetail(
        **_out(stored).model_dump(),
        history=[AnomalyEventOut(state=h.state, ts_ms=h.ts_ms, ts=iso(h.ts_ms), severity=h.severity,
                                 summary=h.summary) for h in history],
    )
