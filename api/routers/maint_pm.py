"""Preventive maintenance schedules and inspection rounds: routes with ordered checkpoints
(each with a printable QR code), rounds per shift, and technicians' check-ins.

Numeric readings taken on a round go into the time-series store like any sensor reading:
site = the route's site, agent ``rounds``, device = the checkpoint's code, metric = the
checklist item's key. ``vigil maintenance`` generates the PM work orders and the rounds and
flags missed ones; these routes define them and record what technicians do.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Any, Literal

import segno
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from api.auth import Principal, PrincipalDep
from api.deps import NowMsDep, StoreDep
from api.routers.maint_assets import checked_site
from api.routers.maint_common import ERRORS, ActorDep, LimitQ, SessionDep
from api.routers.maint_workorders import WorkOrderOut, out
from api.security.policy import check_site_filter, require_site
from ingest.store import StoreError
from maintenance import pm
from maintenance.errors import InvalidError, NotFoundError
from maintenance.models import Checkpoint, Equipment, PmSchedule, Round, Route, WorkOrder
from maintenance.workorders import Policy, audit
from wire import Reading, Telemetry, TelemetryTopic

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["preventive maintenance and inspections"], responses=ERRORS)

RoundsAgent = "rounds"
Key = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PmIn(_In):
    title: str = Field(min_length=1, max_length=300)
    equipment_id: int = Field(ge=1)
    kind: Literal["calendar", "meter"]
    priority: Literal["P1", "P2", "P3", "P4"] = "P3"
    next_due: dt.date | None = Field(None, description="calendar: the first due date.")
    every: int | None = Field(
        None, ge=1, le=1000, description="calendar: repeat every N units; omit for once."
    )
    unit: Literal["days", "weeks", "months"] | None = None
    lead_days: int = Field(
        7, ge=0, le=365, description="calendar: raise the work order this many days ahead."
    )
    device: str | None = Field(None, max_length=64, description="meter: the device whose telemetry counts.")
    meter_metric: str | None = Field(None, max_length=64, description="meter: e.g. running (bool → hours).")
    meter_every: float | None = Field(None, gt=0, description="meter: e.g. 2000 (running hours).")
    meter_lead: float = Field(0.0, ge=0, description="meter: raise this many units ahead.")
    meter_value: float = Field(0.0, ge=0, description="meter: the current reading (e.g. hours so far).")


class PmOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    title: str
    equipment_id: int
    kind: str
    priority: str
    active: bool
    next_due: dt.date | None
    every: int | None
    unit: str | None
    lead_days: int
    device: str | None
    meter_metric: str | None
    meter_every: float | None
    meter_lead: float
    meter_value: float
    meter_next_due: float | None


class MeterIn(_In):
    value: float = Field(ge=0, description="The meter's current reading, e.g. running hours.")


class ChecklistItem(_In):
    key: Key
    type: Literal["pass_fail", "number", "note"]
    label: str = Field("", max_length=200)
    min: float | None = None
    max: float | None = None
    unit: str | None = Field(None, max_length=32)


class CheckpointIn(_In):
    name: str = Field(min_length=1, max_length=200)
    equipment_id: int | None = Field(None, ge=1)
    checklist: list[ChecklistItem] = Field(default_factory=list, max_length=100)


class RouteIn(_In):
    site: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    shifts: list[str] = Field(default_factory=list, max_length=24, description='Start times "HH:MM" UTC.')
    window_minutes: int = Field(120, ge=5, le=24 * 60, description="How long a round may take.")
    checkpoints: list[CheckpointIn] = Field(default_factory=list, max_length=500, description="In order.")


class CheckpointOut(BaseModel):
    id: int
    position: int
    name: str
    code: str
    equipment_id: int | None
    checklist: list[dict[str, Any]]
    qr_svg: str = Field(description="Where to fetch the printable QR code.")


class RouteOut(BaseModel):
    id: int
    site: str
    name: str
    shifts: list[str]
    window_minutes: int
    checkpoints: list[CheckpointOut]


class RoundIn(_In):
    route_id: int = Field(ge=1)
    scheduled_ms: int = Field(ge=0)


class RoundOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    route_id: int
    scheduled_ms: int
    due_ms: int
    state: str
    technician: str | None
    missed_checkpoints: list[int]


class CheckInIn(_In):
    code: str = Field(min_length=1, max_length=64, description="The code read from the checkpoint's QR code.")
    results: dict[str, bool | float | str] = Field(default_factory=dict)


class CheckInOut(BaseModel):
    id: int
    round: RoundOut
    checkpoint_id: int
    ts_ms: int
    technician: str
    results: list[dict[str, Any]]
    work_order: WorkOrderOut | None
    readings_stored: int


# -- PM schedules --------------------------------------------------------------------------------


@router.get("/pm-schedules", response_model=list[PmOut], summary="Preventive maintenance schedules")
def list_pm(
    s: SessionDep, caller: PrincipalDep, equipment_id: Annotated[int | None, Query(ge=1)] = None,
    limit: LimitQ = 100,
) -> list[PmOut]:
    q = select(PmSchedule).order_by(PmSchedule.id).limit(limit)
    if caller.sites is not None:
        q = q.join(Equipment, Equipment.id == PmSchedule.equipment_id).where(
            Equipment.site_id.in_(sorted(caller.sites)))
    if equipment_id is not None:
        q = q.where(PmSchedule.equipment_id == equipment_id)
    return [PmOut.model_validate(x) for x in s.scalars(q)]


@router.post("/pm-schedules", status_code=201, response_model=PmOut, summary="Add a PM schedule")
def create_pm(body: PmIn, s: SessionDep, user: ActorDep, now: NowMsDep, caller: PrincipalDep) -> PmOut:
    if not _sees_equipment(s, caller, body.equipment_id):
        raise InvalidError("equipment_id", f"equipment {body.equipment_id} does not exist")
    if body.kind == "calendar":
        if body.next_due is None:
            raise InvalidError("next_due", "is required for a calendar schedule")
        if (body.every is None) != (body.unit is None):
            raise InvalidError("unit" if body.unit is None else "every", "every and unit go together")
    elif body.meter_every is None or body.meter_metric is None:
        raise InvalidError(
            "meter_every" if body.meter_every is None else "meter_metric", "is required for a meter schedule"
        )
    sch = PmSchedule(**body.model_dump(), active=True)
    if body.kind == "meter":
        assert body.meter_every is not None
        # The first due point is the next multiple of the interval above the current reading.
        sch.meter_next_due = (body.meter_value // body.meter_every + 1) * body.meter_every
    s.add(sch)
    s.flush()
    audit(s, actor=user, entity="pm_schedule", entity_id=sch.id, action="create", now_ms=now, title=sch.title)
    s.commit()
    return PmOut.model_validate(sch)


def _sees_equipment(s: SessionDep, caller: Principal, equipment_id: int) -> bool:
    """The equipment exists and is of a site the caller sees (others' look like missing ones)."""
    eq = s.get(Equipment, equipment_id)
    return eq is not None and caller.sees(eq.site_id)


def _pm(s: SessionDep, pm_id: int) -> PmSchedule:
    sch = s.get(PmSchedule, pm_id)
    if sch is None:
        raise NotFoundError(f"PM schedule {pm_id} does not exist")
    return sch


@router.post("/pm-schedules/{pm_id}/meter", response_model=PmOut, summary="Record a meter reading")
def set_meter(
    pm_id: Annotated[int, Path(ge=1)], body: MeterIn, s: SessionDep, user: ActorDep, now: NowMsDep
) -> PmOut:
    sch = _pm(s, pm_id)
    if sch.kind != "meter":
        raise InvalidError("pm_id", f"schedule {pm_id} is a calendar schedule, not a meter schedule")
    audit(
        s,
        actor=user,
        entity="pm_schedule",
        entity_id=sch.id,
        action="meter",
        now_ms=now,
        before=sch.meter_value,
        after=body.value,
    )
    sch.meter_value = body.value
    s.commit()
    return PmOut.model_validate(sch)


@router.post(
    "/pm-schedules/{pm_id}/meter/refresh",
    response_model=PmOut,
    summary="Add the running hours since the last refresh, from the device's telemetry",
)
def refresh_meter(
    pm_id: Annotated[int, Path(ge=1)], s: SessionDep, store: StoreDep, user: ActorDep, now: NowMsDep
) -> PmOut:
    sch = _pm(s, pm_id)
    eq = s.get(Equipment, sch.equipment_id)
    if sch.kind != "meter" or not sch.device or not sch.meter_metric or eq is None:
        raise InvalidError("pm_id", f"schedule {pm_id} is not a meter schedule with a device and metric")
    start = (sch.meter_last_ts_ms or now - 86_400_000) + 1
    samples: list[pm.RunSample] = []
    while start < now:
        raws = store.readings(eq.site_id, sch.device, sch.meter_metric, start, now, 10_000)
        samples += [pm.RunSample(r.ts_ms, bool(r.value)) for r in raws]
        if len(raws) < 10_000:
            break
        start = raws[-1].ts_ms + 1
    hours, sch.meter_last_ts_ms, sch.meter_last_running = pm.accumulate_runtime(
        samples, sch.meter_last_ts_ms, sch.meter_last_running
    )
    sch.meter_value += hours
    audit(s, actor=user, entity="pm_schedule", entity_id=sch.id, action="meter", now_ms=now, added=hours)
    s.commit()
    return PmOut.model_validate(sch)


# -- routes, checkpoints, rounds ----------------------------------------------------------------


def _route_out(s: SessionDep, r: Route) -> RouteOut:
    cps = s.scalars(select(Checkpoint).where(Checkpoint.route_id == r.id).order_by(Checkpoint.position))
    return RouteOut(
        id=r.id,
        site=r.site_id,
        name=r.name,
        shifts=r.shifts,
        window_minutes=r.window_minutes,
        checkpoints=[
            CheckpointOut(
                id=c.id,
                position=c.position,
                name=c.name,
                code=c.code,
                equipment_id=c.equipment_id,
                checklist=c.checklist,
                qr_svg=f"/api/v1/checkpoints/{c.id}/qr.svg",
            )
            for c in cps
        ],
    )


@router.get("/routes", response_model=list[RouteOut], summary="Inspection routes")
def list_routes(
    s: SessionDep, caller: PrincipalDep, site: Annotated[str | None, Query(max_length=64)] = None
) -> list[RouteOut]:
    check_site_filter(caller, site)
    q = select(Route).order_by(Route.id)
    if caller.sites is not None:
        q = q.where(Route.site_id.in_(sorted(caller.sites)))
    if site is not None:
        q = q.where(Route.site_id == site)
    return [_route_out(s, r) for r in s.scalars(q)]


@router.post("/routes", status_code=201, response_model=RouteOut, summary="Add a route with its checkpoints")
def create_route(
    body: RouteIn, s: SessionDep, user: ActorDep, now: NowMsDep, caller: PrincipalDep
) -> RouteOut:
    require_site(caller, body.site)
    checked_site(s, body.site)
    route = Route(
        site_id=body.site,
        name=body.name,
        shifts=pm.check_shifts(body.shifts),
        window_minutes=body.window_minutes,
    )
    s.add(route)
    s.flush()
    for i, cp in enumerate(body.checkpoints):
        if cp.equipment_id is not None and not _sees_equipment(s, caller, cp.equipment_id):
            raise InvalidError(
                f"checkpoints[{i}].equipment_id", f"equipment {cp.equipment_id} does not exist"
            )
        try:
            checklist = pm.check_checklist([c.model_dump(exclude_none=True) for c in cp.checklist])
        except InvalidError as e:
            raise InvalidError(f"checkpoints[{i}].{e.field}", e.problem) from None
        s.add(
            Checkpoint(
                route_id=route.id,
                position=i + 1,
                name=cp.name,
                code=pm.new_code(),
                equipment_id=cp.equipment_id,
                checklist=checklist,
            )
        )
    audit(
        s,
        actor=user,
        entity="route",
        entity_id=route.id,
        action="create",
        now_ms=now,
        name=body.name,
        checkpoints=len(body.checkpoints),
    )
    s.commit()
    return _route_out(s, route)


@router.get("/routes/{route_id}", response_model=RouteOut, summary="One route with its checkpoints")
def get_route(route_id: Annotated[int, Path(ge=1)], s: SessionDep) -> RouteOut:
    r = s.get(Route, route_id)
    if r is None:
        raise NotFoundError(f"route {route_id} does not exist")
    return _route_out(s, r)


@router.get(
    "/checkpoints/{cp_id}/qr.svg",
    summary="The checkpoint's QR code, to print and post on site",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}},
)
def checkpoint_qr(cp_id: Annotated[int, Path(ge=1)], s: SessionDep) -> Response:
    cp = s.get(Checkpoint, cp_id)
    if cp is None:
        raise NotFoundError(f"checkpoint {cp_id} does not exist")
    svg = segno.make(cp.code, error="m").svg_inline(scale=6, title=cp.name)
    return Response(svg, media_type="image/svg+xml")


@router.get(
    "/rounds", response_model=list[RoundOut], summary="Rounds, newest first; state=missed lists the flagged"
)
def list_rounds(
    s: SessionDep,
    caller: PrincipalDep,
    limit: LimitQ = 100,
    route_id: Annotated[int | None, Query(ge=1)] = None,
    state: Literal["scheduled", "done", "partial", "missed"] | None = None,
) -> list[RoundOut]:
    q = select(Round).order_by(Round.scheduled_ms.desc(), Round.id.desc()).limit(limit)
    if caller.sites is not None:
        q = q.join(Route, Route.id == Round.route_id).where(Route.site_id.in_(sorted(caller.sites)))
    if route_id is not None:
        q = q.where(Round.route_id == route_id)
    if state is not None:
        q = q.where(Round.state == state)
    return [RoundOut.model_validate(r) for r in s.scalars(q)]


@router.post("/rounds", status_code=201, response_model=RoundOut, summary="Schedule a round by hand")
def create_round(
    body: RoundIn, s: SessionDep, user: ActorDep, now: NowMsDep, caller: PrincipalDep
) -> RoundOut:
    route = s.get(Route, body.route_id)
    if route is None or not caller.sees(route.site_id):
        raise InvalidError("route_id", f"route {body.route_id} does not exist")
    rnd = Round(
        route_id=route.id,
        scheduled_ms=body.scheduled_ms,
        due_ms=body.scheduled_ms + route.window_minutes * 60_000,
        state="scheduled",
        missed_checkpoints=[],
    )
    s.add(rnd)
    s.flush()
    audit(s, actor=user, entity="round", entity_id=rnd.id, action="create", now_ms=now)
    s.commit()
    return RoundOut.model_validate(rnd)


@router.post(
    "/rounds/{round_id}/check-ins",
    status_code=201,
    response_model=CheckInOut,
    summary="A technician at a checkpoint: the scanned code and the checklist results",
)
def check_in(
    round_id: Annotated[int, Path(ge=1)],
    body: CheckInIn,
    s: SessionDep,
    store: StoreDep,
    user: ActorDep,
    now: NowMsDep,
) -> CheckInOut:
    rnd = pm.get_round(s, round_id)
    ci, readings = pm.check_in(
        s, rnd, code=body.code, technician=user, results=body.results, now_ms=now, policy=Policy()
    )
    s.commit()
    stored = 0
    if readings:
        # After the commit: a store outage must not lose the check-in, so the reply says how
        # many readings reached the store (0) instead of failing the request.
        batch = [
            (
                TelemetryTopic(r.site, RoundsAgent, r.checkpoint_code),
                Telemetry(
                    v=1,
                    seq=ci.id,
                    readings=(Reading(ts_ms=r.ts_ms, metric=r.metric, value=r.value, unit=r.unit),),
                ),
            )
            for r in readings
        ]
        try:
            store.write(batch)
            stored = len(batch)
        except StoreError as e:
            log.warning("rounds: check-in %d saved but its readings were not stored: %s", ci.id, e)
    wo = s.get(WorkOrder, ci.work_order_id) if ci.work_order_id else None
    return CheckInOut(
        id=ci.id,
        round=RoundOut.model_validate(rnd),
        checkpoint_id=ci.checkpoint_id,
        ts_ms=ci.ts_ms,
        technician=ci.technician,
        results=ci.results,
        work_order=out(wo) if wo else None,
        readings_stored=stored,
    )

