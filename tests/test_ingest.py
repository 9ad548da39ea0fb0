"""Ingest against the real Mosquitto: every good reading stored, every bad message explained."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from ingest.service import IngestService
from ingest.settings import IngestSettings
from ingest.store import Store, StoreSettings, open_store
from tests.services import wait_until
from wire import MqttSettings, Reading, Status, StatusTopic, Telemetry, TelemetryTopic, encode
from wire.mqtt import make_client

# Recent, so readings fall inside ingest's default time window (ts_max_age_s).
T0 = (int(time.time()) - 3600) * 1000


def purge_session(settings: MqttSettings, client_id: str) -> None:
    """Drop a persistent session from the shared broker so it queues nothing after the test."""
    c = make_client(settings, client_id, clean_session=True)
    c.connect(settings.host, settings.port)
    c.loop_start()
    time.sleep(0.1)
    c.disconnect()
    c.loop_stop()


@pytest.fixture
def publisher(mqtt_settings: MqttSettings) -> Iterator[mqtt.Client]:
    c = make_client(mqtt_settings, f"test-pub-{uuid.uuid4().hex[:8]}")
    c.connect(mqtt_settings.host, mqtt_settings.port)
    c.loop_start()
    yield c
    c.disconnect()
    c.loop_stop()


@pytest.fixture(params=["embedded", "influx"])
def store_settings(request: pytest.FixtureRequest) -> StoreSettings:
    return request.getfixturevalue(f"{request.param}_settings")  # type: ignore[no-any-return]


@pytest.fixture
def store(store_settings: StoreSettings) -> Iterator[Store]:
    s = open_store(store_settings)
    yield s
    s.close()


def start_ingest(mqtt_settings: MqttSettings, store: Store, sites: tuple[str, ...], client_id: str,
                 **settings: Any) -> IngestService:
    """An ingest worker on the shared broker taking only the test's sites, connected."""
    options: dict[str, Any] = {"batch_max_age_s": 0.05, "stats_interval_s": 0, **settings}
    service = IngestService(IngestSettings.load(None, mqtt=mqtt_settings, sites=sites, client_id=client_id,
                                                **options), store)
    service.start()
    assert service.wait_connected(10), "ingest could not connect to Mosquitto at 127.0.0.1:1883"
    time.sleep(0.2)  # subscriptions granted
    return service


@pytest.fixture
def ingest(mqtt_settings: MqttSettings, site_id: str, store: Store) -> Iterator[IngestService]:
    client_id = f"test-ingest-{site_id}"
    service = start_ingest(mqtt_settings, store, (site_id,), client_id)
    yield service
    service.stop()
    purge_session(mqtt_settings, client_id)


def _telemetry(seq: int, n: int, base: float = 0.0) -> Telemetry:
    return Telemetry(v=1, seq=seq, readings=tuple(
        Reading(ts_ms=T0 + seq * 1000 + i, metric="flow_lps", value=base + i, unit="l/s") for i in range(n)))


def test_good_readings_stored_and_bad_messages_dead_lettered(
    ingest: IngestService, publisher: mqtt.Client, store: Store, site_id: str
) -> None:
    topic = TelemetryTopic(site_id, "gw1", "pump-1").format()
    publisher.publish(topic, encode(_telemetry(0, 50)), qos=1)
    publisher.publish(topic, b'{"v":1,"seq":1,"readings":[{"ts_ms":"soon","metric":"x","value":1}]}', qos=1)
    publisher.publish(topic, b"\xff\xfe not json", qos=1)
    publisher.publish(f"vigil/v1/{site_id}/gw1/bad device/telemetry", encode(_telemetry(2, 1)), qos=1)
    publisher.publish(topic, encode(_telemetry(3, 50, base=100)), qos=1)
    wait_until(lambda: ingest.stats.messages >= 5, what="5 messages through ingest")

    got = store.readings(site_id, "pump-1", "flow_lps", T0, T0 + 10_000, 1000)
    assert [r.ts_ms for r in got] == [T0 + i for i in range(50)] + [T0 + 3000 + i for i in range(50)]
    assert [r.value for r in got] == [float(i) for i in range(50)] + [100.0 + i for i in range(50)]

    letters = [d for d in store.dead_letters(100) if site_id in d.topic]
    reasons = sorted(d.reason for d in letters)
    assert len(letters) == 3, reasons
    assert any("$.readings[0].ts_ms" in r for r in reasons)
    assert any("not valid UTF-8" in r for r in reasons)
    assert any("device id 'bad device' is invalid" in r for r in reasons)
    assert any(d.payload == b"\xff\xfe not json" for d in letters)


def test_status_and_devices_seen(ingest: IngestService, publisher: mqtt.Client, store: Store,
                                 site_id: str) -> None:
    publisher.publish(StatusTopic(site_id, "gw1").format(),
                      encode(Status(v=1, state="online", ts_ms=T0, boot=4)), qos=1, retain=True)
    publisher.publish(TelemetryTopic(site_id, "gw1", "pump-1").format(), encode(_telemetry(0, 3)), qos=1)
    wait_until(lambda: ingest.stats.messages >= 2, what="status and telemetry through ingest")
    agents = [a for a in store.agents() if a.site == site_id]
    assert [(a.agent, a.state, a.boot) for a in agents] == [("gw1", "online", 4)]
    devices = [d for d in store.devices() if d.site == site_id]
    assert [(d.device, d.agent, d.last_seen_ms) for d in devices] == [("pump-1", "gw1", T0 + 2)]
    publisher.publish(StatusTopic(site_id, "gw1").format(), b"", qos=1, retain=True)  # clear retained


def test_restarted_worker_gets_its_queue_back(mqtt_settings: MqttSettings, publisher: mqtt.Client,
                                              store: Store, site_id: str) -> None:
    """A worker that stops returns with the same client id and receives what was published meanwhile."""
    client_id = f"test-ingest-restart-{site_id}"
    first = start_ingest(mqtt_settings, store, (site_id,), client_id, share_group=None)
    first.stop()
    topic = TelemetryTopic(site_id, "gw1", "pump-2").format()
    for seq in range(20):
        publisher.publish(topic, encode(_telemetry(seq, 10)), qos=1).wait_for_publish(5)
    second = start_ingest(mqtt_settings, store, (site_id,), client_id, share_group=None)
    try:
        wait_until(lambda: second.stats.readings >= 200, what="200 queued readings after restart")
    finally:
        second.stop()
        purge_session(mqtt_settings, client_id)
    assert len(store.readings(site_id, "pump-2", "flow_lps", T0, T0 + 100_000, 1000)) == 200
