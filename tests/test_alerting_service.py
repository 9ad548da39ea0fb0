"""The alerting service end to end, on SQLite and on PostgreSQL: anomaly events published on
the real Mosquitto, pages delivered to a real local HTTP receiver, acknowledged through the
signed single-use link and through the API, every attempt recorded."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from alerting import store as alerting_store
from alerting import tables
from alerting.config import parse_config
from alerting.db import open_engine
from alerting.service import AlertingService
from alerting.settings import AlertingSettings
from api.main import create_app
from api.settings import ApiSettings
from ingest.store import StoreSettings
from tests.services import auth_headers, fresh_database, wait_until
from tests.test_alerting_delivery import HttpReceiver, http_receiver
from tests.test_ingest import purge_session
from wire import MqttSettings, Reading, Status, StatusTopic, Telemetry, TelemetryTopic, encode
from wire.anomaly import Anomaly
from wire.mqtt import make_client
from wire.topics import AlarmTopic

__all__ = ["http_receiver"]  # the fixture, imported for its side effect on pytest

SECRET = "s3cret-for-tests-only-0123456789"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(request.param, tmp_path_factory.mktemp("alerting"), "t_alerting") as url:
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = open_engine(database_url)
    yield engine
    engine.dispose()


def on_call_file(receiver: HttpReceiver) -> dict[str, Any]:
    return {
        "channels": {"push": {"kind": "apprise", "timeout_s": 3}},
        "people": {p: {"name": p.title(), "contacts": [{"channel": "push", "to": receiver.url(p)}]}
                   for p in ("tech1", "tech2", "super")},
        "rotations": {"techs": {"members": ["tech1", "tech2"], "shift": "weekly"}},
        "policies": {"std": {"steps": [{"notify": ["rotation:techs"], "delay_min": 0.05},
                                       {"notify": ["person:super"], "delay_min": 10}]}},
        "routes": [{"name": "all", "policy": "std", "group_wait_s": 0, "min_severity": "minor"}],
    }


def start_service(mqtt_settings: MqttSettings, db: Engine, site: str, raw: dict[str, Any],
                  **extra: Any) -> AlertingService:
    settings = AlertingSettings.load(None, mqtt=mqtt_settings, sites=(site,), client_id=f"t-alerting-{site}",
                                     signing_secret=SECRET, public_base_url="http://vigil.test",
                                     sync_interval_s=0.2, **extra)
    service = AlertingService(settings, db, parse_config(raw))
    service.start()
    assert service.wait_connected(10), "alerting could not connect to Mosquitto at 127.0.0.1:1883"
    time.sleep(0.3)  # subscriptions granted
    return service


@pytest.fixture
def publisher(mqtt_settings: MqttSettings) -> Iterator[mqtt.Client]:
    c = make_client(mqtt_settings, f"t-pub-{uuid.uuid4().hex[:8]}")
    c.connect(mqtt_settings.host, mqtt_settings.port)
    c.loop_start()
    yield c
    c.disconnect()
    c.loop_stop()


def anomaly(aid: str, state: str = "open", ts_ms: int | None = None, **kw: Any) -> bytes:
    ts = ts_ms or int(time.time() * 1000)
    fields: dict[str, Any] = {"v": 1, "id": aid, "state": state, "ts_ms": ts, "started_ms": ts,
                              "severity": "critical", "fault": "vibration_high",
                              "summary": "pump vibration 9.1 mm/s, expected under 4.5", "kind": "pump"}
    fields.update(kw)
    return msgspec.json.encode(Anomaly(**fields))


def links_in(body: str) -> dict[str, str]:
    found = re.finditer(r"(Acknowledge|Resolve): http://vigil.test(\S+)", body)
    return {m.group(1): m.group(2) for m in found}


def api_client(database_url: str, tmp_path: Path) -> TestClient:
    settings = ApiSettings.load(None, database_url=database_url, store=StoreSettings(path=tmp_path / "ts.db"))
    # acts as "alice": acks, resolves and silences are recorded as the caller
    return TestClient(create_app(settings), headers=auth_headers(database_url, user="alice"))


def test_anomaly_pages_once_escalates_and_stops_on_the_phone_link(
        mqtt_settings: MqttSettings, db: Engine, database_url: str, site_id: str, tmp_path: Path,
        http_receiver: HttpReceiver, publisher: mqtt.Client) -> None:
    service = start_service(mqtt_settings, db, site_id, on_call_file(http_receiver))
    try:
        topic = AlarmTopic(site_id, "pump-01").format()
        payload = anomaly(f"{site_id}-a1")
        t0 = time.time()
        for _ in range(10):  # the same alarm replayed 10 times
            publisher.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_until(lambda: len(http_receiver.received) >= 1, 10, "the first page")
        first_latency = http_receiver.arrivals[0] - t0
        assert first_latency < 5, first_latency
        page = http_receiver.received[0]
        assert page["_path"] in ("/tech1", "/tech2") and "pump vibration" in page["message"]
        assert "[CRITICAL]" in page["title"] and "pump-01" in page["title"]
        # not acknowledged within 3 s: the supervisor is paged
        wait_until(lambda: any(r["_path"] == "/super" for r in http_receiver.received), 15, "escalation")
        assert len(http_receiver.received) == 2
        links = links_in(page["message"])
        with api_client(database_url, tmp_path) as client:
            r = client.get(links["Acknowledge"])
            assert r.status_code == 200 and "Acknowledge" in r.text  # GET changes nothing
            r = client.post(links["Acknowledge"])
            assert r.status_code == 200 and "acknowledged" in r.text
            again = client.post(links["Acknowledge"])
            assert again.status_code == 410 and "already used" in again.text
            bogus = client.post("/api/v1/alerting/links/not-a-token.sig")
            assert bogus.status_code == 410 and "not valid" in bogus.text
            incidents = client.get("/api/v1/alerting/incidents", params={"site": site_id}).json()["incidents"]
            assert len(incidents) == 1 and incidents[0]["state"] == "acked"
            url = f"/api/v1/alerting/incidents/{incidents[0]['id']}"
            # the sender records an attempt just after the receiver has the page
            wait_until(lambda: len(client.get(url).json()["attempts"]) == 2, 5, "two attempts recorded")
            inc = client.get(url).json()
            assert [a["ok"] for a in inc["attempts"]] == [True, True]
            assert inc["alerts"][0]["count"] == 1 and "hunter" not in str(inc)
            oncall = client.get("/api/v1/alerting/oncall").json()["on_call"]
            assert oncall[0]["rotation"] == "techs" and oncall[0]["person"] in ("tech1", "tech2")
            now = int(time.time() * 1000)
            r = client.post("/api/v1/alerting/rotations/techs/overrides",
                            json={"person": "super", "start_ms": now - 1000, "end_ms": now + 3_600_000,
                                  "reason": "covering a sick day"})
            assert r.status_code == 200, r.text
            oncall = client.get("/api/v1/alerting/oncall").json()["on_call"]
            assert (oncall[0]["person"], oncall[0]["override"]) == ("super", True)
            bad = client.post("/api/v1/alerting/rotations/techs/overrides",
                              json={"person": "nobody", "start_ms": now, "end_ms": now + 1})
            assert bad.status_code == 422 and "not in the on-call file" in bad.json()["detail"]
            client.delete(f"/api/v1/alerting/overrides/{r.json()['id']}")
            assert client.get("/api/v1/alerting/rotations").json()["rotations"]["techs"]["upcoming"]
        wait_until(lambda: service.engine.incidents[incidents[0]["id"]].state == "acked", 5, "ack applied")
        time.sleep(1.0)
        assert len(http_receiver.received) == 2  # nothing more after the ack
    finally:
        service.stop()
        purge_session(mqtt_settings, f"t-alerting-{site_id}")


def test_agent_last_will_folds_device_offline_and_api_resolve(
        mqtt_settings: MqttSettings, db: Engine, database_url: str, site_id: str, tmp_path: Path,
        http_receiver: HttpReceiver, publisher: mqtt.Client) -> None:
    raw = on_call_file(http_receiver)
    raw["routes"] = [{"name": "all", "policy": "std", "group_wait_s": 1.5}]
    service = start_service(mqtt_settings, db, site_id, raw)
    try:
        now = int(time.time() * 1000)
        will = Status(v=1, state="offline", ts_ms=now, boot=1, reason="connection lost")
        publisher.publish(StatusTopic(site_id, "gw1").format(), encode(will), qos=1, retain=False)
        for i in range(10):  # the asset hierarchy, learnt from the devices' topics
            reading = Telemetry(v=1, seq=1, readings=(Reading(ts_ms=now, metric="t", value=1.0),))
            publisher.publish(TelemetryTopic(site_id, "gw1", f"dev-{i}").format(), encode(reading), qos=0)
        time.sleep(0.5)
        for i in range(20):  # half name their agent, half are placed by the hierarchy
            agent = "gw1" if i >= 10 else None
            publisher.publish(AlarmTopic(site_id, f"dev-{i}").format(),
                              anomaly(f"{site_id}-off-{i}", fault="device_offline", agent=agent,
                                      severity="major", summary="no data for 5 minutes"), qos=1)
        wait_until(lambda: len(http_receiver.received) >= 1, 10, "the agent page")
        time.sleep(2.5)
        assert len(http_receiver.received) == 1
        assert "edge agent gw1 is offline: connection lost" in http_receiver.received[0]["title"]
        assert "20 offline alarm(s) beneath it are folded" in http_receiver.received[0]["message"]
        with api_client(database_url, tmp_path) as client:
            (inc,) = client.get("/api/v1/alerting/incidents", params={"site": site_id}).json()["incidents"]
            assert inc["folded"] == 20
            r = client.post(f"/api/v1/alerting/incidents/{inc['id']}/resolve", json={"by": "alice"})
            assert r.json() == {"id": inc["id"], "state": "resolved"}
            assert client.post("/api/v1/alerting/incidents/nope/ack", json={"by": "alice"}).status_code == 404
        wait_until(lambda: service.engine.incidents[inc["id"]].state == "resolved", 5, "resolve applied")
        with db.connect() as conn:
            cmds = conn.execute(select(tables.command.c.done_ms)).all()
        assert all(c[0] is not None for c in cmds)
    finally:
        service.stop()
        purge_session(mqtt_settings, f"t-alerting-{site_id}")


def test_silence_from_the_api_holds_pages_and_restart_restores_incidents(
        mqtt_settings: MqttSettings, db: Engine, database_url: str, site_id: str, tmp_path: Path,
        http_receiver: HttpReceiver, publisher: mqtt.Client) -> None:
    raw = on_call_file(http_receiver)
    service = start_service(mqtt_settings, db, site_id, raw)
    try:
        with api_client(database_url, tmp_path) as client:
            now = int(time.time() * 1000)
            bad = client.post("/api/v1/alerting/silences", json={
                "start_ms": now, "end_ms": now + 60_000, "reason": "x", "created_by": "alice"})
            assert bad.status_code == 422 and "must match something" in bad.json()["detail"]
            r = client.post("/api/v1/alerting/silences", json={
                "devices": ["chiller-*"], "start_ms": now - 1000, "end_ms": now + 600_000,
                "reason": "chiller overhaul", "created_by": "alice"})
            assert r.status_code == 200, r.text
        time.sleep(0.6)  # the service picks silences up every sync interval
        publisher.publish(AlarmTopic(site_id, "chiller-2").format(), anomaly(f"{site_id}-c2"), qos=1)
        fire = anomaly(f"{site_id}-f1", fault="fire_alarm", summary="fire alarm zone 3", kind="fire_panel")
        publisher.publish(AlarmTopic(site_id, "chiller-2").format(), fire, qos=1)
        wait_until(lambda: len(http_receiver.received) >= 1, 10, "the fire page")
        time.sleep(1.0)
        assert [r["title"] for r in http_receiver.received] == [
            "[CRITICAL] " + site_id + "/chiller-2: fire alarm zone 3"]
        states = sorted(i.state for i in service.engine.incidents.values())
        assert states == ["open", "silenced"]
    finally:
        service.stop()
    # a restarted service takes its live incidents back from the database
    service = start_service(mqtt_settings, db, site_id, raw)
    try:
        assert sorted(i.state for i in service.engine.incidents.values()) == ["open", "silenced"]
        publisher.publish(AlarmTopic(site_id, "chiller-2").format(), fire, qos=1)  # a replay after restart
        time.sleep(1.0)
        with db.connect() as conn:
            assert len(alerting_store.list_incidents(conn, state=None, site=site_id, limit=10)) == 2
    finally:
        service.stop()
        purge_session(mqtt_settings, f"t-alerting-{site_id}")


def test_settings_refuse_a_placeholder_secret() -> None:
    from wire import ConfigError

    with pytest.raises(ConfigError, match=r"VIGIL_ALERTING_SIGNING_SECRET: .*placeholder"):
        AlertingSettings.load(None, signing_secret="change-me")
    assert AlertingSettings.load(None, demo=True).demo


def test_device_events_and_sla_breaches_page_minor_noise_does_not(
        mqtt_settings: MqttSettings, db: Engine, site_id: str, http_receiver: HttpReceiver,
        publisher: mqtt.Client) -> None:
    from wire import Event, EventTopic
    from wire.workorder import SlaBreach, encode_sla_breach, sla_topic

    service = start_service(mqtt_settings, db, site_id, on_call_file(http_receiver))
    try:
        now = int(time.time() * 1000)
        door = EventTopic(site_id, "gw1", "door-7").format()
        opened = Event(v=1, seq=1, ts_ms=now, kind="door_opened", severity="info")
        publisher.publish(door, encode(opened), qos=1)
        publisher.publish(door, encode(Event(v=1, seq=2, ts_ms=now, kind="door_forced", severity="major",
                                             message="door 7 forced open")), qos=1)
        publisher.publish(door, b'{"v":1,"seq":"x"}', qos=1)  # broken: logged with the reason, acked
        breach = SlaBreach(v=1, id="wo42-respond-0", work_order=42, timer="respond", priority="P1",
                           state="new", due_ms=now - 60_000, breached_ms=now, title="chiller 2 tripped")
        publisher.publish(sla_topic(site_id), encode_sla_breach(breach), qos=1)
        wait_until(lambda: any("work order 42" in r["title"] for r in http_receiver.received), 10,
                   "the SLA page")
        time.sleep(0.5)
        titles = [r["title"] for r in http_receiver.received]
        # one incident (grouped per building): the door page and, if the breach came after it
        # was paged, an update because a more severe alert joined; never more
        assert 1 <= len(titles) <= 2 and len(service.engine.incidents) == 1
        assert (f"[CRITICAL] {site_id}: work order 42 (P1) was not started in time: "
                "chiller 2 tripped (+1 more)") in titles
        assert all("door_opened" not in r["message"] for r in http_receiver.received)
        assert service.rejected == 1
    finally:
        service.stop()
        purge_session(mqtt_settings, f"t-alerting-{site_id}")


@pytest.mark.fault
def test_broker_outage_is_one_page_and_folds_the_offline_flood_after_it(
        private_mosquitto: Any, db: Engine, site_id: str, http_receiver: HttpReceiver) -> None:
    broker = private_mosquitto()
    mq = MqttSettings(host=broker.host, port=broker.port, keepalive_s=5)
    raw = on_call_file(http_receiver)
    raw["routes"] = [{"name": "all", "policy": "std", "group_wait_s": 1}]
    service = start_service(mq, db, site_id, raw, broker_down_after_s=1.0)
    try:
        broker.stop()
        wait_until(lambda: any("unreachable" in r["title"] for r in http_receiver.received), 15,
                   "the broker-down page")
        broker = private_mosquitto(port=mq.port)
        assert service.wait_connected(20)
        pub = make_client(mq, "t-flood")
        pub.connect(mq.host, mq.port)
        pub.loop_start()
        try:
            for i in range(100):  # the devices' offline alarms, arriving after the outage
                pub.publish(AlarmTopic(site_id, f"dev-{i}").format(),
                            anomaly(f"{site_id}-o{i}", fault="device_offline", severity="major",
                                    summary="no data"), qos=1).wait_for_publish(5)
        finally:
            pub.disconnect()
            pub.loop_stop()
        wait_until(lambda: service.handled >= 100, 10, "the flood handled")
        time.sleep(2.0)  # longer than the group wait
        assert len(http_receiver.received) == 1, [r["title"] for r in http_receiver.received]
        outage = next(i for i in service.engine.incidents.values() if i.scope == ("broker",))
        assert outage.folded == 100 and outage.state == "resolved"
    finally:
        service.stop()
        broker.stop()
