"""End to end: a simulated fleet → real edge agents → Mosquitto → ingest → store → API.

Every reading the broker acknowledged to an agent must come back from the API with the
same value and timestamp: once through InfluxDB, once through the embedded store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from ingest.store import StoreSettings, open_store
from simulators.fleet import Recorder, build_fleet, plan_fleet
from tests.services import auth_headers, wait_until
from tests.test_ingest import purge_session, start_ingest
from wire import MqttSettings, StatusTopic, parse_topic
from wire.mqtt import make_client


@pytest.mark.parametrize("store_kind", ["embedded", "influx"])
def test_every_published_reading_comes_back_from_the_api(
    store_kind: str, request: pytest.FixtureRequest, mqtt_settings: MqttSettings, site_id: str
) -> None:
    store_settings: StoreSettings = request.getfixturevalue(f"{store_kind}_settings")
    sites = (f"{site_id}a", f"{site_id}b")
    client_id = f"test-e2e-{site_id}"
    store = open_store(store_settings)
    ingest = start_ingest(mqtt_settings, store, sites, client_id)

    plan = plan_fleet(seed=7, devices=24, sites=2, agents_per_site=2, interval_s=0.25, site_ids=sites)
    recorder = Recorder()
    fleet = build_fleet(plan, mqtt_settings, on_acked=recorder)
    stop = threading.Event()
    runner = threading.Thread(target=fleet.run, args=(stop,))
    runner.start()
    try:
        assert fleet.wait_online(10)
        time.sleep(2.5)
    finally:
        stop.set()
        runner.join(20)
    published = recorder.telemetry()
    total = sum(len(m.readings) for _t, m in published)
    assert len({d.kind for d in plan.devices}) >= 4 and total > 500
    try:
        statuses = len(recorder.statuses())  # births and graceful goodbyes
        wait_until(lambda: ingest.stats.readings >= total and ingest.stats.statuses >= statuses, 20,
                   f"{total} readings and {statuses} statuses through ingest")
    finally:
        ingest.stop()
        purge_session(mqtt_settings, client_id)

    expected: dict[tuple[str, str, str], dict[int, object]] = defaultdict(dict)
    for topic, message in published:
        t = parse_topic(topic)
        for r in message.readings:
            expected[(t.site, t.device, r.metric)][r.ts_ms] = r.value  # type: ignore[union-attr]
    api_settings = ApiSettings.load(None, store=store_settings)
    with TestClient(create_app(api_settings, store=store),
                    headers=auth_headers(api_settings.database_url)) as api:
        devices = api.get("/api/v1/devices").json()["devices"]
        assert {(d["site"], d["device"]) for d in devices} == {(s, d) for s, d, _m in expected}
        assert all(d["state"] == "offline" for d in devices)  # the fleet stopped gracefully
        for (site, device, metric), points in expected.items():
            lo, hi = min(points), max(points) + 1
            got = api.get(f"/api/v1/devices/{site}/{device}/readings",
                          params={"metric": metric, "start": lo, "end": hi}).json()
            assert {r["ts_ms"]: r["value"] for r in got["readings"]} == points, (site, device, metric)
    store.close()


@pytest.mark.fault
def test_an_agent_killed_with_sigkill_is_shown_offline_by_the_api(
    embedded_settings: StoreSettings, mqtt_settings: MqttSettings, site_id: str, tmp_path: Path
) -> None:
    """The last will reaches the store through ingest, and replaces the agent's birth."""
    from tests.test_edge import GOOD_CONFIG, write

    store = open_store(embedded_settings)
    client_id = f"test-e2e-kill-{site_id}"
    ingest = start_ingest(mqtt_settings, store, (site_id,), client_id)
    env = {**os.environ, "VIGIL_EDGE_CONFIG": str(write(tmp_path, GOOD_CONFIG.replace("tower-a", site_id))),
           "VIGIL_EDGE_MQTT__HOST": mqtt_settings.host, "VIGIL_EDGE_MQTT__PORT": str(mqtt_settings.port)}
    agent = subprocess.Popen([str(Path(sys.executable).parent / "vigil"), "edge"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        api_settings = ApiSettings.load(None, store=embedded_settings)
        with TestClient(create_app(api_settings, store=store),
                        headers=auth_headers(api_settings.database_url)) as api:
            def state() -> str:
                devices = api.get("/api/v1/devices", params={"site": site_id}).json()["devices"]
                return str(devices[0]["state"]) if devices else "none"

            wait_until(lambda: state() == "online", 15, "the agent's devices online in the API")
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait(10)
            wait_until(lambda: state() == "offline", 15, "the killed agent's devices offline in the API")
            (a,) = api.get("/api/v1/agents", params={"site": site_id}).json()["agents"]
            assert a["state"] == "offline" and a["reason"] == "connection lost"
    finally:
        if agent.poll() is None:
            agent.kill()
        ingest.stop()
        purge_session(mqtt_settings, client_id)
        # The will is retained on the shared broker: clear it.
        clear = make_client(mqtt_settings, f"test-clear-{site_id}")
        clear.connect(mqtt_settings.host, mqtt_settings.port)
        clear.loop_start()
        clear.publish(StatusTopic(site_id, "b1-gw1").format(), b"", qos=1, retain=True).wait_for_publish(5)
        clear.disconnect()
        clear.loop_stop()
        store.close()
