"""Reading and writing the alerting tables; shared by the service and the API routes.

Every function takes an open connection (the caller owns the transaction), so the service
can commit an incident, its alerts and its links together, and ack the bus after.

Invariants:
- writes are upserts keyed like the engine's own ids, so writing an incident twice is harmless;
- a link is used by one conditional UPDATE (unused and unexpired), so it works once;
- the API never changes an incident's escalation itself: it records a command (ack,
  resolve) and marks the row, and the service applies the command to its engine.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from alerting import tables as t
from alerting.config import OnCallConfig, Override, SilenceRule
from alerting.dispatch import AttemptRecord
from alerting.engine import Alert, AlertEntry, Incident
from alerting.errors import AlertingError
from alerting.links import Link, token_hash
from alerting.workorders import SILENCING_STATES, OrderState

LIVE_STATES = ("pending", "open", "acked", "silenced")


def _upsert(conn: Connection, table: Any, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    if not rows:
        return
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt = dialect.insert(table)
    cols = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=cols), rows)


def incident_row(inc: Incident) -> dict[str, Any]:
    return {
        "id": inc.id, "key": inc.key, "site": inc.site, "building": inc.building, "severity": inc.severity,
        "state": inc.state, "title": inc.title[:1200], "route": inc.route, "policy": inc.policy,
        "life_safety": inc.life_safety, "created_ms": inc.created_ms, "page_at_ms": inc.page_at_ms,
        "paged_ms": inc.paged_ms, "step": inc.step, "round": inc.round, "next_ms": inc.next_ms,
        "acked_ms": inc.acked_ms, "acked_by": inc.acked_by, "resolved_ms": inc.resolved_ms,
        "resolved_by": inc.resolved_by, "silenced_by": (inc.silenced_by or None) and inc.silenced_by[:600],
        "scope": "/".join(inc.scope) if inc.scope else None, "folded": inc.folded,
        "alert_count": len(inc.alerts), "version": inc.version,
    }


def _alert_row(incident_id: str, e: AlertEntry) -> dict[str, Any]:
    a = e.alert
    return {"incident_id": incident_id, "key": a.key, "event_type": a.event_type, "severity": a.severity,
            "summary": a.summary[:1100], "site": a.site, "device": a.device, "agent": a.agent, "kind": a.kind,
            "ts_ms": a.ts_ms, "count": e.count, "cleared": e.cleared, "folded": e.folded}


def save_incidents(conn: Connection, incidents: Iterable[Incident], changed: dict[str, set[str]]) -> None:
    """Upsert incidents and the alerts of theirs listed in ``changed`` (incident id -> keys)."""
    incs = list(incidents)
    _upsert(conn, t.incident, [incident_row(i) for i in incs], ["id"])
    rows = [_alert_row(i.id, i.alerts[k]) for i in incs for k in changed.get(i.id, ()) if k in i.alerts]
    _upsert(conn, t.alert, rows, ["incident_id", "key"])
    moved = [(i.id, k) for i in incs for k in changed.get(i.id, ()) if k not in i.alerts]
    for iid, key in moved:  # folded away into a parent at page time
        conn.execute(delete(t.alert).where(t.alert.c.incident_id == iid, t.alert.c.key == key))


def load_live(conn: Connection, sites: Sequence[str] = ()) -> list[Incident]:
    """Live incidents (of ``sites``, if given) and their alerts, to restore the engine after
    a restart."""
    incs: dict[str, Incident] = {}
    q = select(t.incident).where(t.incident.c.state.in_(LIVE_STATES))
    if sites:
        q = q.where(t.incident.c.site.in_(list(sites)))
    for r in conn.execute(q).mappings():
        incs[r["id"]] = Incident(
            id=r["id"], key=r["key"], site=r["site"], building=r["building"], severity=r["severity"],
            created_ms=r["created_ms"], route=r["route"], policy=r["policy"], life_safety=r["life_safety"],
            state=r["state"], page_at_ms=r["page_at_ms"], paged_ms=r["paged_ms"], step=r["step"],
            round=r["round"], next_ms=r["next_ms"], acked_ms=r["acked_ms"], acked_by=r["acked_by"],
            silenced_by=r["silenced_by"], scope=tuple(r["scope"].split("/")) if r["scope"] else None,
            folded=r["folded"], version=r["version"])
    if incs:
        q = select(t.alert).where(t.alert.c.incident_id.in_(list(incs)))
        for r in conn.execute(q).mappings():
            a = Alert(key=r["key"], event_id=f"restored:{r['key']}", site=r["site"],
                      building=incs[r["incident_id"]].building, event_type=r["event_type"],
                      severity=r["severity"], summary=r["summary"], ts_ms=r["ts_ms"], device=r["device"],
                      agent=r["agent"], kind=r["kind"])
            incs[r["incident_id"]].alerts[r["key"]] = AlertEntry(a, r["count"], r["cleared"], r["folded"])
    return [i for i in incs.values() if i.alerts]


def add_attempt(conn: Connection, r: AttemptRecord) -> None:
    conn.execute(insert(t.attempt).values(
        incident_id=r.incident_id, person=r.person, channel=r.channel, target=r.target[:600], number=r.number,
        method_index=r.method_index, ok=r.ok, result=r.result, error=r.error[:600], ts_ms=r.ts_ms,
        duration_ms=r.duration_ms))


def add_link(conn: Connection, link: Link, now_ms: int) -> None:
    conn.execute(insert(t.link).values(token_sha256=link.token_sha256, incident_id=link.incident_id,
                                       action=link.action, person=link.person, created_ms=now_ms,
                                       expires_ms=link.expires_ms))


@dataclass(frozen=True, slots=True)
class LinkInfo:
    incident_id: str
    action: str
    person: str
    expires_ms: int
    used_ms: int | None


def find_link(conn: Connection, token: str) -> LinkInfo | None:
    r = conn.execute(select(t.link).where(t.link.c.token_sha256 == token_hash(token))).mappings().first()
    if r is None:
        return None
    return LinkInfo(r["incident_id"], r["action"], r["person"], r["expires_ms"], r["used_ms"])


def use_link(conn: Connection, token: str, now_ms: int) -> LinkInfo:
    """Use a link once: record the command and return what it was for; AlertingError says
    why not (unknown, expired, already used)."""
    info = find_link(conn, token)
    if info is None:
        raise AlertingError("this link is not valid: it was never issued or was mistyped")
    if info.used_ms is not None:
        raise AlertingError("this link was already used; open the incident in Vigil to see its state")
    if now_ms >= info.expires_ms:
        raise AlertingError("this link has expired; acknowledge from the Vigil API or a newer message")
    done = conn.execute(update(t.link).where(t.link.c.token_sha256 == token_hash(token),
                                             t.link.c.used_ms.is_(None), t.link.c.expires_ms > now_ms)
                        .values(used_ms=now_ms))
    if done.rowcount != 1:
        raise AlertingError("this link was already used; open the incident in Vigil to see its state")
    add_command(conn, info.incident_id, info.action, info.person, "link", now_ms)
    return info


def add_command(conn: Connection, incident_id: str, action: str, by: str, source: str, now_ms: int) -> str:
    """Record an ack or resolve and mark the incident row at once; returns its new state."""
    row = conn.execute(select(t.incident.c.state).where(t.incident.c.id == incident_id)).first()
    if row is None:
        raise AlertingError(f"no incident {incident_id!r}")
    current = str(row[0])
    conn.execute(insert(t.command).values(incident_id=incident_id, action=action, by=by[:128], source=source,
                                          ts_ms=now_ms))
    if action == "ack" and current in ("pending", "open", "silenced"):
        conn.execute(update(t.incident).where(t.incident.c.id == incident_id)
                     .values(state="acked", acked_ms=now_ms, acked_by=by[:128], next_ms=None))
        return "acked"
    if action == "resolve" and current != "resolved":
        conn.execute(update(t.incident).where(t.incident.c.id == incident_id)
                     .values(state="resolved", resolved_ms=now_ms, resolved_by=by[:128], next_ms=None))
        return "resolved"
    return current


@dataclass(frozen=True, slots=True)
class Command:
    id: int
    incident_id: str
    action: str
    by: str
    ts_ms: int


def pending_commands(conn: Connection) -> list[Command]:
    q = select(t.command).where(t.command.c.done_ms.is_(None)).order_by(t.command.c.id).limit(1000)
    rows = conn.execute(q).mappings()
    return [Command(r["id"], r["incident_id"], r["action"], r["by"], r["ts_ms"]) for r in rows]


def mark_done(conn: Connection, ids: Sequence[int], now_ms: int) -> None:
    if ids:
        conn.execute(update(t.command).where(t.command.c.id.in_(list(ids))).values(done_ms=now_ms))


# -- silences and overrides -----------------------------------------------------------
def add_silence(conn: Connection, rule: SilenceRule, created_by: str, now_ms: int) -> str:
    sid = uuid.uuid4().hex[:12]
    match = rule.model_dump(mode="json", exclude={"start_ms", "end_ms", "reason"})
    conn.execute(insert(t.silence).values(id=sid, match=match, start_ms=rule.start_ms, end_ms=rule.end_ms,
                                          reason=rule.reason, created_by=created_by[:128], created_ms=now_ms))
    return sid


def delete_silence(conn: Connection, sid: str) -> bool:
    return bool(conn.execute(delete(t.silence).where(t.silence.c.id == sid)).rowcount)


def silences(conn: Connection, now_ms: int | None = None) -> list[tuple[str, SilenceRule, dict[str, Any]]]:
    q = select(t.silence).order_by(t.silence.c.created_ms)
    if now_ms is not None:
        q = q.where(t.silence.c.end_ms > now_ms)
    out = []
    for r in conn.execute(q).mappings():
        match = cast(dict[str, Any], r["match"] if isinstance(r["match"], dict) else json.loads(r["match"]))
        rule = SilenceRule(**match, start_ms=r["start_ms"], end_ms=r["end_ms"], reason=r["reason"])
        out.append((r["id"], rule, {"created_by": r["created_by"], "created_ms": r["created_ms"]}))
    return out


def add_override(conn: Connection, rotation: str, o: Override, reason: str, now_ms: int) -> int:
    res = conn.execute(insert(t.override).values(rotation=rotation, person=o.person, start_ms=o.start_ms,
                                                 end_ms=o.end_ms, reason=reason[:512], created_ms=now_ms))
    pk = res.inserted_primary_key
    return int(pk[0]) if pk else 0


def overrides(conn: Connection, now_ms: int | None = None) -> dict[str, list[tuple[int, Override]]]:
    q = select(t.override).order_by(t.override.c.id)
    if now_ms is not None:
        q = q.where(t.override.c.end_ms > now_ms)
    out: dict[str, list[tuple[int, Override]]] = {}
    for r in conn.execute(q).mappings():
        out.setdefault(r["rotation"], []).append(
            (r["id"], Override(person=r["person"], start_ms=r["start_ms"], end_ms=r["end_ms"])))
    return out


def delete_override(conn: Connection, oid: int) -> bool:
    return bool(conn.execute(delete(t.override).where(t.override.c.id == oid)).rowcount)


# -- the running configuration --------------------------------------------------------
def publish_config(conn: Connection, config: OnCallConfig, now_ms: int) -> None:
    row = {"name": "config", "value": config.model_dump_json(), "updated_ms": now_ms}
    _upsert(conn, t.state, [row], ["name"])


def read_config(conn: Connection) -> OnCallConfig | None:
    r = conn.execute(select(t.state.c.value).where(t.state.c.name == "config")).first()
    return OnCallConfig.model_validate_json(r[0]) if r else None


# -- reading for the API --------------------------------------------------------------
def list_incidents(conn: Connection, *, state: str | None, site: str | None,
                   limit: int) -> list[dict[str, Any]]:
    q = select(t.incident).order_by(t.incident.c.created_ms.desc()).limit(limit)
    if state is not None:
        q = q.where(t.incident.c.state == state)
    if site is not None:
        q = q.where(t.incident.c.site == site)
    return [dict(r) for r in conn.execute(q).mappings()]


def get_incident(conn: Connection, incident_id: str) -> dict[str, Any] | None:
    r = conn.execute(select(t.incident).where(t.incident.c.id == incident_id)).mappings().first()
    if r is None:
        return None
    out = dict(r)
    out["alerts"] = [dict(a) for a in conn.execute(
        select(t.alert).where(t.alert.c.incident_id == incident_id).order_by(t.alert.c.ts_ms).limit(1000)
    ).mappings()]
    out["attempts"] = [dict(a) for a in conn.execute(
        select(t.attempt).where(t.attempt.c.incident_id == incident_id).order_by(t.attempt.c.id).limit(1000)
    ).mappings()]
    return out


# -- work orders (maintenance's WorkOrderUpdate events) ------------------------------------------


def _order(row: Any) -> OrderState:
    return OrderState(row.site, int(row.work_order), row.seq, row.state, tuple(row.devices or ()),
                      row.equipment, row.updated_ms)


def save_work_orders(conn: Connection, orders: Iterable[OrderState]) -> None:
    rows = [{"site": o.site, "work_order": o.work_order, "seq": o.seq, "state": o.state,
             "devices": list(o.devices), "equipment": o.equipment, "updated_ms": o.updated_ms}
            for o in orders]
    _upsert(conn, t.work_order, rows, ["site", "work_order"])


def load_work_orders(conn: Connection, sites: Sequence[str] = (), *,
                     states: Sequence[str] = tuple(SILENCING_STATES)) -> list[OrderState]:
    """The stored work orders in ``states`` (of ``sites``, if given): those that silence."""
    q = select(t.work_order).where(t.work_order.c.state.in_(list(states)))
    if sites:
        q = q.where(t.work_order.c.site.in_(list(sites)))
    return [_order(r) for r in conn.execute(q)]


def get_work_order(conn: Connection, site: str, work_order: int) -> OrderState | None:
    row = conn.execute(select(t.work_order).where(t.work_order.c.site == site,
                                                  t.work_order.c.work_order == work_order)).first()
    return _order(row) if row is not None else None
