"""Work orders: list with filters, raise by hand, the lifecycle, assignment, comments,
labour, parts, and the audit trail. Anomaly-raised orders come from ``vigil maintenance``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from api.auth import Permission, PrincipalDep
from api.deps import NowMsDep
from api.routers.maint_assets import checked_site
from api.routers.maint_common import ERRORS, ActorDep, CursorQ, LimitQ, SessionDep
from api.security.policy import check_site_filter, refuse_fields, require_site
from maintenance import core
from maintenance import workorders as wos
from maintenance.errors import InvalidError, NotFoundError
from maintenance.models import Audit, Comment, Equipment, Labour, Part, RejectedEvent, WorkOrder

router = APIRouter(prefix="/api/v1", tags=["work orders"], responses=ERRORS)

StateName = Literal["new", "assigned", "in_progress", "on_hold", "resolved", "closed", "cancelled"]
PriorityName = Literal["P1", "P2", "P3", "P4"]
WoId = Annotated[int, Path(ge=1, description="Work order id.")]
Text300 = Annotated[str, Field(min_length=1, max_length=300)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkOrderIn(_In):
    title: Text300
    description: str = Field("", max_length=10_000)
    priority: PriorityName = "P3"
    source: Literal["manual", "tenant"] = Field("manual", description="`tenant` for a tenant's request.")
    site: str | None = Field(None, max_length=64, description="Site id; taken from the equipment if omitted.")
    equipment_id: int | None = Field(None, ge=1)
    assignee: str | None = Field(None, max_length=100)
    crew: str | None = Field(None, max_length=100)
    due_ms: int | None = Field(None, ge=0)


class WorkOrderPatch(_In):
    title: Text300 | None = None
    description: str | None = Field(None, max_length=10_000)
    priority: PriorityName | None = None
    due_ms: int | None = Field(None, ge=0)


class TransitionIn(_In):
    to: StateName = Field(description="The state to go to; see `allowed` on the work order.")
    note: str = Field("", max_length=2000)


class AssignIn(_In):
    assignee: str | None = Field(None, max_length=100, description="Technician; empty string unassigns.")
    crew: str | None = Field(None, max_length=100)


class CommentIn(_In):
    text: str = Field(min_length=1, max_length=10_000)


class LabourIn(_In):
    minutes: int = Field(ge=1, le=24 * 60)
    technician: str | None = Field(None, max_length=100, description="Defaults to the acting user.")
    note: str = Field("", max_length=2000)


class PartIn(_In):
    part_number: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=300)
    quantity: float = Field(gt=0, le=1e6)
    unit_cost: float | None = Field(None, ge=0)


class WorkOrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    title: str
    description: str
    source: str
    state: str
    allowed: list[str] = Field(description="States this work order may go to next.")
    priority: str
    site_id: str | None
    equipment_id: int | None
    device: str | None
    fault: str | None
    occurrences: int
    anomaly_id: str | None
    anomaly_active: bool
    anomaly_cleared_ms: int | None
    crew: str | None
    assignee: str | None
    requested_by: str
    created_ms: int
    updated_ms: int
    responded_ms: int | None
    resolved_ms: int | None
    closed_ms: int | None
    respond_due_ms: int | None
    resolve_due_ms: int | None
    respond_breached_ms: int | None
    resolve_breached_ms: int | None
    reopened: int
    pm_schedule_id: int | None
    pm_due: str | None
    due_ms: int | None


class WorkOrderPage(BaseModel):
    work_orders: list[WorkOrderOut]
    next_cursor: int | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    ts_ms: int
    actor: str
    entity: str
    entity_id: str
    action: str
    from_state: str | None
    to_state: str | None
    detail: dict[str, Any]


class CommentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    ts_ms: int
    author: str
    text: str


class LabourOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    ts_ms: int
    technician: str
    minutes: int
    note: str


class PartOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    ts_ms: int
    part_number: str
    description: str
    quantity: float
    unit_cost: float | None


class WorkOrderDetail(WorkOrderOut):
    comments: list[CommentOut]
    labour: list[LabourOut]
    labour_minutes: int
    parts: list[PartOut]
    history: list[AuditOut]


def out(wo: WorkOrder) -> WorkOrderOut:
    data = {k: getattr(wo, k) for k in WorkOrderOut.model_fields if k != "allowed"}
    return WorkOrderOut(**data, allowed=list(core.TRANSITIONS.get(wo.state, ())))  # type: ignore[call-overload]


def detail(s: SessionDep, wo: WorkOrder) -> WorkOrderDetail:
    comments = s.scalars(select(Comment).where(Comment.work_order_id == wo.id).order_by(Comment.id))
    labour = list(s.scalars(select(Labour).where(Labour.work_order_id == wo.id).order_by(Labour.id)))
    parts = s.scalars(select(Part).where(Part.work_order_id == wo.id).order_by(Part.id))
    return WorkOrderDetail(
        **out(wo).model_dump(),
        comments=[CommentOut.model_validate(c) for c in comments],
        labour=[LabourOut.model_validate(x) for x in labour],
        labour_minutes=sum(x.minutes for x in labour),
        parts=[PartOut.model_validate(p) for p in parts],
        history=[AuditOut.model_validate(a) for a in wos.history(s, wo.id)],
    )


@router.get("/work-orders", summary="Work orders, newest first, with filters", response_model=WorkOrderPage)
def list_work_orders(
    s: SessionDep,
    caller: PrincipalDep,
    limit: LimitQ = 50,
    cursor: CursorQ = None,
    state: Annotated[list[StateName] | None, Query(description="One or more states.")] = None,
    open: Annotated[bool | None, Query(description="true: not closed or cancelled.")] = None,
    priority: Annotated[list[PriorityName] | None, Query()] = None,
    site: Annotated[str | None, Query(max_length=64)] = None,
    equipment_id: Annotated[int | None, Query(ge=1)] = None,
    assignee: Annotated[str | None, Query(max_length=100)] = None,
    crew: Annotated[str | None, Query(max_length=100)] = None,
    source: Annotated[str | None, Query(max_length=16)] = None,
    fault: Annotated[str | None, Query(max_length=64)] = None,
    breached: Annotated[bool | None, Query(description="true: an SLA timer was breached.")] = None,
) -> WorkOrderPage:
    check_site_filter(caller, site)
    q = select(WorkOrder)
    if caller.sites is not None:
        q = q.where(WorkOrder.site_id.in_(sorted(caller.sites)))
    if cursor is not None:
        q = q.where(WorkOrder.id < cursor)
    if state:
        q = q.where(WorkOrder.state.in_(state))
    if open is not None:
        q = q.where(
            WorkOrder.state.in_(core.OPEN_STATES) if open else WorkOrder.state.in_(("closed", "cancelled"))
        )
    if priority:
        q = q.where(WorkOrder.priority.in_(priority))
    for column, value in (
        (WorkOrder.site_id, site),
        (WorkOrder.equipment_id, equipment_id),
        (WorkOrder.assignee, assignee),
        (WorkOrder.crew, crew),
        (WorkOrder.source, source),
        (WorkOrder.fault, fault),
    ):
        if value is not None:
            q = q.where(column == value)
    if breached is not None:
        hit = WorkOrder.respond_breached_ms.is_not(None) | WorkOrder.resolve_breached_ms.is_not(None)
        q = q.where(hit if breached else ~hit)
    rows = list(s.scalars(q.order_by(WorkOrder.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return WorkOrderPage(work_orders=[out(w) for w in rows], next_cursor=rows[-1].id if more else None)


@router.post(
    "/work-orders",
    status_code=201,
    summary="Raise a work order by hand (engineer or tenant)",
    response_model=WorkOrderOut,
)
def create_work_order(
    body: WorkOrderIn, s: SessionDep, user: ActorDep, now: NowMsDep, caller: PrincipalDep
) -> WorkOrderOut:
    # Dispatching (who does the work) is a work-order update: a role that may only raise
    # orders (operator) may not set it on the way in.
    refuse_fields(caller, body, {"assignee": Permission.WORKORDER_UPDATE,
                                 "crew": Permission.WORKORDER_UPDATE})
    if body.site is None and body.equipment_id is None:
        raise InvalidError("site", "is required when no equipment_id is given")
    if body.site is not None:
        require_site(caller, body.site)
    if body.equipment_id is not None:
        eq = s.get(Equipment, body.equipment_id)
        if eq is not None and not caller.sees(eq.site_id):
            raise NotFoundError(f"equipment {body.equipment_id} does not exist")
    site = checked_site(s, body.site) if body.site else None
    wo = wos.create(
        s,
        actor=user,
        now_ms=now,
        title=body.title,
        priority=body.priority,
        source=body.source,
        policy=wos.Policy(),
        site_id=site,
        equipment_id=body.equipment_id,
        description=body.description,
        crew=body.crew,
        assignee=body.assignee,
        due_ms=body.due_ms,
    )
    s.commit()
    return out(wo)


@router.get(
    "/work-orders/{wo_id}",
    summary="One work order with comments, labour, parts and history",
    response_model=WorkOrderDetail,
)
def get_work_order(wo_id: WoId, s: SessionDep) -> WorkOrderDetail:
    return detail(s, wos.get_work_order(s, wo_id))


@router.patch(
    "/work-orders/{wo_id}",
    summary="Change title, description, priority or due date",
    response_model=WorkOrderOut,
)
def patch_work_order(
    wo_id: WoId, body: WorkOrderPatch, s: SessionDep, user: ActorDep, now: NowMsDep
) -> WorkOrderOut:
    wo = wos.get_work_order(s, wo_id)
    wos.update(s, wo, actor=user, now_ms=now, **body.model_dump(exclude_unset=True))
    s.commit()
    return out(wo)


@router.post(
    "/work-orders/{wo_id}/transition",
    summary="Move a work order through its lifecycle",
    response_model=WorkOrderOut,
)
def transition(wo_id: WoId, body: TransitionIn, s: SessionDep, user: ActorDep, now: NowMsDep) -> WorkOrderOut:
    wo = wos.get_work_order(s, wo_id)
    wos.transition(s, wo, body.to, actor=user, now_ms=now, note=body.note, policy=wos.Policy())
    s.commit()
    return out(wo)


@router.post(
    "/work-orders/{wo_id}/assign", summary="Assign to a technician and/or crew", response_model=WorkOrderOut
)
def assign(wo_id: WoId, body: AssignIn, s: SessionDep, user: ActorDep, now: NowMsDep) -> WorkOrderOut:
    wo = wos.get_work_order(s, wo_id)
    wos.assign(s, wo, assignee=body.assignee, crew=body.crew, actor=user, now_ms=now)
    s.commit()
    return out(wo)


@router.post("/work-orders/{wo_id}/comments", status_code=201, response_model=CommentOut)
def comment(wo_id: WoId, body: CommentIn, s: SessionDep, user: ActorDep, now: NowMsDep) -> CommentOut:
    c = wos.add_comment(s, wos.get_work_order(s, wo_id), author=user, text=body.text, now_ms=now)
    s.commit()
    return CommentOut.model_validate(c)


@router.post("/work-orders/{wo_id}/labour", status_code=201, response_model=LabourOut)
def labour(wo_id: WoId, body: LabourIn, s: SessionDep, user: ActorDep, now: NowMsDep) -> LabourOut:
    row = wos.add_labour(
        s,
        wos.get_work_order(s, wo_id),
        actor=user,
        technician=body.technician or user,
        minutes=body.minutes,
        note=body.note,
        now_ms=now,
    )
    s.commit()
    return LabourOut.model_validate(row)


@router.post("/work-orders/{wo_id}/parts", status_code=201, response_model=PartOut)
def part(wo_id: WoId, body: PartIn, s: SessionDep, user: ActorDep, now: NowMsDep) -> PartOut:
    row = wos.add_part(
        s,
        wos.get_work_order(s, wo_id),
        actor=user,
        part_number=body.part_number,
        description=body.description,
        quantity=body.quantity,
        unit_cost=body.unit_cost,
        now_ms=now,
    )
    s.commit()
    return PartOut.model_validate(row)


@router.get(
    "/work-orders/{wo_id}/history", summary="The audit trail of one work order", response_model=list[AuditOut]
)
def history(wo_id: WoId, s: SessionDep) -> list[AuditOut]:
    wos.get_work_order(s, wo_id)
    return [AuditOut.model_validate(a) for a in wos.history(s, wo_id)]


@router.get("/audit", summary="The audit trail, newest first", response_model=list[AuditOut])
def audit_trail(
    s: SessionDep,
    limit: LimitQ = 100,
    cursor: CursorQ = None,
    entity: Annotated[
        str | None, Query(max_length=32, description="work_order, equipment, round, ...")
    ] = None,
    entity_id: Annotated[str | None, Query(max_length=100)] = None,
    actor: Annotated[str | None, Query(max_length=100)] = None,
) -> list[AuditOut]:
    q = select(Audit)
    if cursor is not None:
        q = q.where(Audit.id < cursor)
    for column, value in ((Audit.entity, entity), (Audit.entity_id, entity_id), (Audit.actor, actor)):
        if value is not None:
            q = q.where(column == value)
    return [AuditOut.model_validate(a) for a in s.scalars(q.order_by(Audit.id.desc()).limit(limit))]


class RejectedOut(BaseModel):
    received_ms: int
    topic: str
    reason: str
    payload: str


@router.get(
    "/maintenance/rejected-events",
    summary="Bus messages maintenance could not take, newest first",
    response_model=list[RejectedOut],
)
def rejected(s: SessionDep, limit: LimitQ = 100) -> list[RejectedOut]:
    rows = s.scalars(select(RejectedEvent).order_by(RejectedEvent.id.desc()).limit(limit))
    return [
        RejectedOut(
            received_ms=r.received_ms,
            topic=r.topic,
            reason=r.reason,
            payload=r.payload[:4096].decode("utf-8", "backslashreplace"),
        )
        for r in rows
    ]
