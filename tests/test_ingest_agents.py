"""Births, unknown devices and agent health through the real Mosquitto (ingest.births)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from ingest.births import Births
from ingest.service import IngestService
from ingest.store import Store, StoreSettings, open_store
from ingest.validate import Code
from tests.services import wait_until
from tests.test_ingest import _telemetry, publisher, purge_session, start_ingest
from wire import MqttSettings, Status, StatusTopic, TelemetryTopic, encode
from wire.agent import AgentHealth, DeviceHealth
from wire.topics import HealthTopic

__all__ = ["publisher"]  # a fixture

NOW_MS = int(time.time() * 1000)


def test_births_latest_wins_and_an_unknown_agent_is_accepted() -> None:
    births = Births()
    t = TelemetryTopic("s", "gw1", "pump-9")
    assert births.unknown_device(t) is None  # no birth known: accepted
    births.update(StatusTopic("s", "gw1"), Status(v=1, state="online", ts_ms=NOW_MS, boot=2,
                                                   devices={"pump-1": "pump"}))
    reason = births.unknown_device(t)
    assert reason is not None and "'pump-9'" in reason and "pump-1" in reason and "boot 2" in reason
    assert births.unknown_device(TelemetryTopic("s", "gw1", "pump-1")) is None
    # A will (no device list) and an older birth change nothing.
    births.update(StatusTopic("s", "gw1"), Status(v=1, state="offline", ts_ms=NOW_MS, boot=2))
    births.update(StatusTopic("s", "gw1"), Status(v=1, state="online", ts_ms=NOW_MS - 1, boot=1,
                                                   devices={"pump-9": "pump"}))
    assert births.unknown_device(t) is not None
    # A newer birth announcing it, and one announcing nothing (accept all), do.
    births.update(StatusTopic("s", "gw1"), Status(v=1, state="online", ts_ms=NOW_MS + 1, boot=3,
                                                   devices={"pump-9": "pump"}))
    assert births.unknown_device(t) is None
    births.update(StatusTopic("s", "gw1"), Status(v=1, state="online", ts_ms=NOW_MS + 2, boot=4))
    assert births.devices("s", "gw1") is None
    assert births.unknown_device(TelemetryTopic("s", "gw1", "x")) is None


@pytest.fixture
def stores(embedded_settings: StoreSettings) -> Iterator[list[Store]]:
    opened = [open_store(embedded_settings), open_store(embedded_settings)]
    yield opened
    for s in opened:
        s.close()


def test_unknown_devices_are_dead_lettered_by_every_worker_and_health_is_stored(
    mqtt_settings: MqttSettings, publisher: mqtt.Client, stores: list[Store], site_id: str
) -> None:
    ids = [f"test-ingest-agents-{site_id}-{i}" for i in range(2)]
    workers: list[IngestService] = [start_ingest(mqtt_settings, s, (site_id,), i, batch_max_messages=1000,
                                                 accounting_interval_s=0.2)
                                    for s, i in zip(stores, ids, strict=True)]
    try:
        publisher.publish(StatusTopic(site_id, "gw1").format(), encode(Status(
            v=1, state="online", ts_ms=NOW_MS, boot=5, devices={"pump-1": "pump"})), qos=1, retain=True)
        wait_until(lambda: all(w._births.devices(site_id, "gw1") for w in workers),
                   what="the birth at both workers")
        for seq in range(40):  # both workers get some: each refuses pump-2 itself
            device = "pump-1" if seq % 2 == 0 else "pump-2"
            topic = TelemetryTopic(site_id, "gw1", device).format()
            publisher.publish(topic, encode(_telemetry(seq, 2)), qos=1)
        stranger = TelemetryTopic(site_id, "gw7", "any-device").format()
        publisher.publish(stranger, encode(_telemetry(0, 2)), qos=1)
        health = AgentHealth(v=1, ts_ms=NOW_MS, boot=5, outbox_depth=3, outbox_bytes=900,
                             oldest_unacked_age_s=0.4, dropped=0, poll_errors=1, publish_p99_s=0.02,
                             devices={"pump-1": DeviceHealth(state="online", since_ms=NOW_MS - 5000)})
        publisher.publish(HealthTopic(site_id, "gw1").format(), encode(health), qos=1, retain=True)
        wait_until(lambda: sum(w.stats.messages for w in workers) >= 2 + 41 + 2, what="all messages through")
        assert all(w.stats.messages > 2 for w in workers), "the shared group did not split the telemetry"
        store = stores[0]
        letters = [d for d in store.dead_letters(100) if f"/{site_id}/" in d.topic]
        assert len(letters) == 20 and {d.code for d in letters} == {Code.UNKNOWN_DEVICE}
        assert all("'pump-2'" in d.reason and "pump-1" in d.reason for d in letters)
        assert len(store.readings(site_id, "pump-1", "flow_lps", 0, 2**62, 1000)) == 40
        assert len(store.readings(site_id, "any-device", "flow_lps", 0, 2**62, 1000)) == 2  # no birth: kept
        assert [r.health for r in store.agent_health() if r.site == site_id] == [health]
        # Refused messages count as received: they leave no sequence gap.
        wait_until(lambda: all(not a.open_gaps for w in workers for a in w.snapshot().agents.values()),
                   what="no open gaps")

        # Each worker's accounting reaches the store for the API; together they saw everything.
        def tallies() -> dict[str, list[int]]:
            rows = [t for t in store.accounting() if (t.site, t.agent) == (site_id, "gw1")]
            return {"received": [t.received_messages for t in rows],
                    "unknown": [t.dead_letters.get(Code.UNKNOWN_DEVICE, 0) for t in rows]}

        wait_until(lambda: sum(tallies()["received"]) == 40 and sum(tallies()["unknown"]) == 20,
                   what="both workers' accounting in the store")
        assert len(tallies()["received"]) == 2
    finally:
        for w in workers:
            w.stop()
        for i in ids:
            purge_session(mqtt_settings, i)
        for topic in (StatusTopic(site_id, "gw1").format(), HealthTopic(site_id, "gw1").format()):
            publisher.publish(topic, b"", qos=1, retain=True)  # clear the retained messages
