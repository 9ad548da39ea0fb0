"""End-to-end acknowledgements (wire.agent.Ack): ingest tells each agent what is durable."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from ingest.acks import build_acks, seq_of, to_ranges
from ingest.service import IngestService
from ingest.store import Store, StoreSettings, open_store
from tests.services import wait_until
from tests.test_ingest import _telemetry, publisher, purge_session, start_ingest
from wire import MqttSettings, TelemetryTopic, encode
from wire.agent import MAX_ACK_RANGES, Ack, decode_ack
from wire.mqtt import make_client
from wire.topics import ack_filter


def test_ranges_are_sorted_merged_and_exact() -> None:
    assert to_ranges([]) == []
    assert to_ranges([5, 3, 4, 9, 9, 11, 10, 1]) == [(1, 1), (3, 5), (9, 11)]


def test_one_ack_per_agent_split_at_the_range_limit() -> None:
    stored = {("s", "a"): [1, 2, 3], ("s", "b"): range(0, 2 * (MAX_ACK_RANGES + 5), 2)}
    acks = build_acks(stored, "w1", 1_700_000_000_000)
    by_topic: dict[str, list[Ack]] = {}
    for topic, payload in acks:
        by_topic.setdefault(topic, []).append(decode_ack(payload))
    assert [a.ranges for a in by_topic["vigil/v1/s/a/ack"]] == [((1, 3),)]
    b = by_topic["vigil/v1/s/b/ack"]
    assert [len(a.ranges) for a in b] == [MAX_ACK_RANGES, 5]
    assert all(a.worker == "w1" and a.ts_ms == 1_700_000_000_000 for a in b)


def test_seq_of_a_refused_message() -> None:
    topic = "vigil/v1/s/gw1/pump-1/telemetry"
    assert seq_of(topic, b'{"v":1,"seq":42,"readings":[{"ts_ms":"soon"}]}') == (("s", "gw1"), 42)
    assert seq_of(topic, b"\xff not json") is None
    assert seq_of(topic, b'{"v":1,"seq":-1}') is None
    assert seq_of("vigil/v1/s/gw1/status", b'{"seq":1}') is None
    assert seq_of("not/a/topic", b'{"seq":1}') is None


AcksSeen = tuple[list[tuple[str, Ack]], threading.Lock]


@pytest.fixture
def acks_seen(mqtt_settings: MqttSettings, site_id: str) -> Iterator[AcksSeen]:
    """Every Ack the broker delivers for the test's site, as an agent would receive them."""
    got: list[tuple[str, Ack]] = []
    lock = threading.Lock()
    subscribed = threading.Event()
    c = make_client(mqtt_settings, f"test-acks-{uuid.uuid4().hex[:8]}")

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.append((msg.topic, decode_ack(bytes(msg.payload))))

    c.on_message = on_message
    c.on_subscribe = lambda *_a: subscribed.set()
    c.connect(mqtt_settings.host, mqtt_settings.port)
    c.loop_start()
    c.subscribe(ack_filter(site_id), 1)
    assert subscribed.wait(5), "the ack subscription was not granted by Mosquitto"
    yield got, lock
    c.disconnect()
    c.loop_stop()


__all__ = ["publisher"]  # a fixture


@pytest.fixture
def store(embedded_settings: StoreSettings) -> Iterator[Store]:
    s = open_store(embedded_settings)
    yield s
    s.close()


def test_stored_and_dead_lettered_telemetry_is_acked_per_agent(
    mqtt_settings: MqttSettings, publisher: mqtt.Client, store: Store, site_id: str,
    acks_seen: AcksSeen,
) -> None:
    got, lock = acks_seen
    client_id = f"test-ingest-acks-{site_id}"
    service: IngestService = start_ingest(mqtt_settings, store, (site_id,), client_id,
                                          batch_max_messages=1000, batch_max_age_s=0.2)
    try:
        t1 = TelemetryTopic(site_id, "gw1", "pump-1").format()
        t2 = TelemetryTopic(site_id, "gw2", "pump-9").format()
        for seq in range(0, 40):
            publisher.publish(t1, encode(_telemetry(seq, 3)), qos=1)
        publisher.publish(t1, b'{"v":1,"seq":40,"readings":[{"ts_ms":"soon","metric":"x","value":1}]}', qos=1)
        publisher.publish(t1, b"\xff garbage without a seq", qos=1)
        for seq in (100, 101, 103):
            publisher.publish(t2, encode(_telemetry(seq, 1)), qos=1)

        def covered(agent: str, seqs: range | tuple[int, ...]) -> bool:
            with lock:
                acks = [a for topic, a in got if topic == f"vigil/v1/{site_id}/{agent}/ack"]
            return all(any(a.covers(s) for a in acks) for s in seqs)

        wait_until(lambda: covered("gw1", range(0, 41)) and covered("gw2", (100, 101, 103)), what="acks")
        with lock:
            gw1 = [a for topic, a in got if topic.endswith("/gw1/ack")]
            gw2 = [a for topic, a in got if topic.endswith("/gw2/ack")]
        # Only what was sent, and coalesced: far fewer acks than messages.
        assert not any(a.covers(s) for a in gw2 for s in (102, 99, 104))
        assert not any(a.covers(41) for a in gw1)
        assert len(gw1) < 20, f"{len(gw1)} acks for 41 messages: not coalesced per batch"
        assert all(a.worker == client_id for a in gw1 + gw2)
        # An ack leaves only after the data is durable.
        assert len(store.readings(site_id, "pump-1", "flow_lps", 0, 2**62, 1000)) == 120
        assert any(d.topic == t1 and b'"seq":40' in d.payload for d in store.dead_letters(100))
    finally:
        service.stop()
        purge_session(mqtt_settings, client_id)
