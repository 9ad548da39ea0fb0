"""How ingest sorts the store's refusals (Telegraf's way), and what it exposes on /metrics and /healthz.

Real servers: the shared Mosquitto, the session's InfluxDB behind nginx (whose
``/_answer_<code>`` fronts answer as an overloaded or misconfigured proxy does), and, for
401, a small local HTTP server that answers as InfluxDB does to a bad token.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from ingest.store import DeadLetter, Store, StoreSettings, open_store
from ingest.store.influx import InfluxStore
from tests.services import InfluxServer, wait_until
from tests.test_ingest import T0, publisher, purge_session, start_ingest
from wire import MqttSettings, Reading, Telemetry, TelemetryTopic, encode

__all__ = ["publisher"]  # the fixture, re-used


def _message(seq: int, metrics: Sequence[str]) -> bytes:
    return encode(Telemetry(v=1, seq=seq, readings=tuple(
        Reading(ts_ms=T0 + seq * 1000 + i, metric=m, value=float(seq * 10 + i))
        for i, m in enumerate(metrics))))


class LettersElsewhere:
    """Readings to one InfluxStore, dead letters to another (both real servers): so a test can
    watch what ingest does when data writes are refused while dead letters still land."""

    def __init__(self, data: Store, letters: Store) -> None:
        self.data, self.letters = data, letters

    def __getattr__(self, name: str) -> object:
        return getattr(self.data, name)

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.write_dead_letters(letters)


def test_field_type_conflict_dead_letters_only_the_refused_readings(
    mqtt_settings: MqttSettings, influxdb: InfluxServer, influx_settings: StoreSettings, site_id: str,
    publisher: mqtt.Client,
) -> None:
    """InfluxDB 1.x answers 400 "partial write: field type conflict" naming no line: ingest halves the
    write until the refused readings stand alone, dead-letters them, and stores every other one."""
    # Another writer made flow_lps.value a string in this shard.
    r = httpx.post(f"{influxdb.url}/write", params={"db": influx_settings.influx_bucket, "precision": "ms"},
                   content=f'flow_lps,device=pump-1,site={site_id} value="broken" {T0}')
    assert r.status_code == 204, r.text
    store = open_store(influx_settings)
    service = start_ingest(mqtt_settings, store, (site_id,), f"test-ingest-{site_id}", batch_max_age_s=0.3)
    try:
        topic = TelemetryTopic(site_id, "gw1", "pump-1").format()
        for seq, metrics in enumerate([("temp", "pressure"), ("temp", "flow_lps", "pressure"), ("temp",)]):
            publisher.publish(topic, _message(seq, metrics), qos=1)
        wait_until(lambda: service.stats.messages >= 3, what="3 messages through ingest")
    finally:
        service.stop()
        purge_session(mqtt_settings, f"test-ingest-{site_id}")
    try:
        temps = store.readings(site_id, "pump-1", "temp", T0, T0 + 10_000, 100)
        assert [x.value for x in temps] == [0.0, 10.0, 20.0]
        pressures = store.readings(site_id, "pump-1", "pressure", T0, T0 + 10_000, 100)
        assert [x.value for x in pressures] == [1.0, 12.0]
        [letter] = [d for d in store.dead_letters(10) if site_id in d.topic]
        assert letter.code == "store_refused" and "field type conflict" in letter.reason
        refused = Telemetry(v=1, seq=1, readings=(Reading(ts_ms=T0 + 1001, metric="flow_lps", value=11.0),))
        assert letter.payload == encode(refused)
        assert service.stats.refused_splits >= 1
    finally:
        store.close()


def test_413_splits_down_to_single_readings(
    mqtt_settings: MqttSettings, influxdb: InfluxServer, influx_settings: StoreSettings, site_id: str,
    publisher: mqtt.Client,
) -> None:
    too_large = InfluxStore(StoreSettings(influx_url=f"{influxdb.url}/_answer_413",
                                          influx_bucket=influx_settings.influx_bucket))
    letters = open_store(influx_settings)
    store = LettersElsewhere(too_large, letters)
    service = start_ingest(mqtt_settings, store, (site_id,), f"test-ingest-{site_id}",  # type: ignore[arg-type]
                           batch_max_age_s=0.3)
    try:
        topic = TelemetryTopic(site_id, "gw1", "pump-1").format()
        publisher.publish(topic, _message(0, ("a", "b", "c")), qos=1)
        publisher.publish(topic, _message(1, ("a", "b")), qos=1)
        wait_until(lambda: service.stats.messages >= 2, what="2 messages through ingest")
    finally:
        service.stop()
        purge_session(mqtt_settings, f"test-ingest-{site_id}")
        too_large.close()
    try:
        found = [d for d in letters.dead_letters(20) if site_id in d.topic]
        assert len(found) == 5 and all(d.code == "store_refused" and "HTTP 413" in d.reason for d in found)
        assert sorted(len(d.payload) > 0 for d in found) == [True] * 5
    finally:
        letters.close()


class _Unauthorized(http.server.BaseHTTPRequestHandler):
    """InfluxDB with auth on, to a client whose token it refuses: queries pass (as for a read-only
    token), writes get 401."""

    def do_GET(self) -> None:
        self._answer(200 if self.path.startswith("/ping") else 401)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(200 if self.path.startswith("/query") else 401)

    def _answer(self, code: int) -> None:
        body = b'{"results":[{}]}' if code == 200 else b'{"error":"authorization failed"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # the stdlib's parameter name
        pass


@pytest.fixture
def unauthorized_influx() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_401_keeps_the_data_stops_acking_and_alerts(
    mqtt_settings: MqttSettings, unauthorized_influx: str, site_id: str, publisher: mqtt.Client,
    caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    store = InfluxStore(StoreSettings(influx_url=unauthorized_influx, influx_bucket="vigil"))
    client_id = f"test-ingest-{site_id}"
    service = start_ingest(mqtt_settings, store, (site_id,), client_id, metrics_port=0, retry_initial_s=0.1)
    try:
        publisher.publish(TelemetryTopic(site_id, "gw1", "pump-1").format(), _message(0, ("a",)), qos=1)
        wait_until(lambda: service.stats.write_retries >= 2, what="ingest retrying the refused write")
        health = httpx.get(f"http://127.0.0.1:{service.metrics_port}/healthz")
        assert health.status_code == 503 and "HTTP 401" in health.json()["reason"]
        metrics = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics").text
        assert "vigil_ingest_store_unauthorized 1.0" in metrics and "vigil_ingest_store_up 0.0" in metrics
        assert f'vigil_ingest_agent_received_messages_total{{agent="gw1",site="{site_id}"}} 1.0' in metrics
        assert any(r.levelname == "CRITICAL" and "ALERT" in r.getMessage() for r in caplog.records)
        assert service.stats.messages == 0 and service.stats.dead_letters == 0  # kept, not acked
    finally:
        service.stop(drain_s=0.2)
        store.close()
    # The message is still with the broker: a worker with the same id and a good store gets it.
    good = open_store(StoreSettings(path=tmp_path / "ts.db"))
    again = start_ingest(mqtt_settings, good, (site_id,), client_id)
    try:
        wait_until(lambda: again.stats.readings >= 1, what="the kept message, credentials fixed")
    finally:
        again.stop()
        purge_session(mqtt_settings, client_id)
        good.close()


def test_503_is_retried_and_shown_on_healthz(
    mqtt_settings: MqttSettings, influxdb: InfluxServer, site_id: str, publisher: mqtt.Client,
) -> None:
    store = InfluxStore(StoreSettings(influx_url=f"{influxdb.url}/_answer_503", influx_bucket="vigil"))
    service = start_ingest(mqtt_settings, store, (site_id,), f"test-ingest-{site_id}", metrics_port=0,
                           retry_initial_s=0.1)
    try:
        publisher.publish(TelemetryTopic(site_id, "gw1", "pump-1").format(), _message(0, ("a",)), qos=1)
        wait_until(lambda: service.stats.write_retries >= 2, what="ingest retrying")
        health = httpx.get(f"http://127.0.0.1:{service.metrics_port}/healthz")
        assert health.status_code == 503 and "HTTP 503" in health.json()["reason"]
        assert service.stats.dead_letters == 0
        time.sleep(0.1)
    finally:
        service.stop(drain_s=0.2)
        purge_session(mqtt_settings, f"test-ingest-{site_id}")
        store.close()


def test_retry_until_written_backs_off_honours_retry_after_and_reports() -> None:
    from ingest.store import StoreError
    from ingest.write_errors import RetryPolicy, StoreState, retry_until_written

    errors = [StoreError("overloaded", retryable=True, status=429, retry_after_s=5.0),
              StoreError("bad gateway", retryable=True, status=502),
              StoreError("token refused", retryable=True, status=401)]
    waits: list[float] = []
    states: list[StoreState] = []

    def attempt() -> None:
        if errors:
            raise errors.pop(0)

    def wait(seconds: float, _now: float) -> bool:
        waits.append(seconds)
        return True

    policy = RetryPolicy(initial_s=0.5, max_s=1.5, auth_alert_interval_s=60)
    assert retry_until_written(attempt, policy, clock=lambda: 0.0, wait=wait, report=states.append)
    assert waits == [5.0, 1.0, 1.5]  # Retry-After wins, then doubling up to max_s
    assert [s.ok for s in states] == [False, False, False, True]
    assert states[2].unauthorized and "token refused" in states[2].problem

    def give_up(_seconds: float, _now: float) -> bool:
        return False

    def always() -> None:
        raise StoreError("down", retryable=True, status=503)

    assert not retry_until_written(always, policy, clock=lambda: 0.0, wait=give_up, report=states.append)
