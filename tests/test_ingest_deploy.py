"""deploy/mosquitto.conf as it is shipped: Mosquitto starts with it, and ingest works through it.

``deploy_broker`` starts a private Mosquitto with every setting of the production file,
except what must differ in a test (listener port, access files, paths, logging); the fault
tests use it too.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from ingest.store import StoreSettings, open_store
from tests.services import MosquittoFactory, MosquittoHandle, wait_until
from tests.test_ingest import T0, purge_session, start_ingest
from wire import MqttSettings, Reading, Telemetry, TelemetryTopic, encode
from wire.mqtt import make_client

DEPLOY_CONF = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto.conf"
# Lines of the production file a test replaces: its own listener and log, no password or
# ACL files, persistence in the test's folder.
_REPLACED = {"listener", "allow_anonymous", "password_file", "acl_file", "persistence_location", "log_dest",
             "log_type", "connection_messages", "user"}


def deploy_lines(persistence_dir: Path) -> list[str]:
    lines = []
    for raw in DEPLOY_CONF.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and line.split()[0] not in _REPLACED:
            lines.append(line)
    persistence_dir.mkdir(parents=True, exist_ok=True)
    return [*lines, f"persistence_location {persistence_dir}/"]


def deploy_broker(private_mosquitto: MosquittoFactory, tmp_path: Path) -> MosquittoHandle:
    return private_mosquitto(deploy_lines(tmp_path / "mosquitto-data"))


def test_deploy_conf_keeps_the_settings_this_design_needs() -> None:
    pairs = [line.split() for line in deploy_lines(Path("/x"))]
    settings = {words[0]: words[1] for words in pairs if len(words) > 1}
    assert int(settings["max_queued_messages"]) >= 1_000_000  # Mosquitto's 1,000 drops in seconds
    assert settings["max_inflight_messages"] == "100"  # = ingest batch_max_messages
    assert settings["persistence"] == "true" and settings["set_tcp_nodelay"] == "true"
    assert settings["queue_qos0_messages"] == "false"


def test_ingest_through_the_deploy_config_loses_nothing_beyond_mosquittos_default_queue(
    private_mosquitto: MosquittoFactory, tmp_path: Path
) -> None:
    """3,000 messages published while the only worker is away: Mosquitto's default would keep
    1,000 and drop the rest silently; with deploy/mosquitto.conf all come back to it."""
    _host, port, _stop = deploy_broker(private_mosquitto, tmp_path)
    mq = MqttSettings(port=port)
    site = "deploy" + uuid.uuid4().hex[:6]
    store = open_store(StoreSettings(path=tmp_path / "ts.db"))
    first = start_ingest(mq, store, (site,), "deploy-w1", batch_max_messages=100)
    first.stop()
    pub = make_client(mq, "deploy-pub", max_inflight=1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    topic = TelemetryTopic(site, "gw1", "pump-1").format()
    infos = [pub.publish(topic, encode(Telemetry(v=1, seq=seq, readings=(
        Reading(ts_ms=T0 + seq, metric="flow_lps", value=float(seq)),))), qos=1) for seq in range(3000)]
    for info in infos:
        info.wait_for_publish(30)
    pub.disconnect()
    pub.loop_stop()
    again = start_ingest(mq, store, (site,), "deploy-w1", batch_max_messages=100)
    try:
        wait_until(lambda: again.stats.readings >= 3000, timeout_s=60, what="3,000 queued messages")
    finally:
        again.stop()
        purge_session(mq, "deploy-w1")
    try:
        assert len(store.readings(site, "pump-1", "flow_lps", T0, T0 + 10_000, 10_000)) == 3000
        assert again.stats.dead_letters == 0
    finally:
        store.close()


def test_deploy_broker_restarts_with_its_queue(private_mosquitto: MosquittoFactory, tmp_path: Path) -> None:
    """Persistence: messages queued for a worker survive a clean broker restart."""
    data = tmp_path / "mosquitto-data"
    _host, port, stop = private_mosquitto(deploy_lines(data))
    mq = MqttSettings(port=port)
    site = "persist" + uuid.uuid4().hex[:6]
    store = open_store(StoreSettings(path=tmp_path / "ts.db"))
    start_ingest(mq, store, (site,), "persist-w1").stop()
    pub = make_client(mq, "persist-pub")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    topic = TelemetryTopic(site, "gw1", "pump-1").format()
    for seq in range(50):
        pub.publish(topic, encode(Telemetry(v=1, seq=seq, readings=(
            Reading(ts_ms=T0 + seq, metric="flow_lps", value=1.0),))), qos=1).wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()
    stop()  # SIGTERM: Mosquitto saves its state
    time.sleep(0.2)
    private_mosquitto(deploy_lines(data), port=port)
    again = start_ingest(mq, store, (site,), "persist-w1")
    try:
        wait_until(lambda: again.stats.readings >= 50, timeout_s=30, what="50 messages kept across a restart")
    finally:
        again.stop()
        store.close()


def test_before_the_groups_first_subscription_mosquitto_drops_after_it_queues(
    private_mosquitto: MosquittoFactory, tmp_path: Path
) -> None:
    """Why ingest must start before the agents on a new installation (README, Production
    Mosquitto): what is published while no worker of the group has ever subscribed is
    dropped (with a PUBACK to the publisher); once one has, its persistent session queues
    the group's telemetry even while every worker is down."""
    _host, port, _stop = deploy_broker(private_mosquitto, tmp_path)
    mq = MqttSettings(port=port)
    site = "order" + uuid.uuid4().hex[:6]
    store = open_store(StoreSettings(path=tmp_path / "ts.db"))
    pub = make_client(mq, "order-pub", max_inflight=1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    topic = TelemetryTopic(site, "gw1", "pump-1").format()

    def publish(seqs: range) -> None:
        for info in [pub.publish(topic, encode(Telemetry(v=1, seq=seq, readings=(
                Reading(ts_ms=T0 + seq, metric="flow_lps", value=float(seq)),))), qos=1) for seq in seqs]:
            info.wait_for_publish(10)  # the broker acknowledged every one

    try:
        publish(range(0, 10))  # nobody of the group has subscribed yet
        first = start_ingest(mq, store, (site,), "order-w1")  # waits for its SUBACK
        publish(range(10, 20))
        wait_until(lambda: first.stats.readings >= 10, what="the 10 published after the subscription")
        first.stop()  # the whole group is down now; its session stays
        publish(range(20, 30))
        again = start_ingest(mq, store, (site,), "order-w1")
        wait_until(lambda: again.stats.readings >= 10, what="the 10 queued while the group was down")
        time.sleep(0.5)
        again.stop()
        stored = [int(r.value) for r in store.readings(site, "pump-1", "flow_lps", T0, T0 + 1000, 100)
                  if isinstance(r.value, float)]
        assert stored == list(range(10, 30))  # 0-9 never reached ingest: dropped by the broker
    finally:
        pub.disconnect()
        pub.loop_stop()
        purge_session(mq, "order-w1")
        store.close()
