"""Work order updates (``WorkOrderUpdate`` on ``_maintenance/workorder``), on SQLite and on
PostgreSQL: every path that changes a work order's state (the API, anomaly events, the
closed loop, PM) writes exactly one event into the outbox in the same transaction, with
the ledger's devices of the equipment; paths that change no state write none."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from maintenance import core
from maintenance.errors import TransitionError
from maintenance.models import Outbox, PmSchedule, WorkOrder
from maintenance.service import Message, apply_messages, sweep
from maintenance.workorders import Policy, assign, create, transition
from tests import test_maintenance_support as support
from tests.test_maintenance_support import T0, anomaly, ledger, new_site, payload
from wire import AlarmTopic, WireError
from wire.anomaly import Anomaly
from wire.workorder import (
    WorkOrderUpdate,
    decode_workorder_update,
    encode_workorder_update,
    workorder_filter,
    workorder_topic,
)

database_url = support.database_url
engine = support.engine
ts_store = support.ts_store
clock = support.clock
client = support.client
POLICY = Policy(verify_hold_ms=3_600_000, reopen_window_ms=7 * core.DAY_MS)
Row = tuple[int, int, str, str | None, str]  # work order, seq, change, previous, state


def _updates(engine: Engine, site: str) -> list[WorkOrderUpdate]:
    with Session(engine) as s:
        rows = s.scalars(select(Outbox).where(Outbox.topic == workorder_topic(site)).order_by(Outbox.id))
        return [decode_workorder_update(r.payload) for r in rows]


def _rows(engine: Engine, site: str) -> list[Row]:
    return [(u.work_order, u.seq, u.change, u.previous, u.state) for u in _updates(engine, site)]


def _apply(engine: Engine, site: str, device: str, *events: Anomaly, now: int = T0) -> None:
    with Session(engine) as s, s.begin():
        msgs = [Message(1, 1, AlarmTopic(site, device).format(), payload(a)) for a in events]
        apply_messages(s, msgs, now_ms=now, policy=POLICY)


def _order_id(engine: Engine, site: str) -> int:
    with Session(engine) as s:
        return s.scalars(select(WorkOrder.id).where(WorkOrder.site_id == site)).one()


# -- the wire contract ---------------------------------------------------------------------------


def test_the_event_round_trips_and_strict_decoding_names_what_is_wrong() -> None:
    u = WorkOrderUpdate(v=1, id="wo7-3", work_order=7, seq=3, change="transition", state="in_progress",
                        priority="P2", site="s1", ts_ms=T0, previous="assigned", actor="tom",
                        equipment="P-101", devices=("pump-01", "pump-01-vfd"), fault="vibration_high",
                        anomaly_id="an:1")
    assert decode_workorder_update(encode_workorder_update(u)) == u
    assert workorder_topic("s1") == "vigil/v1/s1/_maintenance/workorder"
    assert workorder_filter() == "vigil/v1/+/_maintenance/workorder"
    raw = msgspec.json.decode(encode_workorder_update(u))
    bad: list[tuple[dict[str, object], str]] = [
        ({**raw, "id": "wo7-4"}, "does not match work order 7 and seq 3"),
        ({**raw, "state": "done"}, "state"),
        ({**raw, "extra": 1}, "extra"),
        ({**raw, "seq": 0}, "seq"),
        ({**raw, "devices": ["a/b"]}, "devices"),
        ({k: v for k, v in raw.items() if k != "site"}, "site"),
    ]
    for payload_, reason in bad:
        with pytest.raises(WireError, match="invalid work order update") as e:
            decode_workorder_update(msgspec.json.encode(payload_))
        assert reason in str(e.value)
    with pytest.raises(WireError, match="not valid JSON"):
        decode_workorder_update(b"{")
    with pytest.raises(WireError, match="over the"):
        decode_workorder_update(b" " * (1 << 21))


# -- every path that changes a state -------------------------------------------------------------


def test_api_create_assign_and_every_transition_each_write_one_event(
        client: TestClient, engine: Engine, clock: support.Clock) -> None:
    site = new_site()
    eq_id = ledger(engine, site, "pump-01", "pump-01-vfd")
    r = client.post("/api/v1/work-orders",
                    json={"title": "Pump noisy", "equipment_id": eq_id, "priority": "P2"})
    assert r.status_code == 201, r.text
    wo = r.json()["id"]
    assert _rows(engine, site) == [(wo, 1, "created", None, "new")]
    client.post(f"/api/v1/work-orders/{wo}/assign", json={"assignee": "tom"}).raise_for_status()
    clock.advance(60)
    for to in ("in_progress", "on_hold", "in_progress", "resolved"):
        client.post(f"/api/v1/work-orders/{wo}/transition", json={"to": to}).raise_for_status()
    # A refused transition changes nothing and publishes nothing.
    assert client.post(f"/api/v1/work-orders/{wo}/transition", json={"to": "on_hold"}).status_code == 409
    # Comments, labour and field changes are not state changes.
    client.post(f"/api/v1/work-orders/{wo}/comments", json={"text": "bearing ordered"}).raise_for_status()
    client.patch(f"/api/v1/work-orders/{wo}", json={"priority": "P1"}).raise_for_status()
    client.post(f"/api/v1/work-orders/{wo}/transition", json={"to": "closed"}).raise_for_status()
    assert _rows(engine, site) == [
        (wo, 1, "created", None, "new"),
        (wo, 2, "transition", "new", "assigned"),
        (wo, 3, "transition", "assigned", "in_progress"),
        (wo, 4, "transition", "in_progress", "on_hold"),
        (wo, 5, "transition", "on_hold", "in_progress"),
        (wo, 6, "transition", "in_progress", "resolved"),
        (wo, 7, "transition", "resolved", "closed"),
    ]
    updates = _updates(engine, site)
    assert {u.id for u in updates} == {f"wo{wo}-{n}" for n in range(1, 8)}
    third = updates[2]
    # The ledger's devices of the equipment: what alerting silences.
    assert (third.site, third.equipment, third.devices) == (site, "P-101", ("pump-01", "pump-01-vfd"))
    assert (third.actor, third.ts_ms, third.priority) == ("jane", T0 + 60_000, "P2")
    assert updates[-1].priority == "P1"
    # Created with an assignee: created, then assigned, in one request.
    r = client.post("/api/v1/work-orders", json={"title": "Leak", "site": site, "assignee": "ann"})
    wo2 = r.json()["id"]
    client.post(f"/api/v1/work-orders/{wo2}/transition", json={"to": "cancelled"}).raise_for_status()
    assert _rows(engine, site)[7:] == [(wo2, 1, "created", None, "new"),
                                       (wo2, 2, "transition", "new", "assigned"),
                                       (wo2, 3, "transition", "assigned", "cancelled")]
    assert _updates(engine, site)[7].devices == () and _updates(engine, site)[7].equipment is None


def test_anomaly_create_attach_reopen_and_the_closed_loop_write_the_right_events(engine: Engine) -> None:
    site = new_site()
    ledger(engine, site, "pump-01", "pump-01-vfd")
    a = anomaly("an-1")
    _apply(engine, site, "pump-01", a, a)  # created, and a replay in the same batch
    _apply(engine, site, "pump-01", a)  # a replay in another batch
    wo = _order_id(engine, site)
    [created] = _updates(engine, site)
    assert (created.change, created.state, created.anomaly_id, created.fault) == (
        "created", "new", "an-1", "vibration_high")
    assert (created.equipment, created.devices, created.actor) == ("P-101", ("pump-01", "pump-01-vfd"),
                                                                   "system:anomaly")
    # Another occurrence (other device of the equipment, more severe) attaches: no state change.
    _apply(engine, site, "pump-01-vfd", anomaly("an-2", ts_ms=T0 + 1000, severity="critical"))
    assert len(_updates(engine, site)) == 1
    with Session(engine) as s, s.begin():
        w = s.get_one(WorkOrder, wo)
        assign(s, w, assignee="tom", crew=None, actor="jane", now_ms=T0 + 10)
        transition(s, w, "in_progress", actor="tom", now_ms=T0 + 20)
        transition(s, w, "resolved", actor="tom", now_ms=T0 + 30)
    # The fault is still there: the resolved order reopens (assigned to tom again).
    _apply(engine, site, "pump-01", anomaly("an-3", ts_ms=T0 + 5000), now=T0 + 5000)
    assert _rows(engine, site)[1:] == [
        (wo, 2, "transition", "new", "assigned"),
        (wo, 3, "transition", "assigned", "in_progress"),
        (wo, 4, "transition", "in_progress", "resolved"),
        (wo, 5, "reopened", "resolved", "assigned"),
    ]
    reopened = _updates(engine, site)[-1]
    assert (reopened.anomaly_id, reopened.actor) == ("an-3", "system:anomaly")
    # Resolved again, the fault clears and stays cleared: the sweep closes it (system:verify).
    with Session(engine) as s, s.begin():
        w = s.get_one(WorkOrder, wo)
        transition(s, w, "in_progress", actor="tom", now_ms=T0 + 6000)
        transition(s, w, "resolved", actor="tom", now_ms=T0 + 7000)
    cleared = T0 + 8000
    for aid in ("an-1", "an-2", "an-3"):
        _apply(engine, site, "pump-01", anomaly(aid, "cleared", cleared), now=cleared)
    assert len(_updates(engine, site)) == 7
    with Session(engine) as s, s.begin():
        assert wo in sweep(s, cleared + 3_600_000, POLICY).verified
    closed = _updates(engine, site)[-1]
    assert (closed.seq, closed.previous, closed.state, closed.actor) == (
        8, "resolved", "closed", "system:verify")
    # The sweep again: nothing more to say.
    with Session(engine) as s, s.begin():
        sweep(s, cleared + 3_700_000, POLICY)
    assert len(_updates(engine, site)) == 8
    # The fault returns within the reopen window: the closed order reopens.
    back = cleared + core.DAY_MS
    _apply(engine, site, "pump-01", anomaly("an-4", ts_ms=back), now=back)
    last = _updates(engine, site)[-1]
    assert (last.id, last.change, last.previous, last.state, last.anomaly_id) == (
        f"wo{wo}-9", "reopened", "closed", "assigned", "an-4")


def test_sla_breaches_pm_orders_and_rolled_back_changes(engine: Engine) -> None:
    site = new_site()
    eq_id = ledger(engine, site, "chiller-01")
    _apply(engine, site, "chiller-01", anomaly("sla-1", severity="critical"))
    wo = _order_id(engine, site)
    with Session(engine) as s, s.begin():
        breaches = [b for b in sweep(s, T0 + 5 * 3_600_000, POLICY).breaches if b.work_order == wo]
    assert [b.timer for b in breaches] == ["respond", "resolve"]
    assert _rows(engine, site) == [(wo, 1, "created", None, "new")]  # a breach is not a state change
    # A PM order is created by the sweep: one "created" event, for the equipment's devices.
    with Session(engine) as s, s.begin():
        s.add(PmSchedule(title="Clean coils", equipment_id=eq_id, kind="calendar", priority="P3",
                         active=True, next_due=dt.date(2026, 11, 18), every=None, unit=None, lead_days=7))
    with Session(engine) as s, s.begin():
        [pm_wo] = sweep(s, T0 + 6 * 3_600_000, POLICY).pm_created
    pm_event = _updates(engine, site)[-1]
    assert (pm_event.work_order, pm_event.change, pm_event.actor, pm_event.devices) == (
        pm_wo, "created", "system:pm", ("chiller-01",))
    # A change whose transaction rolls back publishes nothing.
    with pytest.raises(TransitionError), Session(engine) as s, s.begin():
        w = s.get_one(WorkOrder, wo)
        transition(s, w, "cancelled", actor="jane", now_ms=T0)
        transition(s, w, "in_progress", actor="jane", now_ms=T0)  # refused: the whole request fails
    assert len(_updates(engine, site)) == 2
    # An order with no site has no topic: no event.
    with Session(engine) as s, s.begin():
        orphan = create(s, actor="jane", now_ms=T0, title="no site", priority="P4", source="manual",
                        policy=POLICY)
        transition(s, orphan, "cancelled", actor="jane", now_ms=T0)
        assert orphan.state_seq == 2
