"""Work orders on a database session: raising them from anomaly events, the lifecycle,
assignment, comments, labour, parts, and the periodic sweep (SLA, closed loop).

Decisions come from ``maintenance.core``; this module applies them to rows. Callers own
the transaction: nothing here commits, so an anomaly event, its work order change, the
audit rows and any outbox event are committed together (or not at all).

Invariants:
- every change to a work order writes an ``Audit`` row (actor, action, from → to state);
- every state change (``create`` and ``transition``, the only two places a state is set)
  bumps ``state_seq`` and writes a ``WorkOrderUpdate`` into the outbox in the caller's
  transaction, so it is published (at least once) if and only if the change is committed;
  an order without a site has no topic and publishes none;
- an anomaly event already recorded (same id, state, ts) changes nothing;
- actors of automatic changes are named ``system:<what>`` (``system:anomaly``,
  ``system:verify``, ``system:pm``, ``system:inspection``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from maintenance import core
from maintenance.errors import InvalidError, NotFoundError
from maintenance.models import (
    AnomalyEvent,
    Audit,
    Comment,
    Device,
    Equipment,
    Labour,
    Outbox,
    Part,
    WorkOrder,
)
from wire.anomaly import Anomaly
from wire.payloads import METRIC_PATTERN
from wire.topics import ID_PATTERN
from wire.workorder import (
    SlaBreach,
    WorkOrderChange,
    WorkOrderUpdate,
    encode_sla_breach,
    encode_workorder_update,
    sla_topic,
    workorder_topic,
)

SYSTEM_ANOMALY = "system:anomaly"
SYSTEM_VERIFY = "system:verify"
_IDENT = re.compile(ID_PATTERN)
_FAULT = re.compile(METRIC_PATTERN.removesuffix("$") + r"\Z")
_ANOMALY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}\Z")


@dataclass(frozen=True, slots=True)
class Policy:
    verify_hold_ms: int = 3_600_000
    reopen_window_ms: int = 7 * core.DAY_MS
    sla: dict[core.Priority, tuple[int, int]] = field(default_factory=lambda: dict(core.DEFAULT_SLA_MS))


def audit(session: Session, *, actor: str, entity: str, entity_id: object, action: str, now_ms: int,
          from_state: str | None = None, to_state: str | None = None, **detail: Any) -> None:
    session.add(Audit(ts_ms=now_ms, actor=actor, entity=entity, entity_id=str(entity_id), action=action,
                      from_state=from_state, to_state=to_state, detail=detail))


def get_work_order(session: Session, wo_id: int) -> WorkOrder:
    wo = session.get(WorkOrder, wo_id)
    if wo is None:
        raise NotFoundError(f"work order {wo_id} does not exist")
    return wo


def _set_sla(wo: WorkOrder, now_ms: int, policy: Policy) -> None:
    wo.respond_due_ms, wo.resolve_due_ms = core.sla_due(wo.priority, now_ms, policy.sla)
    wo.respond_breached_ms = wo.resolve_breached_ms = None


def create(session: Session, *, actor: str, now_ms: int, title: str, priority: str, source: str,
           policy: Policy, site_id: str | None = None, equipment_id: int | None = None,
           description: str = "", device: str | None = None, crew: str | None = None,
           assignee: str | None = None, due_ms: int | None = None, **extra: Any) -> WorkOrder:
    """A new work order in state ``new`` (``assigned`` if an assignee is given)."""
    if priority not in core.PRIORITIES:
        raise InvalidError("priority", f"must be one of {', '.join(core.PRIORITIES)}, got {priority!r}")
    if equipment_id is not None:
        eq = session.get(Equipment, equipment_id)
        if eq is None:
            raise InvalidError("equipment_id", f"equipment {equipment_id} does not exist")
        site_id = site_id or eq.site_id
    wo = WorkOrder(title=title, description=description, source=source, priority=priority, state="new",
                   site_id=site_id, equipment_id=equipment_id, device=device, crew=crew,
                   requested_by=actor, created_ms=now_ms, updated_ms=now_ms, due_ms=due_ms, occurrences=0,
                   reopened=0, anomaly_active=False, state_seq=1, **extra)
    _set_sla(wo, now_ms, policy)
    session.add(wo)
    session.flush()
    audit(session, actor=actor, entity="work_order", entity_id=wo.id, action="create", now_ms=now_ms,
          to_state="new", title=title, priority=priority, source=source)
    _publish_update(session, wo, "created", None, actor, now_ms)
    if assignee:
        assign(session, wo, assignee=assignee, crew=crew, actor=actor, now_ms=now_ms)
    return wo


def transition(session: Session, wo: WorkOrder, target: str, *, actor: str, now_ms: int,
               note: str = "", policy: Policy | None = None, **detail: Any) -> WorkOrder:
    """Move ``wo`` to ``target`` if the state machine allows it (else TransitionError)."""
    current = wo.state
    core.check_transition(current, target)
    if target == "assigned" and not wo.assignee:
        raise InvalidError("assignee", "a work order must have an assignee to be in state 'assigned'; "
                           "assign it (POST .../assign) instead")
    reopening = current in ("resolved", "closed") and target in ("new", "assigned", "in_progress")
    if current == "closed":
        wo.open_key = wo.fault_key  # holds the (equipment, fault) key again
        wo.closed_ms = None
    if reopening:
        wo.resolved_ms = None
        wo.reopened += 1
        if target != "in_progress" and policy is not None:
            wo.responded_ms = None
            _set_sla(wo, now_ms, policy)
    if target == "new":
        wo.assignee = None
    if target == "in_progress" and wo.responded_ms is None:
        wo.responded_ms = now_ms
    if target == "resolved":
        wo.resolved_ms = now_ms
    if target in ("closed", "cancelled"):
        wo.closed_ms = now_ms
        wo.open_key = None
    wo.state = target
    wo.updated_ms = now_ms
    if note:
        detail["note"] = note
    audit(session, actor=actor, entity="work_order", entity_id=wo.id,
          action="reopen" if reopening else "transition", now_ms=now_ms, from_state=current,
          to_state=target, **detail)
    wo.state_seq = (wo.state_seq or 1) + 1
    anomaly_id = detail.get("anomaly_id")  # a reopen names the anomaly that caused it
    _publish_update(session, wo, "reopened" if reopening else "transition", current, actor, now_ms,
                    anomaly_id=anomaly_id if isinstance(anomaly_id, str) else None)
    return wo


def _publish_update(session: Session, wo: WorkOrder, change: WorkOrderChange, previous: str | None,
                    actor: str, now_ms: int, anomaly_id: str | None = None) -> None:
    """Queue the WorkOrderUpdate of a state change in the outbox (same transaction)."""
    if not wo.site_id or not _IDENT.fullmatch(wo.site_id):
        return  # no topic to publish on
    eq = session.get(Equipment, wo.equipment_id) if wo.equipment_id is not None else None
    devices: set[str] = set()
    if eq is not None:  # the ledger's binding, the same one anomaly events are mapped with
        # Looked up once per equipment and session (a consumer batch, an API request).
        cache: dict[tuple[int, str], tuple[str, ...]] = session.info.setdefault("maint_wo_devices", {})
        key = (eq.id, wo.site_id)
        if key not in cache:
            cache[key] = tuple(session.scalars(select(Device.device).where(
                Device.equipment_id == eq.id, Device.site_id == wo.site_id)))
        devices.update(cache[key])
    if wo.device:
        devices.add(wo.device)
    aid = anomaly_id or wo.anomaly_id
    # Free-text values from a manual order that the wire contract would refuse are left out
    # rather than making the whole event undecodable.
    event = WorkOrderUpdate(
        v=1, id=f"wo{wo.id}-{wo.state_seq}", work_order=wo.id, seq=wo.state_seq, change=change,
        state=wo.state, priority=wo.priority, site=wo.site_id,  # type: ignore[arg-type]
        ts_ms=now_ms, previous=previous, actor=actor[:1024],  # type: ignore[arg-type]
        equipment=eq.code if eq is not None and _IDENT.fullmatch(eq.code) else None,
        devices=tuple(sorted(d for d in devices if _IDENT.fullmatch(d)))[:256],
        fault=wo.fault if wo.fault and _FAULT.fullmatch(wo.fault) else None,
        anomaly_id=aid if aid and _ANOMALY_ID.fullmatch(aid) else None)
    session.add(Outbox(created_ms=now_ms, topic=workorder_topic(wo.site_id),
                       payload=encode_workorder_update(event)))


def assign(session: Session, wo: WorkOrder, *, assignee: str | None, crew: str | None, actor: str,
           now_ms: int) -> WorkOrder:
    """Set who does the work; a ``new`` order with an assignee becomes ``assigned``."""
    if wo.state in ("closed", "cancelled"):
        raise InvalidError("state", f"work order {wo.id} is {wo.state}; reopen it before assigning")
    before = {"assignee": wo.assignee, "crew": wo.crew}
    if crew is not None:
        wo.crew = crew or None
    if assignee is not None:
        wo.assignee = assignee or None
    wo.updated_ms = now_ms
    audit(session, actor=actor, entity="work_order", entity_id=wo.id, action="assign", now_ms=now_ms,
          before=before, after={"assignee": wo.assignee, "crew": wo.crew})
    if wo.state == "new" and wo.assignee:
        transition(session, wo, "assigned", actor=actor, now_ms=now_ms)
    elif wo.state == "assigned" and not wo.assignee:
        transition(session, wo, "new", actor=actor, now_ms=now_ms)
    return wo


def update(session: Session, wo: WorkOrder, *, actor: str, now_ms: int, **changes: Any) -> WorkOrder:
    """Change plain fields (title, description, priority, due_ms); the audit keeps before/after."""
    if "priority" in changes and changes["priority"] not in core.PRIORITIES:
        raise InvalidError("priority", f"must be one of {', '.join(core.PRIORITIES)}, "
                           f"got {changes['priority']!r}")
    before = {k: getattr(wo, k) for k in changes}
    for k, v in changes.items():
        setattr(wo, k, v)
    wo.updated_ms = now_ms
    audit(session, actor=actor, entity="work_order", entity_id=wo.id, action="update", now_ms=now_ms,
          before=before, after=changes)
    return wo


def add_comment(session: Session, wo: WorkOrder, *, author: str, text: str, now_ms: int) -> Comment:
    c = Comment(work_order_id=wo.id, ts_ms=now_ms, author=author, text=text)
    session.add(c)
    wo.updated_ms = now_ms
    session.flush()
    audit(session, actor=author, entity="work_order", entity_id=wo.id, action="comment", now_ms=now_ms,
          comment_id=c.id)
    return c


def add_labour(session: Session, wo: WorkOrder, *, actor: str, technician: str, minutes: int, note: str,
               now_ms: int) -> Labour:
    row = Labour(work_order_id=wo.id, ts_ms=now_ms, technician=technician, minutes=minutes, note=note)
    session.add(row)
    wo.updated_ms = now_ms
    session.flush()
    audit(session, actor=actor, entity="work_order", entity_id=wo.id, action="labour", now_ms=now_ms,
          technician=technician, minutes=minutes)
    return row


def add_part(session: Session, wo: WorkOrder, *, actor: str, part_number: str, description: str,
             quantity: float, unit_cost: float | None, now_ms: int) -> Part:
    row = Part(work_order_id=wo.id, ts_ms=now_ms, part_number=part_number, description=description,
               quantity=quantity, unit_cost=unit_cost)
    session.add(row)
    wo.updated_ms = now_ms
    session.flush()
    audit(session, actor=actor, entity="work_order", entity_id=wo.id, action="part", now_ms=now_ms,
          part_number=part_number, quantity=quantity)
    return row


# -- anomaly events -----------------------------------------------------------------------------


def fault_key(equipment_id: int | None, site: str, device: str, fault: str) -> str:
    """One key per (equipment, fault); a device not yet in the ledger stands for itself."""
    return f"eq:{equipment_id}:{fault}" if equipment_id is not None else f"dev:{site}/{device}:{fault}"


@dataclass
class BatchCache:
    """What a batch of anomaly events looks up, fetched once per batch rather than per event
    (the consumer is the only writer of anomaly events, so the cache stays true in its batch)."""

    equipment: dict[tuple[str, str], int | None] = field(default_factory=dict)
    seen: set[tuple[str, str, int]] = field(default_factory=set)
    open_orders: dict[str, WorkOrder | None] = field(default_factory=dict)

    @classmethod
    def prefetch(cls, session: Session, events: list[tuple[str, str, Anomaly]]) -> BatchCache:
        cache = cls()
        if not events:
            return cache
        pairs = {(site, device) for site, device, _ in events}
        cache.equipment = dict.fromkeys(pairs)
        rows = session.execute(select(Device.site_id, Device.device, Device.equipment_id)
                               .where(Device.device.in_({d for _, d in pairs})))
        for site, device, eq in rows:
            if (site, device) in pairs:
                cache.equipment[(site, device)] = eq
        ids = {a.id for _, _, a in events}
        cache.seen = {(i, st, ts) for i, st, ts in session.execute(
            select(AnomalyEvent.anomaly_id, AnomalyEvent.state, AnomalyEvent.ts_ms)
            .where(AnomalyEvent.anomaly_id.in_(ids)))}
        keys = {fault_key(cache.equipment[(site, device)], site, device, a.fault)
                for site, device, a in events}
        cache.open_orders = dict.fromkeys(keys)
        for wo in session.scalars(select(WorkOrder).where(WorkOrder.open_key.in_(keys))):
            cache.open_orders[wo.open_key or ""] = wo
        return cache


def apply_anomaly(session: Session, site: str, device: str, a: Anomaly, *, now_ms: int,
                  policy: Policy, cache: BatchCache | None = None) -> WorkOrder | None:
    """Turn one anomaly event into a work order change; None for a replay or a no-op.

    Without ``cache`` every lookup is a query; with one (``BatchCache.prefetch`` over the
    batch) the lookups are in memory."""
    if cache is None:
        cache = BatchCache.prefetch(session, [(site, device, a)])
    if (a.id, a.state, a.ts_ms) in cache.seen:
        return None
    cache.seen.add((a.id, a.state, a.ts_ms))
    equipment_id = cache.equipment[(site, device)]
    key = fault_key(equipment_id, site, device, a.fault)
    wo = cache.open_orders.get(key)
    last_closed: WorkOrder | None = None
    if wo is None and a.state != "cleared":
        last_closed = session.scalar(
            select(WorkOrder).where(WorkOrder.fault_key == key, WorkOrder.state == "closed")
            .order_by(WorkOrder.closed_ms.desc()).limit(1))
    decision = core.anomaly_decision(wo.state if wo else None, a.state,
                                     last_closed.closed_ms if last_closed else None, now_ms,
                                     policy.reopen_window_ms)
    priority = core.priority_for(a.severity)
    if decision == "create":
        title = f"{a.fault} on {device}: {a.summary}"[:300]
        wo = create(session, actor=SYSTEM_ANOMALY, now_ms=now_ms, title=title, priority=priority,
                    source="anomaly", policy=policy, site_id=site, equipment_id=equipment_id,
                    description=a.summary, device=device, fault=a.fault, fault_key=key, open_key=key,
                    anomaly_id=a.id)
    elif decision == "reopen":
        target_wo = wo if wo is not None else last_closed
        assert target_wo is not None
        wo = transition(session, target_wo, core.reopen_target(target_wo.assignee), actor=SYSTEM_ANOMALY,
                        now_ms=now_ms, policy=policy, reason="the fault returned", anomaly_id=a.id)
    if wo is not None:
        _attach(session, wo, a, priority, now_ms)
        if wo.open_key == key:
            cache.open_orders[key] = wo
    session.add(AnomalyEvent(anomaly_id=a.id, state=a.state, ts_ms=a.ts_ms, site_id=site, device=device,
                             fault=a.fault, severity=a.severity, summary=a.summary,
                             work_order_id=wo.id if wo is not None else None, received_ms=now_ms))
    return wo


def _attach(session: Session, wo: WorkOrder, a: Anomaly, priority: str, now_ms: int) -> None:
    """Record an occurrence on the order: the anomaly's latest state, and escalation."""
    if (a.state == "open" and a.id != wo.anomaly_id) or wo.occurrences == 0:
        wo.occurrences += 1
        if wo.occurrences > 1:
            audit(session, actor=SYSTEM_ANOMALY, entity="work_order", entity_id=wo.id, action="occurrence",
                  now_ms=now_ms, anomaly_id=a.id, occurrences=wo.occurrences, summary=a.summary)
    # Events may arrive out of order (redelivery); the newest one says whether the fault is on.
    if wo.anomaly_ts_ms is None or a.ts_ms >= wo.anomaly_ts_ms:
        was_active = wo.anomaly_active
        wo.anomaly_id = a.id
        wo.anomaly_ts_ms = a.ts_ms
        wo.anomaly_active = a.state != "cleared"
        if a.state == "cleared":
            wo.anomaly_cleared_ms = a.cleared_ms or a.ts_ms
            if was_active:
                audit(session, actor=SYSTEM_ANOMALY, entity="work_order", entity_id=wo.id,
                      action="anomaly_cleared", now_ms=now_ms, anomaly_id=a.id, cleared_ms=a.ts_ms)
    if core.higher_priority(priority, wo.priority) != wo.priority:
        audit(session, actor=SYSTEM_ANOMALY, entity="work_order", entity_id=wo.id, action="escalate",
              now_ms=now_ms, before={"priority": wo.priority}, after={"priority": priority})
        wo.priority = priority
    wo.updated_ms = now_ms


# -- the sweep: SLA timers and the closed loop ---------------------------------------------------


@dataclass
class SweepResult:
    breaches: list[SlaBreach] = field(default_factory=list)
    verified: list[int] = field(default_factory=list)
    pm_created: list[int] = field(default_factory=list)
    rounds_missed: list[int] = field(default_factory=list)


def sweep_sla(session: Session, now_ms: int, result: SweepResult) -> None:
    rows = session.scalars(select(WorkOrder).where(
        WorkOrder.state.notin_(("closed", "cancelled")),
        or_(
            (WorkOrder.respond_breached_ms.is_(None) & WorkOrder.responded_ms.is_(None)
             & (WorkOrder.respond_due_ms < now_ms)),
            (WorkOrder.resolve_breached_ms.is_(None) & WorkOrder.resolved_ms.is_(None)
             & (WorkOrder.resolve_due_ms < now_ms)),
        ),
    ).limit(10_000))
    for wo in rows:
        view = core.SlaView(wo.state, wo.respond_due_ms, wo.resolve_due_ms, wo.responded_ms, wo.resolved_ms,
                            wo.respond_breached_ms, wo.resolve_breached_ms)
        for timer in core.sla_breaches(view, now_ms):
            due = wo.respond_due_ms if timer == "respond" else wo.resolve_due_ms
            assert due is not None
            if timer == "respond":
                wo.respond_breached_ms = now_ms
            else:
                wo.resolve_breached_ms = now_ms
            eq = session.get(Equipment, wo.equipment_id) if wo.equipment_id is not None else None
            event = SlaBreach(v=1, id=f"wo{wo.id}-{timer}-{wo.reopened}", work_order=wo.id, timer=timer,
                              priority=wo.priority, state=wo.state, due_ms=due,  # type: ignore[arg-type]
                              breached_ms=now_ms, title=wo.title[:1024], equipment=eq.code if eq else None,
                              device=wo.device, fault=wo.fault, assignee=wo.assignee, crew=wo.crew)
            audit(session, actor="system:sla", entity="work_order", entity_id=wo.id, action="sla_breach",
                  now_ms=now_ms, timer=timer, due_ms=due)
            if wo.site_id:
                session.add(Outbox(created_ms=now_ms, topic=sla_topic(wo.site_id),
                                   payload=encode_sla_breach(event)))
            result.breaches.append(event)


def sweep_verify(session: Session, now_ms: int, policy: Policy, result: SweepResult) -> None:
    rows = session.scalars(select(WorkOrder).where(
        WorkOrder.state == "resolved", WorkOrder.source == "anomaly", WorkOrder.anomaly_active.is_(False)))
    for wo in rows:
        if core.verify_due(wo.state, wo.anomaly_active, wo.resolved_ms, wo.anomaly_cleared_ms,
                           policy.verify_hold_ms, now_ms):
            transition(session, wo, "closed", actor=SYSTEM_VERIFY, now_ms=now_ms, verified=True,
                       note=f"fault stayed cleared for {policy.verify_hold_ms // 1000} s after resolution")
            result.verified.append(wo.id)


def history(session: Session, wo_id: int) -> list[Audit]:
    q = select(Audit).where(Audit.entity == "work_order", Audit.entity_id == str(wo_id)).order_by(Audit.id)
    return list(session.scalars(q))
