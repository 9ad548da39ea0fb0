"""`vigil ingest deadletters list|replay` and the API's dead-letter filters, against real servers."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from ingest.service import IngestService
from ingest.store import Store, StoreSettings
from tests.services import auth_headers, wait_until
from tests.test_ingest import publisher, purge_session, start_ingest, store, store_settings
from vigil.cli import main
from wire import MqttSettings, Reading, Telemetry, TelemetryTopic, encode

__all__ = ["publisher", "store", "store_settings"]  # the fixtures, re-used

FUTURE_MS = int(time.time() * 1000) + 3 * 86_400_000  # three days ahead: a wrong clock, by default


def _env(monkeypatch: pytest.MonkeyPatch, mqtt_settings: MqttSettings, settings: StoreSettings) -> None:
    monkeypatch.setenv("VIGIL_INGEST_MQTT__PORT", str(mqtt_settings.port))
    if settings.influx_url:
        monkeypatch.setenv("VIGIL_INGEST_STORE__INFLUX_URL", settings.influx_url)
        monkeypatch.setenv("VIGIL_INGEST_STORE__INFLUX_BUCKET", settings.influx_bucket)
    else:
        monkeypatch.setenv("VIGIL_INGEST_STORE__PATH", str(settings.path))


def test_list_filter_and_replay_once_fixed(
    mqtt_settings: MqttSettings, store: Store, store_settings: StoreSettings, site_id: str,
    publisher: mqtt.Client, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    client_id = f"test-ingest-{site_id}"
    service: IngestService = start_ingest(mqtt_settings, store, (site_id,), client_id)
    topic = TelemetryTopic(site_id, "gw1", "pump-1").format()
    ahead = Telemetry(v=1, seq=1, readings=(Reading(ts_ms=FUTURE_MS, metric="flow_lps", value=7.0),))
    try:
        publisher.publish(topic, encode(ahead), qos=1)
        publisher.publish(topic, b"{truncated", qos=1)
        wait_until(lambda: service.stats.messages >= 2, what="2 bad messages through ingest")
    finally:
        service.stop()

    _env(monkeypatch, mqtt_settings, store_settings)
    prefix = f"vigil/v1/{site_id}/"
    assert main(["ingest", "deadletters", "list", "--topic-prefix", prefix, "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(d["code"] for d in listed) == ["invalid_json", "ts_out_of_window"]
    assert all(d["replayed_ms"] is None and d["id"] for d in listed)

    # Through the API, with the same filters.
    api_settings = ApiSettings.load(None, store=store_settings)
    app = create_app(api_settings, store)
    with TestClient(app, headers=auth_headers(api_settings.database_url)) as api:
        query = {"code": "ts_out_of_window", "topic_prefix": prefix}
        body = api.get("/api/v1/dead-letters", params=query).json()
        [item] = body["dead_letters"]
        assert item["code"] == "ts_out_of_window" and "ahead of now" in item["reason"] and item["id"]
        none = api.get("/api/v1/dead-letters", params={"code": "nothing_like_it"}).json()
        assert none["dead_letters"] == []

    # Fixed: this site's devices may be three days ahead (say, a known clock offset), so a
    # worker with a wider window stores what is replayed.
    fixed = start_ingest(mqtt_settings, store, (site_id,), client_id, ts_max_ahead_s=5 * 86400.0)
    try:
        argv = ["ingest", "deadletters", "replay", "--topic-prefix", prefix, "--code", "ts_out_of_window"]
        assert main(argv) == 0
        assert "1 of 1 dead letter(s) replayed" in capsys.readouterr().out
        wait_until(lambda: fixed.stats.readings >= 1, what="the replayed reading stored")
    finally:
        fixed.stop()
        purge_session(mqtt_settings, client_id)
    [r] = store.readings(site_id, "pump-1", "flow_lps", FUTURE_MS, FUTURE_MS + 1, 10)
    assert r.value == 7.0
    [replayed] = store.dead_letters(10, code="ts_out_of_window", topic_prefix=prefix)
    assert replayed.replayed_ms is not None
    # Replayed letters are skipped the next time, unless --again.
    assert main(["ingest", "deadletters", "replay", "--topic-prefix", prefix, "--dry-run"]) == 0
    assert "1 dead letter(s) to replay" in capsys.readouterr().out  # only the truncated one
    assert main(["ingest", "deadletters", "replay", "--topic-prefix", prefix, "--again", "--dry-run"]) == 0
    assert "2 dead letter(s) to replay" in capsys.readouterr().out
