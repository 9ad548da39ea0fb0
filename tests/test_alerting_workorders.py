"""Work orders in progress silence their equipment's alarms: the sans-IO board and engine,
then the alerting service on the real Mosquitto (SQLite and PostgreSQL), across a restart,
and end to end with the real maintenance service publishing the updates."""

from __future__ import annotations

import time
import uuid

import paho.mqtt.client as mqtt
from sqlalchemy import Engine, select

from alerting import tables
from alerting.engine import Engine as AlertEngine
from alerting.engine import Notify
from alerting.workorders import DeviceChange, WorkOrderBoard
from tests.services import wait_until
from tests.test_alerting_core import T0, alert, config
from tests.test_alerting_delivery import HttpReceiver
from tests.test_alerting_service import (
    anomaly,
    database_url,
    db,
    http_receiver,
    on_call_file,
    publisher,
    start_service,
)
from tests.test_ingest import purge_session
from wire import MqttSettings
from wire.topics import AlarmTopic
from wire.workorder import WorkOrderState, WorkOrderUpdate, encode_workorder_update, workorder_topic

__all__ = ["database_url", "db", "http_receiver", "publisher"]  # fixtures


def update(wo: int, seq: int, state: WorkOrderState, *devices: str, site: str = "s1",
           ts_ms: int = T0) -> WorkOrderUpdate:
    return WorkOrderUpdate(v=1, id=f"wo{wo}-{seq}", work_order=wo, seq=seq, change="transition", state=state,
                           priority="P2", site=site, ts_ms=ts_ms, equipment="P-101", devices=devices)


# -- the sans-IO parts ---------------------------------------------------------------------------


def test_board_silences_only_in_progress_in_seq_order_and_per_device() -> None:
    b = WorkOrderBoard()
    assert b.apply(update(17, 2, "assigned", "pump-1")) == ("applied", [])
    _, changes = b.apply(update(17, 3, "in_progress", "pump-1", "pump-1-vfd"))
    assert changes == [DeviceChange("s1", "pump-1", "17"), DeviceChange("s1", "pump-1-vfd", "17")]
    # A redelivery, or an older update arriving late, changes nothing.
    assert b.apply(update(17, 3, "in_progress", "pump-1")) == ("stale", [])
    assert b.apply(update(17, 2, "assigned", "pump-1")) == ("stale", [])
    # A second order in progress on the same device: the device stays silenced until both stop.
    b.apply(update(18, 1, "in_progress", "pump-1"))
    _, changes = b.apply(update(17, 4, "on_hold", "pump-1", "pump-1-vfd"))
    assert changes == [DeviceChange("s1", "pump-1", "18"), DeviceChange("s1", "pump-1-vfd", None)]
    _, changes = b.apply(update(18, 2, "resolved", "pump-1"))
    assert changes == [DeviceChange("s1", "pump-1", None)]
    # The ledger moved a device to other equipment between two updates: the set follows.
    b.apply(update(19, 1, "in_progress", "ahu-1", "ahu-1-fan"))
    _, changes = b.apply(update(19, 2, "in_progress", "ahu-1"))
    assert changes == [DeviceChange("s1", "ahu-1-fan", None)]
    assert [o.work_order for o in b.take_dirty()] == [17, 18, 19] and b.take_dirty() == []


def test_in_progress_silences_with_the_reason_and_releasing_pages_what_is_still_on() -> None:
    e = AlertEngine(config())
    e.set_work_order("s1", "pump-1", "17", T0)
    d = e.handle(alert(), T0)
    assert d.outcome == "silenced"
    assert e.incidents[d.incident_id or ""].silenced_by == "work order 17 in progress"
    assert e.handle(alert(n=1), T0 + 1000).outcome == "duplicate"  # joins the silenced incident
    quiet = e.handle(alert("s1/pump-1/bearing_wear"), T0 + 2000)
    e.handle(alert("s1/pump-1/bearing_wear", n=1, clear=True), T0 + 3000)  # cleared while silenced
    assert e.incidents[quiet.incident_id or ""].state == "resolved"
    assert not [a for a in e.tick(T0 + 60_000) if isinstance(a, Notify)]
    # Life safety is never silenced by a work order.
    fire = e.handle(alert("s1/pump-1/fire_alarm", severity="critical", summary="fire"), T0)
    assert fire.outcome == "new"
    e.resolve(fire.incident_id or "", "alice", T0 + 1)
    # The order is resolved: the silenced incident ends, its alarm (still on) is filed anew.
    [refiled] = e.set_work_order("s1", "pump-1", None, T0 + 70_000)
    assert refiled.outcome == "new" and refiled.incident_id != d.incident_id
    assert e.incidents[d.incident_id or ""].state == "resolved"
    notes = [a for a in e.tick(T0 + 100_000) if isinstance(a, Notify)]  # after the 30 s group wait
    assert notes and all(n.incident_id == refiled.incident_id for n in notes)
    assert e.set_work_order("s1", "pump-1", None, T0 + 100_000) == []  # nothing left to release


# -- the service on the real Mosquitto -----------------------------------------------------------


def _send(client: mqtt.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(5)


def test_work_order_in_progress_silences_its_equipment_across_a_restart(
        mqtt_settings: MqttSettings, db: Engine, site_id: str, http_receiver: HttpReceiver,
        publisher: mqtt.Client) -> None:
    raw = on_call_file(http_receiver)
    now = int(time.time() * 1000)
    wo_topic = workorder_topic(site_id)
    service = start_service(mqtt_settings, db, site_id, raw)
    try:
        _send(publisher, wo_topic, encode_workorder_update(
            update(17, 3, "in_progress", "pump-01", "pump-01-vfd", site=site_id, ts_ms=now)))
        # The alarm comes from another device of the same equipment: still silenced.
        _send(publisher, AlarmTopic(site_id, "pump-01-vfd").format(), anomaly(f"{site_id}-a1"))
        # Another order, already resolved: stored, but not loaded back at the next start.
        _send(publisher, wo_topic, encode_workorder_update(
            update(18, 5, "resolved", "fan-09", site=site_id, ts_ms=now)))
        wait_until(lambda: service.handled >= 3, 10, "the updates and the anomaly handled")
        time.sleep(0.5)
        assert http_receiver.received == []
        [inc] = service.engine.incidents.values()
        assert (inc.state, inc.silenced_by) == ("silenced", "work order 17 in progress")
        # A broken update is refused with the reason and changes nothing.
        _send(publisher, wo_topic, b'{"v":1,"id":"wo17-9","work_order":17}')
        wait_until(lambda: service.rejected == 1, 10, "the broken update rejected")
    finally:
        service.stop()
    with db.connect() as conn:  # recorded as silenced, with the reason
        row = conn.execute(select(tables.incident.c.state, tables.incident.c.silenced_by)
                           .where(tables.incident.c.site == site_id)).one()
    assert tuple(row) == ("silenced", "work order 17 in progress")
    # Restarted: the order in progress comes back from the database.
    service = start_service(mqtt_settings, db, site_id, raw)
    try:
        assert service.engine.work_orders == {(site_id, "pump-01"): "17", (site_id, "pump-01-vfd"): "17"}
        _send(publisher, AlarmTopic(site_id, "pump-01").format(),
              anomaly(f"{site_id}-a2", fault="bearing_wear", summary="bearing wear"))
        # A late, older update (assigned, seq 2) must not undo the silence.
        _send(publisher, wo_topic, encode_workorder_update(
            update(17, 2, "assigned", "pump-01", site=site_id, ts_ms=now)))
        # And a late in_progress of the resolved order 18: its stored seq says it is stale.
        _send(publisher, wo_topic, encode_workorder_update(
            update(18, 4, "in_progress", "fan-09", site=site_id, ts_ms=now)))
        wait_until(lambda: service.handled >= 3, 10, "the anomaly and the stale updates handled")
        assert (site_id, "fan-09") not in service.engine.work_orders
        time.sleep(0.5)
        assert http_receiver.received == []
        assert sorted(i.state for i in service.engine.incidents.values()) == ["silenced", "silenced"]
        # The order is resolved: the alarms still on page again.
        _send(publisher, wo_topic, encode_workorder_update(
            update(17, 4, "resolved", "pump-01", "pump-01-vfd", site=site_id, ts_ms=now)))
        wait_until(lambda: len(http_receiver.received) >= 1, 10, "the page after the order was resolved")
        assert site_id in http_receiver.received[0]["title"]
        assert service.engine.work_orders == {}
    finally:
        service.stop()
        purge_session(mqtt_settings, f"t-alerting-{site_id}")
    with db.connect() as conn:
        stored = conn.execute(select(tables.work_order.c.work_order, tables.work_order.c.seq,
                                     tables.work_order.c.state)
                              .where(tables.work_order.c.site == site_id)
                              .order_by(tables.work_order.c.work_order)).all()
    assert [tuple(r) for r in stored] == [(17, 4, "resolved"), (18, 5, "resolved")]


def test_maintenance_and_alerting_together_on_the_bus(
        mqtt_settings: MqttSettings, db: Engine, database_url: str, site_id: str,
        http_receiver: HttpReceiver, publisher: mqtt.Client) -> None:
    """The real maintenance service raises the order from the anomaly and publishes its
    updates; a technician starts work (as the API does); a second alarm from another device
    of the equipment (the ledger's binding) pages nobody; resolving the order lets it page."""
    from sqlalchemy.orm import Session

    from maintenance.db import open_engine as open_maintenance
    from maintenance.models import Device, Equipment, Site, WorkOrder
    from maintenance.service import MaintenanceService
    from maintenance.settings import MaintenanceSettings
    from maintenance.workorders import assign, transition

    maint_db = open_maintenance(database_url)  # both schemas in one database, as in production
    with Session(maint_db) as s, s.begin():
        s.add(Site(id=site_id, name=site_id))
        s.flush()
        eq = Equipment(site_id=site_id, code="AHU-1", kind="ahu", brick_class="brick:AHU")
        s.add(eq)
        s.flush()
        s.add_all([Device(site_id=site_id, device=d, equipment_id=eq.id) for d in ("ahu-1", "ahu-1-fan")])
    maint_id = "t-maint-" + uuid.uuid4().hex[:8]
    maint = MaintenanceService(MaintenanceSettings.load(
        None, mqtt=mqtt_settings, client_id=maint_id, sites=(site_id,), sweep_interval_s=3600,
        outbox_interval_s=0.2), maint_db)
    service = start_service(mqtt_settings, db, site_id, on_call_file(http_receiver))
    maint.start()
    try:
        assert maint.wait_connected(10)
        first = anomaly(f"{site_id}-f1", fault="filter_clogged", summary="filter clogged", kind="ahu")
        _send(publisher, AlarmTopic(site_id, "ahu-1").format(), first)
        wait_until(lambda: len(http_receiver.received) >= 1, 10, "the first page (no work started)")
        wait_until(lambda: maint.stats.applied >= 1, 10, "maintenance raised the order")
        # The filter alarm clears: its incident ends, so a later page is a new incident.
        _send(publisher, AlarmTopic(site_id, "ahu-1").format(),
              anomaly(f"{site_id}-f1", "cleared", fault="filter_clogged", summary="filter clogged",
                      kind="ahu"))
        wait_until(lambda: all(i.state == "resolved" for i in service.engine.incidents.values()), 10,
                   "the first incident resolved")
        pages = len(http_receiver.received)
        with Session(maint_db) as s, s.begin():
            w = s.scalars(select(WorkOrder).where(WorkOrder.site_id == site_id)).one()
            assign(s, w, assignee="tom", crew=None, actor="jane", now_ms=int(time.time() * 1000))
            transition(s, w, "in_progress", actor="tom", now_ms=int(time.time() * 1000))
            wo_id = w.id
        wait_until(lambda: service.engine.work_orders.get((site_id, "ahu-1-fan")) == str(wo_id), 10,
                   "alerting told the order is in progress")
        fan = anomaly(f"{site_id}-f2", fault="fan_fault", summary="fan tripped", kind="ahu")
        _send(publisher, AlarmTopic(site_id, "ahu-1-fan").format(), fan)
        wait_until(lambda: any(i.state == "silenced" for i in service.engine.incidents.values()), 10,
                   "the fan alarm silenced")
        time.sleep(0.5)
        assert not any("fan tripped" in r["message"] for r in http_receiver.received)
        with Session(maint_db) as s, s.begin():
            transition(s, s.get_one(WorkOrder, wo_id), "resolved", actor="tom",
                       now_ms=int(time.time() * 1000))
        wait_until(lambda: any("fan tripped" in r["title"] for r in http_receiver.received[pages:]), 10,
                   "the fan alarm paged once the order was resolved")
    finally:
        maint.stop()
        service.stop()
        maint_db.dispose()
        purge_session(mqtt_settings, maint_id)
        purge_session(mqtt_settings, f"t-alerting-{site_id}")


