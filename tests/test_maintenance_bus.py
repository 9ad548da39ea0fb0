"""``vigil maintenance`` on the real Mosquitto, over SQLite and PostgreSQL: anomaly events
published on the bus become work orders exactly once (replays, redelivery after a restart),
bad messages are kept with the reason, and SLA breaches come back out on the bus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from maintenance.models import AnomalyEvent, Equipment, PmSchedule, RejectedEvent, Site, WorkOrder
from maintenance.service import MaintenanceService
from maintenance.settings import MaintenanceSettings
from tests import test_maintenance_support as support
from tests.services import wait_until
from tests.test_ingest import purge_session
from tests.test_maintenance_support import T0, anomaly, payload
from wire import AlarmTopic, MqttSettings, Reading, Telemetry, TelemetryTopic, encode
from wire.anomaly import AnomalyState
from wire.mqtt import make_client
from wire.workorder import SlaBreach, decode_sla_breach, sla_filter

# The shared fixtures (a fresh database per module on SQLite and on PostgreSQL, ...).
database_url = support.database_url
ROOT = Path(__file__).resolve().parent.parent
engine = support.engine


class Publisher:
    def __init__(self, settings: MqttSettings) -> None:
        self.client = make_client(settings, "t-pub-" + uuid.uuid4().hex[:8])
        self.client.connect(settings.host, settings.port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mqtt_settings: MqttSettings) -> Iterator[Publisher]:
    p = Publisher(mqtt_settings)
    yield p
    p.close()


class FakeTime:
    """The service's clock, moved by the test (SLA timers are hours long)."""

    def __init__(self) -> None:
        self.s = T0 / 1000

    def __call__(self) -> float:
        return self.s


def _service(
    mqtt_settings: MqttSettings, engine: Engine, site: str, client_id: str, clock: FakeTime | None = None
) -> MaintenanceService:
    settings = MaintenanceSettings.load(
        None, mqtt=mqtt_settings, client_id=client_id, sites=(site,), sweep_interval_s=3600
    )
    svc = MaintenanceService(settings, engine, **({"clock": clock} if clock else {}))
    svc.start()
    assert svc.wait_connected(10)
    return svc


def _orders(engine: Engine, site: str) -> list[WorkOrder]:
    with Session(engine) as s:
        return list(s.scalars(select(WorkOrder).where(WorkOrder.site_id == site).order_by(WorkOrder.id)))


def test_bus_events_become_one_work_order_and_bad_ones_are_kept(
    mqtt_settings: MqttSettings,
    engine: Engine,
    site_id: str,
    publisher: Publisher,
) -> None:
    client_id = "t-maint-" + uuid.uuid4().hex[:8]
    svc = _service(mqtt_settings, engine, site_id, client_id)
    try:
        topic = AlarmTopic(site_id, "pump-01").format()
        for _ in range(10):
            publisher.send(topic, payload(anomaly(site_id + "-1")))
        publisher.send(topic, b'{"v":1,"id":"x","state":"opened"}')
        publisher.send(topic, payload(anomaly(site_id + "-2", fault="sensor_stuck")))
        wait_until(lambda: svc.stats.messages >= 12, 15, "12 messages applied")
    finally:
        svc.stop()
        purge_session(mqtt_settings, client_id)
    orders = _orders(engine, site_id)
    assert [(w.fault, w.occurrences) for w in orders] == [("vibration_high", 1), ("sensor_stuck", 1)]
    assert (svc.stats.applied, svc.stats.duplicates, svc.stats.rejected) == (2, 9, 1)
    with Session(engine) as s:
        [bad] = s.scalars(select(RejectedEvent).where(RejectedEvent.topic == topic)).all()
    assert "invalid anomaly" in bad.reason and "state" in bad.reason


def test_events_published_while_down_are_applied_after_a_restart(
    mqtt_settings: MqttSettings,
    engine: Engine,
    site_id: str,
    publisher: Publisher,
) -> None:
    client_id = "t-maint-" + uuid.uuid4().hex[:8]
    svc = _service(mqtt_settings, engine, site_id, client_id)
    svc.stop()
    try:
        topic = AlarmTopic(site_id, "ahu-01").format()
        publisher.send(topic, payload(anomaly(site_id + "-a", fault="filter_clogged")))
        publisher.send(topic, payload(anomaly(site_id + "-a", "cleared", T0 + 5000, fault="filter_clogged")))
        svc = _service(mqtt_settings, engine, site_id, client_id)
        wait_until(lambda: svc.stats.messages >= 2, 15, "the queued events")
        svc.stop()
    finally:
        purge_session(mqtt_settings, client_id)
    [wo] = _orders(engine, site_id)
    assert wo.fault == "filter_clogged" and wo.anomaly_active is False


def test_sla_breach_is_published_on_the_bus(
    mqtt_settings: MqttSettings,
    engine: Engine,
    site_id: str,
    publisher: Publisher,
) -> None:
    got: list[SlaBreach] = []
    arrived = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(decode_sla_breach(bytes(msg.payload)))
        arrived.set()

    sub = make_client(mqtt_settings, "t-sla-" + uuid.uuid4().hex[:8])
    sub.on_message = on_message
    sub.connect(mqtt_settings.host, mqtt_settings.port)
    sub.subscribe(sla_filter(site_id), qos=1)
    sub.loop_start()
    clock = FakeTime()
    client_id = "t-maint-" + uuid.uuid4().hex[:8]
    svc = _service(mqtt_settings, engine, site_id, client_id, clock)
    try:
        publisher.send(
            AlarmTopic(site_id, "chiller-01").format(), payload(anomaly(site_id + "-c", severity="critical"))
        )
        wait_until(lambda: svc.stats.messages >= 1, 15, "the anomaly applied")
        clock.s += 3601  # past the P1 respond time
        svc.sweep_now()
        assert arrived.wait(15), "no SLA breach event on the bus"
    finally:
        svc.stop()
        purge_session(mqtt_settings, client_id)
        sub.disconnect()
        sub.loop_stop()
    [wo] = _orders(engine, site_id)
    assert [(b.work_order, b.timer, b.priority, b.device) for b in got] == [
        (wo.id, "respond", "P1", "chiller-01")
    ]
    assert wo.respond_breached_ms is not None


@pytest.mark.fault
def test_kill_9_mid_stream_loses_nothing_and_duplicates_nothing(
    mqtt_settings: MqttSettings, engine: Engine, database_url: str, site_id: str, publisher: Publisher,
) -> None:
    """`vigil maintenance` killed with SIGKILL while events stream in: after a restart every
    event is applied once, and each (device, fault) has exactly one work order."""
    client_id = "t-maint-" + uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "VIGIL_MAINTENANCE_DATABASE_URL": database_url,
        "VIGIL_MAINTENANCE_MQTT__HOST": mqtt_settings.host,
        "VIGIL_MAINTENANCE_MQTT__PORT": str(mqtt_settings.port),
        "VIGIL_MAINTENANCE_CLIENT_ID": client_id,
        "VIGIL_MAINTENANCE_SITES": json.dumps([site_id]),
        "VIGIL_MAINTENANCE_BATCH_MAX_MESSAGES": "5",
    }
    argv = [sys.executable, "-m", "vigil.cli", "maintenance", "--log-level", "WARNING"]

    def seen() -> int:
        with Session(engine) as s:
            return len(s.scalars(select(AnomalyEvent.id).where(AnomalyEvent.site_id == site_id)).all())

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=env, cwd=ROOT)

    devices = [f"pump-{i:02d}" for i in range(20)]
    proc = start()
    try:
        # Until the worker has subscribed, the broker drops what is published: probe until one lands.
        probe = payload(anomaly(f"{site_id}-probe", fault="probe"))

        def probed() -> bool:
            publisher.send(AlarmTopic(site_id, "probe").format(), probe)
            return seen() > 0

        wait_until(probed, 30, "the worker subscribed")
        for round_ in range(3):  # each anomaly: open, then a replay, then cleared
            for i, dev in enumerate(devices):
                state: AnomalyState = "cleared" if round_ == 2 else "open"
                a = anomaly(f"{site_id}-{i}", state, T0 + (1000 if round_ == 2 else 0))
                publisher.send(AlarmTopic(site_id, dev).format(), payload(a))
            if round_ == 0:
                wait_until(lambda: seen() > 1, 20, "some events applied")
                proc.kill()  # SIGKILL: no clean stop, unacked messages stay with the broker
                proc.wait(10)
        proc = start()
        wait_until(lambda: seen() == 41, 30, "every distinct event applied after the restart")
    finally:
        proc.terminate()
        proc.wait(15)
        purge_session(mqtt_settings, client_id)
    orders = [w for w in _orders(engine, site_id) if w.device != "probe"]
    assert sorted(w.device or "" for w in orders) == devices
    assert all(w.occurrences == 1 and not w.anomaly_active for w in orders)


def test_running_hours_from_telemetry_raise_the_meter_pm_order(
    mqtt_settings: MqttSettings, engine: Engine, site_id: str, publisher: Publisher,
) -> None:
    with Session(engine) as s, s.begin():
        s.add(Site(id=site_id, name=site_id))
        s.flush()
        eq = Equipment(site_id=site_id, code="P-1", kind="pump", brick_class="brick:Pump")
        s.add(eq)
        s.flush()
        s.add(PmSchedule(title="Overhaul", equipment_id=eq.id, kind="meter", priority="P3", active=True,
                         device="pump-01", meter_metric="running", meter_every=2000.0, meter_lead=0.0,
                         meter_value=1999.5, meter_next_due=2000.0, lead_days=0))
        eq_id = eq.id
    client_id = "t-maint-" + uuid.uuid4().hex[:8]
    svc = _service(mqtt_settings, engine, site_id, client_id)
    try:
        topic = TelemetryTopic(site_id, "gw1", "pump-01").format()

        def hours() -> float:
            with Session(engine) as s:
                return s.scalars(select(PmSchedule.meter_value).where(PmSchedule.equipment_id == eq_id)).one()

        # Until the worker follows the device, telemetry is not delivered to it: resend the first.
        first = Telemetry(v=1, seq=0, readings=(Reading(ts_ms=T0, metric="running", value=True),))

        def followed() -> bool:
            publisher.send(topic, encode(first))
            with Session(engine) as s:
                return s.scalars(select(PmSchedule.meter_last_ts_ms)
                                 .where(PmSchedule.equipment_id == eq_id)).one() is not None

        wait_until(followed, 20, "the worker following pump-01's telemetry")
        for i in range(1, 7):  # an hour of running, one sample every 10 minutes
            publisher.send(topic, encode(Telemetry(v=1, seq=i, readings=(
                Reading(ts_ms=T0 + i * 600_000, metric="running", value=True),
                Reading(ts_ms=T0 + i * 600_000, metric="flow_lps", value=12.0)))))
        wait_until(lambda: hours() >= 2000.49, 15, "an hour counted")
        svc.sweep_now()
        wait_until(lambda: len(_orders(engine, site_id)) == 1, 15, "the PM order")
    finally:
        svc.stop()
        purge_session(mqtt_settings, client_id)
    [wo] = _orders(engine, site_id)
    assert (wo.source, wo.pm_due) == ("pm", "running=2000")


def test_work_order_updates_reach_the_bus_in_order(
    mqtt_settings: MqttSettings, engine: Engine, site_id: str, publisher: Publisher,
) -> None:
    """The consumer's own changes (an anomaly raising an order) are published after the batch;
    changes another process made (the API, here a plain session) within ``outbox_interval_s``."""
    from maintenance.workorders import assign, transition
    from wire.workorder import WorkOrderUpdate, decode_workorder_update, workorder_filter

    got: list[WorkOrderUpdate] = []

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(decode_workorder_update(bytes(msg.payload)))

    sub = make_client(mqtt_settings, "t-wo-" + uuid.uuid4().hex[:8])
    sub.on_message = on_message
    sub.connect(mqtt_settings.host, mqtt_settings.port)
    sub.subscribe(workorder_filter(site_id), qos=1)
    sub.loop_start()
    client_id = "t-maint-" + uuid.uuid4().hex[:8]
    settings = MaintenanceSettings.load(None, mqtt=mqtt_settings, client_id=client_id, sites=(site_id,),
                                        sweep_interval_s=3600, outbox_interval_s=0.2)
    svc = MaintenanceService(settings, engine)
    svc.start()
    try:
        assert svc.wait_connected(10)
        publisher.send(AlarmTopic(site_id, "pump-07").format(), payload(anomaly(site_id + "-w")))
        wait_until(lambda: len(got) >= 1, 15, "the 'created' update on the bus")
        [wo] = _orders(engine, site_id)
        with Session(engine) as s, s.begin():  # what the API does, in its own process
            w = s.get_one(WorkOrder, wo.id)
            assign(s, w, assignee="tom", crew=None, actor="jane", now_ms=T0 + 1)
            transition(s, w, "in_progress", actor="tom", now_ms=T0 + 2)
        wait_until(lambda: len(got) >= 3, 15, "the API's updates on the bus")
    finally:
        svc.stop()
        purge_session(mqtt_settings, client_id)
        sub.disconnect()
        sub.loop_stop()
    assert [(u.work_order, u.seq, u.state, u.devices) for u in got] == [
        (wo.id, 1, "new", ("pump-07",)), (wo.id, 2, "assigned", ("pump-07",)),
        (wo.id, 3, "in_progress", ("pump-07",))]
    assert svc.stats.outbox_published >= 3  # the module database holds other tests' rows too
