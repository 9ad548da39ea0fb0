"""What the dashboard pages fetch that no single REST resource answers: the portfolio overview,
the alarm console and its actions, fleet health, on call, today's rounds, and an equipment
trend with its normal band and anomaly markers.

Every route needs a caller (``api.auth.principal``); lists leave out sites the caller may not
see, and single objects of such sites answer 404. Actions check the caller's permission and
record the caller's user name, never a name sent by the page.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.orm import Session

from alerting import store as alerting_store
from alerting import tables as alerting_tables
from analytics import db as analytics_db
from api.auth import Permission, Principal, requires
from api.dashboard import core
from api.dashboard.live import Hub, health_event
from api.dashboard.tables import alarm_handling, placements
from api.deps import EngineDep, NowMsDep, SettingsDep, StoreDep
from api.presence import device_presence
from api.routers.maint_workorders import out as wo_out
from api.timerange import QueryError, nice_step, parse_time
from ingest.store import Store
from maintenance import core as maint_core
from maintenance import workorders as wos
from maintenance.models import Building, Device, Equipment, Floor, Site, Space, WorkOrder

router = APIRouter(prefix="/api/v1/dashboard", tags=["dashboard"])

MAX_ALARMS: Final = 1000
TREND_BUCKETS: Final = 600  # about one per pixel of a wide chart; the store downsamples to this


# What each route needs, declared with ``requires`` so the route policy reads it off the route.
ReadDep = Annotated[Principal, Depends(requires(Permission.READ))]
AckDep = Annotated[Principal, Depends(requires(Permission.ALARM_ACK))]
WoCreateDep = Annotated[Principal, Depends(requires(Permission.WORKORDER_CREATE))]
AssetsDep = Annotated[Principal, Depends(requires(Permission.ASSETS_WRITE))]


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _ms() -> int:
    return time.time_ns() // 1_000_000


# -- overview -----------------------------------------------------------------------------------


def _device_buildings(conn: Connection) -> dict[tuple[str, str], str]:
    """(site, device) -> building code: from its placement on a floor plan, else from the space
    of the equipment it is bound to."""
    out: dict[tuple[str, str], str] = {}
    rows = conn.execute(
        select(Device.site_id, Device.device, Building.code)
        .join(Equipment, Equipment.id == Device.equipment_id)
        .join(Space, Space.id == Equipment.space_id)
        .join(Floor, Floor.id == Space.floor_id)
        .join(Building, Building.id == Floor.building_id)
    )
    for site, device, building in rows:
        out[(site, device)] = building
    for site, device, building in conn.execute(
        select(placements.c.site_id, placements.c.device, Building.code)
        .join(Floor, Floor.id == placements.c.floor_id)
        .join(Building, Building.id == Floor.building_id)
    ):
        out[(site, device)] = building
    return out


def build_overview(
    engine: Engine, store: Store, p: Principal, now_ms: int, offline_after_ms: int
) -> dict[str, Any]:
    """Every visible site with its health, alarms by severity, offline devices and agents, and
    open work orders by SLA state; buildings within each site the same way."""
    agents = store.agents()
    agent_by_id = {(a.site, a.agent): a for a in agents}
    devices = store.devices()
    alarms = analytics_db.list_anomalies(
        engine, analytics_db.Query(states=core.ACTIVE_ALARM_STATES, limit=100_000)
    )
    with engine.connect() as conn:
        ledger_sites = {sid: name for sid, name in conn.execute(select(Site.id, Site.name))}
        buildings: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for site, code, name in conn.execute(
            select(Building.site_id, Building.code, Building.name).order_by(Building.code)
        ):
            buildings[site].append((code, name))
        where = _device_buildings(conn)
        orders = conn.execute(
            select(
                WorkOrder.site_id,
                WorkOrder.device,
                WorkOrder.created_ms,
                WorkOrder.responded_ms,
                WorkOrder.resolved_ms,
                WorkOrder.respond_due_ms,
                WorkOrder.resolve_due_ms,
                WorkOrder.respond_breached_ms,
                WorkOrder.resolve_breached_ms,
            ).where(WorkOrder.state.in_(maint_core.OPEN_STATES))
        ).all()
    sites = set(ledger_sites) | {d.site for d in devices} | {a.site for a in agents}
    blank = {
        "alarms": Counter[str](),
        "devices": 0,
        "devices_offline": 0,
        "agents": 0,
        "agents_offline": 0,
        "work_orders": Counter[str](),
    }

    def fresh() -> dict[str, Any]:
        return {k: (Counter[str]() if isinstance(v, Counter) else 0) for k, v in blank.items()}

    per_site: dict[str, dict[str, Any]] = {s: fresh() for s in sites if p.sees(s)}
    per_building: dict[tuple[str, str], dict[str, Any]] = {
        (s, code): fresh() for s in per_site for code, _ in buildings.get(s, [])
    }

    def bump(site: str, device: str | None, key: str, sub: str | None = None) -> None:
        targets = [per_site.get(site)]
        if device is not None and (b := where.get((site, device))) is not None:
            targets.append(per_building.get((site, b)))
        for t in targets:
            if t is None:
                continue
            if sub is None:
                t[key] += 1
            else:
                t[key][sub] += 1

    for d in devices:
        bump(d.site, d.device, "devices")
        if device_presence(d, agent_by_id.get((d.site, d.agent)), now_ms, offline_after_ms).state != "online":
            bump(d.site, d.device, "devices_offline")
    for a in agents:
        if a.site in per_site:
            per_site[a.site]["agents"] += 1
            per_site[a.site]["agents_offline"] += a.state != "online"
    for al in alarms:
        bump(al.site, al.device, "alarms", al.anomaly.severity)
    for o in orders:
        if o.site_id is None:
            continue
        state, _ = core.sla_state(
            core.SlaView(
                o.created_ms,
                o.responded_ms,
                o.resolved_ms,
                o.respond_due_ms,
                o.resolve_due_ms,
                o.respond_breached_ms,
                o.resolve_breached_ms,
            ),
            now_ms,
        )
        bump(o.site_id, o.device, "work_orders", state)

    def shaped(c: dict[str, Any]) -> dict[str, Any]:
        alarms_by = {s: c["alarms"].get(s, 0) for s in core.SEVERITIES}
        return {
            "health": core.site_health(alarms_by, c["devices"], c["devices_offline"], c["agents_offline"]),
            "alarms": alarms_by,
            "alarms_total": sum(alarms_by.values()),
            "devices": c["devices"],
            "devices_offline": c["devices_offline"],
            "agents": c["agents"],
            "agents_offline": c["agents_offline"],
            "work_orders": {s: c["work_orders"].get(s, 0) for s in ("on_time", "at_risk", "breached")},
        }

    out = []
    for site in sorted(per_site):
        entry = {
            "site": site,
            "name": ledger_sites.get(site) or site,
            **shaped(per_site[site]),
            "buildings": [
                {"code": code, "name": name or code, **shaped(per_building[(site, code)])}
                for code, name in buildings.get(site, [])
            ],
        }
        out.append(entry)
    return {"now_ms": now_ms, "sites": out}


@router.get("/overview", summary="Every site and building: health, alarms, offline fleet, SLA of open orders")
def overview(
    p: ReadDep, engine: EngineDep, store: StoreDep, settings: SettingsDep, now: NowMsDep
) -> dict[str, Any]:
    return build_overview(engine, store, p, now, round(settings.offline_after_s * 1000))


# -- alarms -------------------------------------------------------------------------------------


def _equipment_of(conn: Connection, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    if not pairs:
        return {}
    rows = conn.execute(
        select(Device.site_id, Device.device, Device.equipment_id).where(
            Device.device.in_({d for _, d in pairs})
        )
    )
    return {(s, d): eq for s, d, eq in rows if (s, d) in pairs}


def list_alarms(engine: Engine, p: Principal, now_ms: int, site: str | None = None) -> list[dict[str, Any]]:
    found = analytics_db.list_anomalies(
        engine, analytics_db.Query(site=site, states=core.ACTIVE_ALARM_STATES, limit=MAX_ALARMS)
    )
    found = [a for a in found if p.sees(a.site)]
    ids = [a.id for a in found]
    with engine.connect() as conn:
        handling = (
            {
                r.anomaly_id: r
                for r in conn.execute(select(alarm_handling).where(alarm_handling.c.anomaly_id.in_(ids)))
            }
            if ids
            else {}
        )
        orders = {}
        if ids:
            for wo_id, state, anomaly_id in conn.execute(
                select(WorkOrder.id, WorkOrder.state, WorkOrder.anomaly_id)
                .where(WorkOrder.anomaly_id.in_(ids))
                .order_by(WorkOrder.id)
            ):
                orders[anomaly_id] = {"id": wo_id, "state": state}
        equipment = _equipment_of(conn, {(a.site, a.device) for a in found})
    out: list[dict[str, Any]] = []
    for a in found:
        h = handling.get(a.id)
        wo = orders.get(a.id)
        if wo is None and h is not None and h.work_order_id is not None:
            wo = {"id": h.work_order_id, "state": None}
        an = a.anomaly
        out.append(
            {
                "id": a.id,
                "site": a.site,
                "device": a.device,
                "state": a.state,
                "severity": an.severity,
                "severity_rank": core.SEVERITIES.index(an.severity),
                "fault": an.fault,
                "summary": an.summary,
                "kind": an.kind,
                "started_ms": an.started_ms,
                "updated_ms": an.ts_ms,
                "metrics": list(an.metrics),
                "equipment_id": equipment.get((a.site, a.device)),
                "acked_by": h.acked_by if h else None,
                "acked_ms": h.acked_ms if h else None,
                "assignee": h.assignee if h else None,
                "silenced": bool(h and h.silenced_until_ms and h.silenced_until_ms > now_ms),
                "silenced_until_ms": h.silenced_until_ms if h else None,
                "work_order": wo,
            }
        )
    out.sort(key=lambda x: (-int(x["severity_rank"]), -int(x["updated_ms"])))
    return out


@router.get("/alarms", summary="Active alarms, worst and newest first, with who handles them")
def alarms(
    p: ReadDep,
    engine: EngineDep,
    now: NowMsDep,
    site: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    return {"now_ms": now, "alarms": list_alarms(engine, p, now, site)}


def _visible_alarm(engine: Engine, p: Principal, anomaly_id: str) -> analytics_db.Stored:
    found = analytics_db.get_anomaly(engine, anomaly_id)
    if found is None or not p.sees(found[0].site):
        raise HTTPException(
            404, f"no alarm has id {anomaly_id[:128]!r}; list them at /api/v1/dashboard/alarms"
        )
    return found[0]


def _handle(conn: Connection, stored: analytics_db.Stored, user: str, now_ms: int, **values: Any) -> None:
    """Upsert the alarm's handling row with ``values``."""
    done = conn.execute(
        update(alarm_handling)
        .where(alarm_handling.c.anomaly_id == stored.id)
        .values(updated_ms=now_ms, updated_by=user, **values)
    )
    if done.rowcount == 0:
        conn.execute(
            insert(alarm_handling).values(
                anomaly_id=stored.id, site_id=stored.site, updated_ms=now_ms, updated_by=user, **values
            )
        )


def _ack_pages(conn: Connection, stored: analytics_db.Stored, user: str, now_ms: int) -> list[str]:
    """Acknowledge the alerting incidents paging about this device, so the escalation stops too."""
    inc, al = alerting_tables.incident, alerting_tables.alert
    rows = conn.execute(
        select(inc.c.id)
        .join(al, al.c.incident_id == inc.c.id)
        .where(al.c.site == stored.site, al.c.device == stored.device, inc.c.state.in_(("pending", "open")))
        .distinct()
    ).all()
    for (incident_id,) in rows:
        alerting_store.add_command(conn, incident_id, "ack", user, "dashboard", now_ms)
    return [r[0] for r in rows]


def _handling_event(stored: analytics_db.Stored, action: str, user: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "alarm_handling",
        "site": stored.site,
        "device": stored.device,
        "id": stored.id,
        "action": action,
        "by": user,
        "ts_ms": _ms(),
        **extra,
    }


AnomalyIdPath = Annotated[str, Path(max_length=128)]


@router.post("/alarms/{anomaly_id}/ack", summary="Acknowledge an alarm (and stop the pages about it)")
def ack_alarm(
    anomaly_id: AnomalyIdPath, p: AckDep, engine: EngineDep, now: NowMsDep, request: Request
) -> dict[str, Any]:
    stored = _visible_alarm(engine, p, anomaly_id)
    with engine.begin() as conn:
        _handle(conn, stored, p.user, now, acked_by=p.user, acked_ms=now)
        pages = _ack_pages(conn, stored, p.user, now)
    hub_of(request).publish(_handling_event(stored, "ack", p.user, acked_ms=now))
    return {"id": anomaly_id, "acked_by": p.user, "acked_ms": now, "pages_acked": pages}


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignee: str = Field(max_length=100, description="Who handles it; empty string unassigns.")


@router.post("/alarms/{anomaly_id}/assign", summary="Assign an alarm to someone")
def assign_alarm(
    anomaly_id: AnomalyIdPath,
    body: AssignIn,
    p: AckDep,
    engine: EngineDep,
    now: NowMsDep,
    request: Request,
) -> dict[str, Any]:
    stored = _visible_alarm(engine, p, anomaly_id)
    assignee = body.assignee.strip() or None
    with engine.begin() as conn:
        _handle(conn, stored, p.user, now, assignee=assignee)
    hub_of(request).publish(_handling_event(stored, "assign", p.user, assignee=assignee))
    return {"id": anomaly_id, "assignee": assignee}


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    minutes: int = Field(ge=0, le=7 * 24 * 60, description="How long the console keeps it quiet; 0 ends it.")


@router.post(
    "/alarms/{anomaly_id}/silence",
    summary="Silence an alarm in the console (no flash or sound) for a while; pages are not affected",
)
def silence_alarm(
    anomaly_id: AnomalyIdPath,
    body: SilenceIn,
    p: AckDep,
    engine: EngineDep,
    now: NowMsDep,
    request: Request,
) -> dict[str, Any]:
    stored = _visible_alarm(engine, p, anomaly_id)
    until = now + body.minutes * 60_000 if body.minutes else None
    with engine.begin() as conn:
        _handle(conn, stored, p.user, now, silenced_until_ms=until)
    hub_of(request).publish(_handling_event(stored, "silence", p.user, silenced_until_ms=until))
    return {"id": anomaly_id, "silenced_until_ms": until}


@router.post(
    "/alarms/{anomaly_id}/work-order",
    status_code=201,
    summary="Open a work order for an alarm, or return the one already open for the same fault",
)
def alarm_work_order(
    anomaly_id: AnomalyIdPath, p: WoCreateDep, engine: EngineDep, now: NowMsDep, request: Request
) -> dict[str, Any]:
    stored = _visible_alarm(engine, p, anomaly_id)
    a = stored.anomaly
    with Session(engine, expire_on_commit=False) as s:
        eq = s.scalar(
            select(Device.equipment_id).where(Device.site_id == stored.site, Device.device == stored.device)
        )
        key = wos.fault_key(eq, stored.site, stored.device, a.fault)
        # The same key maintenance uses, so an order it opened (or will open) is this one.
        wo = s.scalar(select(WorkOrder).where(WorkOrder.open_key == key))
        created = wo is None
        if wo is None:
            wo = wos.create(
                s,
                actor=p.user,
                now_ms=now,
                title=f"{a.fault} on {stored.device}: {a.summary}"[:300],
                priority=maint_core.priority_for(a.severity),
                source="anomaly",
                policy=wos.Policy(),
                site_id=stored.site,
                equipment_id=eq,
                description=a.summary,
                device=stored.device,
                fault=a.fault,
                fault_key=key,
                open_key=key,
                anomaly_id=a.id,
            )
            wo.anomaly_active = stored.state != "cleared"
            wo.anomaly_ts_ms = a.ts_ms
            wo.occurrences = 1
        s.execute(update(WorkOrder).where(WorkOrder.id == wo.id).values(anomaly_id=wo.anomaly_id or a.id))
        s.flush()
        _handle(s.connection(), stored, p.user, now, work_order_id=wo.id)
        s.commit()
        body = wo_out(wo).model_dump()
    hub_of(request).publish(
        _handling_event(stored, "work_order", p.user, work_order={"id": body["id"], "state": body["state"]})
    )
    return {"created": created, "work_order": body}


# -- work orders with SLA -------------------------------------------------------------------------


@router.get(
    "/work-orders", summary="Work orders for the board: open ones plus the last day's closed, with SLA"
)
def board(
    p: ReadDep,
    engine: EngineDep,
    now: NowMsDep,
    site: Annotated[str | None, Query(max_length=64)] = None,
    crew: Annotated[str | None, Query(max_length=100)] = None,
    priority: Annotated[str | None, Query(pattern=r"^P[1-4]$")] = None,
    equipment_id: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 500,
) -> dict[str, Any]:
    q = select(WorkOrder).where(
        WorkOrder.state.in_(maint_core.OPEN_STATES) | (WorkOrder.updated_ms >= now - 86_400_000)
    )
    if equipment_id is not None:  # the equipment page's history: every order, old ones too
        q = select(WorkOrder).where(WorkOrder.equipment_id == equipment_id)
    for column, value in ((WorkOrder.site_id, site), (WorkOrder.crew, crew), (WorkOrder.priority, priority)):
        if value is not None:
            q = q.where(column == value)
    with Session(engine) as s:
        rows = [
            w
            for w in s.scalars(q.order_by(WorkOrder.id.desc()).limit(limit))
            if w.site_id is None or p.sees(w.site_id)
        ]
        items = []
        for w in rows:
            state, due = core.sla_state(
                core.SlaView(
                    w.created_ms,
                    w.responded_ms,
                    w.resolved_ms,
                    w.respond_due_ms,
                    w.resolve_due_ms,
                    w.respond_breached_ms,
                    w.resolve_breached_ms,
                ),
                now,
            )
            items.append({**wo_out(w).model_dump(), "sla": state, "sla_due_ms": due})
        crews = sorted({c for (c,) in s.execute(select(WorkOrder.crew).distinct()) if c})
    return {"now_ms": now, "states": list(maint_core.STATES), "crews": crews, "work_orders": items}


# -- fleet ----------------------------------------------------------------------------------------


@router.get("/fleet", summary="Agents and devices: online or not, last seen, outbox backlog")
def fleet(
    p: ReadDep, store: StoreDep, settings: SettingsDep, now: NowMsDep, request: Request
) -> dict[str, Any]:
    # The newest of what the bus brought and what ingest stored (the API may have started after
    # the last report, or run without a broker).
    health = dict(hub_of(request).health)
    for rec in store.agent_health():
        have = health.get((rec.site, rec.agent))
        if have is None or int(have["ts_ms"]) < rec.health.ts_ms:
            health[(rec.site, rec.agent)] = health_event(rec.site, rec.agent, rec.health)
    after = round(settings.offline_after_s * 1000)
    agents = {(a.site, a.agent): a for a in store.agents() if p.sees(a.site)}
    out_agents = []
    for (site, agent), a in sorted(agents.items()):
        h = health.get((site, agent))
        out_agents.append(
            {
                "site": site,
                "agent": agent,
                "state": a.state,
                "since_ms": a.ts_ms,
                "reason": a.reason,
                "boot": a.boot,
                "health": {k: v for k, v in h.items() if k != "devices"} if h else None,
            }
        )
    out_devices = []
    for d in sorted(store.devices(), key=lambda d: (d.site, d.device)):
        if not p.sees(d.site):
            continue
        pres = device_presence(d, agents.get((d.site, d.agent)), now, after)
        out_devices.append(
            {
                "site": d.site,
                "device": d.device,
                "agent": d.agent,
                "state": pres.state,
                "reason": pres.reason,
                "last_seen_ms": d.last_seen_ms,
            }
        )
    return {"now_ms": now, "live": hub_of(request).connected, "agents": out_agents, "devices": out_devices}


# -- on call ---------------------------------------------------------------------------------------


@router.get("/oncall", summary="Open pages (pending, open, acknowledged) with their escalation state")
def oncall(p: ReadDep, engine: EngineDep, now: NowMsDep) -> dict[str, Any]:
    # Who is on call comes from /api/v1/alerting/oncall itself; this adds the pages in flight.
    with engine.connect() as conn:
        incidents = [
            i
            for state in ("pending", "open", "acked")
            for i in alerting_store.list_incidents(conn, state=state, site=None, limit=200)
            if p.sees(str(i["site"]))
        ]
    incidents.sort(key=lambda i: -int(i["created_ms"]))
    return {"now_ms": now, "incidents": incidents}


# -- inspection rounds ------------------------------------------------------------------------------


@router.get("/rounds", summary="Today's rounds: progress per route and missed checkpoints")
def rounds(p: ReadDep, engine: EngineDep, now: NowMsDep) -> dict[str, Any]:
    from maintenance.models import CheckIn, Checkpoint, Round, Route

    day_start = now - now % 86_400_000
    with Session(engine) as s:
        routes = {r.id: r for r in s.scalars(select(Route)) if p.sees(r.site_id)}
        todays = [
            r
            for r in s.scalars(
                select(Round)
                .where(Round.scheduled_ms < day_start + 86_400_000, Round.due_ms >= day_start)
                .order_by(Round.scheduled_ms)
            )
            if r.route_id in routes
        ]
        names = {cid: name for cid, name in s.execute(select(Checkpoint.id, Checkpoint.name))}
        counts = Counter(cp_route for (cp_route,) in s.execute(select(Checkpoint.route_id)))
        done: Counter[int] = Counter()
        if todays:
            for (round_id,) in s.execute(
                select(CheckIn.round_id).where(CheckIn.round_id.in_([r.id for r in todays]))
            ):
                done[round_id] += 1
        out: list[dict[str, Any]] = [
            {
                "id": r.id,
                "route_id": r.route_id,
                "route": routes[r.route_id].name,
                "site": routes[r.route_id].site_id,
                "scheduled_ms": r.scheduled_ms,
                "due_ms": r.due_ms,
                "state": r.state,
                "technician": r.technician,
                "checkpoints": counts.get(r.route_id, 0),
                "checked": done.get(r.id, 0),
                "missed_checkpoints": list(r.missed_checkpoints or []),
                "missed_names": [names.get(c, f"checkpoint {c}") for c in r.missed_checkpoints or []],
            }
            for r in todays
        ]
    # Progress per route: today's rounds by state.
    per_route: dict[int, dict[str, Any]] = {}
    for r in out:
        entry = per_route.setdefault(
            int(r["route_id"]),
            {"route_id": r["route_id"], "route": r["route"], "site": r["site"], "states": Counter[str]()},
        )
        entry["states"][str(r["state"])] += 1
    routes_out = [{**e, "states": dict(e["states"])} for e in per_route.values()]
    return {"now_ms": now, "routes": routes_out, "rounds": out}


# -- equipment trend ----------------------------------------------------------------------------------


@router.get(
    "/equipment/{eq_id}/trend",
    summary="A metric of an equipment item's device, downsampled by the store, with band and anomalies",
)
def trend(
    eq_id: Annotated[int, Path(ge=1)],
    p: ReadDep,
    engine: EngineDep,
    store: StoreDep,
    now: NowMsDep,
    metric: Annotated[str | None, Query(max_length=64)] = None,
    device: Annotated[str | None, Query(max_length=64)] = None,
    start: Annotated[str | None, Query()] = None,
    end: Annotated[str | None, Query()] = None,
    buckets: Annotated[int, Query(ge=10, le=5000)] = TREND_BUCKETS,
) -> dict[str, Any]:
    with Session(engine) as s:
        eq = s.get(Equipment, eq_id)
        if eq is None or not p.sees(eq.site_id):
            raise HTTPException(404, f"equipment {eq_id} does not exist; list it at /api/v1/equipment")
        devs = [
            d
            for (d,) in s.execute(
                select(Device.device).where(Device.equipment_id == eq_id).order_by(Device.device)
            )
        ]
        site = eq.site_id
    if not devs:
        raise HTTPException(404, f"equipment {eq_id} has no device bound, so it has no trend")
    dev = device or devs[0]
    if dev not in devs:
        raise HTTPException(
            404, f"device {dev!r} is not bound to equipment {eq_id}; its devices: {', '.join(devs)}"
        )
    metrics = store.metrics(site, dev)
    if not metrics:
        raise HTTPException(404, f"device {dev!r} at site {site!r} has no stored readings yet")
    m = metric or metrics[0]
    if m not in metrics:
        raise HTTPException(
            404, f"device {dev!r} has no metric {m!r}; its metrics: {', '.join(metrics[:50])}"
        )
    end_ms = parse_time("end", end) if end is not None else now
    start_ms = parse_time("start", start) if start is not None else end_ms - 86_400_000
    if start_ms >= end_ms:
        raise QueryError("start must be before end")
    step = nice_step(start_ms, end_ms, buckets)
    rows = store.series(site, dev, m, start_ms, end_ms, step)
    # The daily band's history is two weeks of hourly buckets up to the end shown (one more
    # downsampled query, about 336 rows), its anomalous hours left out; without enough of it,
    # a flat band from the range shown.
    history_ms = end_ms - 14 * core.DAY_MS
    found = analytics_db.list_anomalies(
        engine,
        analytics_db.Query(
            site=site, device=dev, since_ms=min(start_ms, history_ms), until_ms=end_ms, limit=1000
        ),
    )
    spans = [(a.anomaly.started_ms, a.anomaly.cleared_ms or end_ms) for a in found]
    shown = [a for a, (lo, hi) in zip(found, spans, strict=True) if lo < end_ms and hi >= start_ms]
    marks = [
        {
            "id": a.id,
            "severity": a.anomaly.severity,
            "fault": a.anomaly.fault,
            "summary": a.anomaly.summary,
            "started_ms": a.anomaly.started_ms,
            "cleared_ms": a.anomaly.cleared_ms,
            "state": a.state,
            "metrics": list(a.anomaly.metrics),
        }
        for a in shown
    ]
    hourly = store.series(site, dev, m, history_ms, end_ms, core.HOUR_MS)
    ts = [b.ts_ms for b in rows]
    daily = core.daily_band([(b.ts_ms, b.min, b.max) for b in hourly], spans, ts)
    flat = None if daily else core.normal_band([(b.ts_ms, b.mean) for b in rows], spans)
    band: dict[str, Any] | None = None
    if daily:
        band = {"kind": "daily", "low": daily[0], "high": daily[1]}
    elif flat:
        band = {"kind": "flat", "low": [flat[0]] * len(ts), "high": [flat[1]] * len(ts)}
    return {
        "equipment_id": eq_id,
        "site": site,
        "device": dev,
        "devices": devs,
        "metric": m,
        "metrics": metrics,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "step_ms": step,
        "t": [b.ts_ms for b in rows],
        "mean": [b.mean for b in rows],
        "min": [b.min for b in rows],
        "max": [b.max for b in rows],
        "band": band,
        "anomalies": marks,
    }
