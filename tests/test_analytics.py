"""Analytics: the sans-IO engine on synthetic faults, the anomaly tables on SQLite and
PostgreSQL, and the whole path on the real Mosquitto: telemetry → detectors → one fused
anomaly → stored and published on ``_alarm`` → listed by the API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from analytics import db
from analytics.engine import Emitted, kind_of
from analytics.engine import Engine as AnalyticsEngine
from analytics.service import AnalyticsService, open_engine
from analytics.settings import AnalyticsSettings, DetectSettings
from api.main import create_app
from api.settings import ApiSettings
from ingest.store import StoreSettings, open_store
from tests.services import auth_headers, fresh_database
from wire import MqttSettings, Reading, Status, StatusTopic, Telemetry, TelemetryTopic, encode
from wire.anomaly import decode_anomaly
from wire.mqtt import make_client
from wire.topics import alarm_filter

T0 = 1_795_000_000_000


def pump_readings(rng: np.random.Generator, n: int, start_ms: int, step_ms: int = 10_000,
                  vibration: float = 1.5) -> list[tuple[int, str, float]]:
    out = []
    for k in range(n):
        ts = start_ms + k * step_ms
        out += [(ts, "vibration_mm_s", vibration + rng.normal(0, 0.1)),
                (ts, "flow_lps", 12.0 + rng.normal(0, 0.2)),
                (ts, "bearing_temp_c", 45.0 + rng.normal(0, 0.2))]
    return out


def feed(engine: AnalyticsEngine, rows: list[tuple[int, str, float]], device: str = "pump-03",
         site: str = "tower-a") -> list[Emitted]:
    sid = np.array([engine.series(site, device, m, "mm/s" if m.startswith("vib") else None, "gw1")
                    for _, m, _ in rows], np.int64)
    return engine.process(sid, np.array([t for t, _, _ in rows], np.int64),
                          np.array([v for _, _, v in rows], np.float64))


def test_rate_of_change_is_judged_over_a_minute_not_between_noisy_neighbours() -> None:
    """Space temperature at 1 s: quantised noise of 0.1 degC is not 'changing 6 degC a minute',
    while a real climb of 10 degC a minute is caught."""
    rng = np.random.default_rng(3)
    engine = AnalyticsEngine(DetectSettings())
    quiet = [(T0 + k * 1000, "temp_c", round(21 + rng.normal(0, 0.08), 1)) for k in range(600)]
    assert feed(engine, quiet, device="space-sensor-01") == []
    t1 = T0 + 600_000
    climb = [(t1 + k * 1000, "temp_c", round(21 + k / 6, 1)) for k in range(180)]
    events = [e.anomaly for e in feed(engine, climb, device="space-sensor-01")]
    # One anomaly (the baseline sees it first); the rate rule joins it within two minutes.
    assert events[0].state == "open" and len({a.id for a in events}) == 1
    rate = [a for a in events if "threshold" in a.detectors]
    assert rate and rate[0].ts_ms - t1 <= 125_000


def test_kind_of() -> None:
    assert kind_of("pump-03") == "pump"
    assert kind_of("power-meter-12") == "power_meter"
    assert kind_of("space-sensor-1") == "space_sensor"
    assert kind_of("lobby") == "equipment"


def test_one_fault_gives_one_anomaly_that_opens_and_clears() -> None:
    rng = np.random.default_rng(1)
    engine = AnalyticsEngine(DetectSettings())
    assert feed(engine, pump_readings(rng, 120, T0)) == []
    fault = pump_readings(rng, 40, T0 + 120 * 10_000, vibration=7.9)
    events = feed(engine, fault)
    opened = [e for e in events if e.anomaly.state == "open"]
    assert len(opened) == 1, [e.anomaly for e in events]
    a = opened[0].anomaly
    assert (opened[0].site, opened[0].device) == ("tower-a", "pump-03")
    assert a.fault == "vibration_mm_s_high" and a.kind == "pump" and a.agent == "gw1"
    assert "vibration_mm_s" in a.metrics and "baseline" in a.detectors
    assert a.severity in ("major", "critical")
    assert a.summary.startswith("Pump pump-03 vibration_mm_s 7.9"), a.summary
    assert "normal 1.5" in a.summary and "mm/s" in a.summary
    assert abs(a.expected["vibration_mm_s"] - 1.5) < 0.2 and abs(a.observed["vibration_mm_s"] - 7.9) < 0.5
    # the rule joins after its minimum duration: an update, not a second anomaly
    assert all(e.anomaly.id == a.id for e in events)
    assert any(e.anomaly.state == "updated" and "threshold" in e.anomaly.detectors for e in events)
    events = feed(engine, pump_readings(rng, 40, T0 + 160 * 10_000))
    assert [e.anomaly.state for e in events] == ["cleared"]
    cleared = events[0].anomaly
    assert cleared.id == a.id and cleared.cleared_ms is not None and "back to normal" in cleared.summary


def test_replaying_the_same_readings_gives_the_same_events() -> None:
    rows = pump_readings(np.random.default_rng(2), 100, T0) + pump_readings(
        np.random.default_rng(3), 30, T0 + 100 * 10_000, vibration=9.0)
    first = [e.anomaly for e in feed(AnalyticsEngine(DetectSettings()), rows)]
    second = [e.anomaly for e in feed(AnalyticsEngine(DetectSettings()), list(reversed(rows)))]
    assert first and first == second  # batch order does not matter: rounds are in time order


def test_score_before_learning_and_no_learning_from_anomalies() -> None:
    rng = np.random.default_rng(4)
    engine = AnalyticsEngine(DetectSettings())
    feed(engine, pump_readings(rng, 100, T0))
    events = feed(engine, pump_readings(rng, 300, T0 + 100 * 10_000, vibration=3.0))
    # 300 readings of a new level: the anomaly stays one anomaly, the baseline barely moved
    assert len([e for e in events if e.anomaly.state == "open"]) == 1
    sid = engine.lookup("tower-a", "pump-03", "vibration_mm_s")
    assert sid is not None
    mean, _sd = engine._baseline.expected(sid, T0)
    assert mean < 2.6


def test_stuck_sensor() -> None:
    rng = np.random.default_rng(5)
    engine = AnalyticsEngine(DetectSettings())
    feed(engine, pump_readings(rng, 100, T0))
    rows = [(T0 + (100 + k) * 10_000, "bearing_temp_c", 45.1) for k in range(60)]
    events = feed(engine, rows)
    assert [(e.anomaly.state, e.anomaly.fault) for e in events][:1] == [("open", "sensor_stuck")]
    assert "unchanged for" in events[0].anomaly.summary


def test_out_of_range_and_rate_rule() -> None:
    engine = AnalyticsEngine(DetectSettings())
    rows = [(T0 + k * 60_000, "rh_pct", 40.0 + (k % 3) * 0.1) for k in range(50)]
    feed(engine, rows, device="space-sensor-01")
    events = feed(engine, [(T0 + (50 + k) * 60_000, "rh_pct", 130.0) for k in range(3)],
                  device="space-sensor-01")
    assert events and events[0].anomaly.fault == "sensor_out_of_range"
    assert "physical range" in events[0].anomaly.summary


def test_seasonal_baseline_makes_the_daily_start_normal() -> None:
    """A chiller that starts at 08:00 every day: anomalous the first days, normal after."""
    engine = AnalyticsEngine(DetectSettings())
    rng = np.random.default_rng(6)
    day0 = T0 - T0 % 86_400_000
    opened_on: list[int] = []
    for day in range(12):
        rows = []
        for minute in range(0, 1440, 5):
            ts = day0 + day * 86_400_000 + minute * 60_000
            on = 8 * 60 <= minute < 18 * 60
            rows.append((ts, "power_kw", (300.0 if on else 20.0) + rng.normal(0, 3)))
        opened_on += [day for e in feed(engine, rows, device="chiller-01") if e.anomaly.state == "open"]
    assert opened_on and max(opened_on) <= 6, opened_on  # learnt by the second week


def test_late_data_and_agent_offline() -> None:
    engine = AnalyticsEngine(DetectSettings())
    feed(engine, pump_readings(np.random.default_rng(7), 20, T0))
    last = T0 + 19 * 10_000
    assert engine.tick(last + 60_000) == []
    late = engine.tick(last + 200_000)
    assert [(e.anomaly.fault, e.anomaly.state) for e in late] == [("data_missing", "open")]
    off = engine.agent_status("tower-a", "gw1", False, last + 210_000)
    assert [(e.anomaly.fault, e.anomaly.state) for e in off] == [("data_missing", "cleared"),
                                                                  ("device_offline", "open")]
    assert "offline" in off[1].anomaly.summary
    on = engine.agent_status("tower-a", "gw1", True, last + 300_000)
    assert [(e.anomaly.fault, e.anomaly.state) for e in on] == [("device_offline", "cleared")]


def test_multivariate_model_trains_then_scores() -> None:
    """Flow and current move together; a pump whose current rises without flow is unusual."""
    cfg = DetectSettings(model_warmup_rows=200, model_min_span_s=1800, z_fire=50.0)  # only the model sees it
    engine = AnalyticsEngine(cfg)
    rng = np.random.default_rng(8)
    rows = []
    for k in range(400):
        load = 0.5 + 0.4 * np.sin(k / 20)
        rows += [(T0 + k * 10_000, "flow_lps", 20 * load + rng.normal(0, 0.1)),
                 (T0 + k * 10_000, "motor_current_a", 30 * load + rng.normal(0, 0.15))]
    assert [e for e in feed(engine, rows) if e.anomaly.state == "open"] == []
    model = engine.models.models()["pump"]
    assert model.version == 1 and model.columns == ["flow_lps", "motor_current_a"]
    rows = []
    for k in range(400, 420):
        load = 0.5 + 0.4 * np.sin(k / 20)
        rows += [(T0 + k * 10_000, "flow_lps", 20 * load),
                 (T0 + k * 10_000, "motor_current_a", 30 * load + 6)]
    opened = [e.anomaly for e in feed(engine, rows) if e.anomaly.state == "open"]
    assert [a.fault for a in opened] == ["behaviour_unusual"] and opened[0].detectors == ("model",)


# -- the anomaly tables, on SQLite and PostgreSQL ------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path, "t_analytics") as url:
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Engine]:
    e = open_engine(database_url)
    yield e
    e.dispose()


def _lifecycle() -> list[Emitted]:
    rng = np.random.default_rng(9)
    engine = AnalyticsEngine(DetectSettings())
    events = feed(engine, pump_readings(rng, 100, T0))
    events += feed(engine, pump_readings(rng, 40, T0 + 100 * 10_000, vibration=8.0))
    events += feed(engine, pump_readings(rng, 40, T0 + 140 * 10_000))
    events += feed(engine, pump_readings(rng, 100, T0, vibration=1.0), device="pump-04", site="tower-b")
    return events


def test_lifecycle_persisted_idempotently(database: Engine) -> None:
    events = _lifecycle()
    assert events[0].anomaly.state == "open" and events[-1].anomaly.state == "cleared"
    for e in reversed(events):  # out of order and twice: the cleared state wins
        db.save(database, e.site, e.device, e.anomaly)
    assert all(not db.save(database, e.site, e.device, e.anomaly) for e in events)
    rows = db.list_anomalies(database, db.Query())
    assert len(rows) == 1 and rows[0].state == "cleared" and rows[0].device == "pump-03"
    found = db.get_anomaly(database, rows[0].id)
    assert found is not None
    assert found[1][0].state == "open" and found[1][-1].state == "cleared"
    assert db.list_anomalies(database, db.Query(states=("open", "updated"))) == []
    assert db.list_anomalies(database, db.Query(site="tower-b")) == []
    assert db.list_anomalies(database, db.Query(until_ms=T0)) == []
    assert len(db.list_anomalies(database, db.Query(since_ms=T0, until_ms=T0 + 200 * 10_000))) == 1
    # a second upgrade is a no-op: the version table is analytics' own
    db.upgrade(database)
    with database.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version_analytics")).scalar() == "a0002"


# -- end to end on the real Mosquitto --------------------------------------------------------------

def _publish(client: mqtt.Client, site: str, device: str, rows: list[tuple[int, str, float]],
             seq: int) -> None:
    by_ts: dict[int, list[Reading]] = {}
    for ts, metric, value in rows:
        by_ts.setdefault(ts, []).append(Reading(ts_ms=ts, metric=metric, value=round(value, 3),
                                                unit="mm/s" if metric.startswith("vib") else None))
    for k, (_ts, readings) in enumerate(sorted(by_ts.items())):
        msg = Telemetry(v=1, seq=seq + k, readings=tuple(readings))
        client.publish(TelemetryTopic(site, "gw1", device).format(), encode(msg), qos=1).wait_for_publish(5)


@pytest.mark.timeout(120)
def test_end_to_end_on_mosquitto(mqtt_settings: MqttSettings, site_id: str, tmp_path: Path,
                                 database_url: str) -> None:
    settings = AnalyticsSettings.load(None, mqtt=mqtt_settings, sites=(site_id,), share_group=None,
                                      client_id=f"test-analytics-{site_id}", database_url=database_url,
                                      tick_s=0.5, stats_interval_s=0, model_dir=tmp_path / "models")
    received: list[tuple[str, bytes]] = []
    got = threading.Event()
    sub = make_client(mqtt_settings, f"test-alarm-{site_id}")

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append((msg.topic, bytes(msg.payload)))
        got.set()

    sub.on_message = on_message
    sub.connect(mqtt_settings.host, mqtt_settings.port)
    sub.subscribe(alarm_filter(site_id), qos=1)
    sub.loop_start()
    pub = make_client(mqtt_settings, f"test-pub-{site_id}")
    pub.connect(mqtt_settings.host, mqtt_settings.port)
    pub.loop_start()
    service = AnalyticsService(settings)
    service.start()
    try:
        assert service.wait_connected(10), "analytics could not connect to Mosquitto at 127.0.0.1:1883"
        time.sleep(0.3)
        # a bad message costs only itself
        pub.publish(TelemetryTopic(site_id, "gw1", "pump-03").format(), b'{"v":1}', qos=1).wait_for_publish(5)
        rng = np.random.default_rng(10)
        t0 = int(time.time() * 1000) - 112 * 10_000  # edge times up to now: no data is late
        _publish(pub, site_id, "pump-03", pump_readings(rng, 100, t0), 0)
        _publish(pub, site_id, "pump-03", pump_readings(rng, 12, t0 + 100 * 10_000, vibration=7.9), 100)
        assert got.wait(20), "no anomaly was published on the _alarm topic"
        time.sleep(0.5)
        topic, payload = received[0]
        assert topic == f"vigil/v1/{site_id}/_alarm/pump-03"
        a = decode_anomaly(payload)
        assert a.state == "open" and a.fault == "vibration_mm_s_high"
        assert [decode_anomaly(p).state for _, p in received].count("open") == 1
        assert service.stats.bad == 1
        # the agent's last will: its devices are offline
        pub.publish(StatusTopic(site_id, "gw1").format(),
                    encode(Status(v=1, state="offline", ts_ms=t0 + 200 * 10_000, reason="connection lost")),
                    qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                decode_anomaly(p).fault == "device_offline" for _, p in received):
            time.sleep(0.05)
        assert any(decode_anomaly(p).fault == "device_offline" for _, p in received)
    finally:
        service.stop()
        pub.loop_stop()
        pub.disconnect()
        sub.loop_stop()
        sub.disconnect()
    api_settings = ApiSettings.load(None, database_url=database_url,
                                    store=StoreSettings(path=tmp_path / "ts.db"))
    store = open_store(api_settings.store)
    try:
        with TestClient(create_app(api_settings, store), headers=auth_headers(database_url)) as client:
            r = client.get("/api/v1/anomalies", params={"site": site_id, "state": "open,updated"})
            assert r.status_code == 200, r.text
            body = r.json()
            faults = sorted(x["fault"] for x in body["anomalies"])
            assert faults == ["device_offline", "vibration_mm_s_high"], body
            vib = next(x for x in body["anomalies"] if x["fault"] == "vibration_mm_s_high")
            assert vib["device"] == "pump-03" and vib["summary"].startswith("Pump pump-03 vibration_mm_s ")
            r = client.get("/api/v1/anomalies", params={"site": site_id, "limit": 1})
            assert len(r.json()["anomalies"]) == 1 and r.json()["next_offset"] == 1
            detail = client.get(f"/api/v1/anomalies/{vib['id']}").json()
            assert detail["history"][0]["state"] == "open"
            assert client.get("/api/v1/anomalies/an-nope").status_code == 404
            bad = client.get("/api/v1/anomalies", params={"severity": "huge"})
            assert bad.status_code == 422 and "severity" in bad.json()["detail"]
            bad = client.get("/api/v1/anomalies", params={"since": "2026-01-01T00:00:00"})
            assert bad.status_code == 422 and "offset" in bad.json()["detail"]
    finally:
        store.close()


# -- offline replay ------------------------------------------------------------------------------


def test_replay_writes_detections_mirroring_the_input(tmp_path: Path) -> None:
    from vigil.cli import main

    rng = np.random.default_rng(11)
    nab = tmp_path / "in" / "nab" / "sub"
    nab.mkdir(parents=True)
    lines = ["timestamp,value"]
    for k in range(600):
        v = 10 + rng.normal(0, 0.5) + (25 if 400 <= k < 420 else 0)
        lines.append(f"2014-04-01 {k // 60 % 24:02d}:{k % 60:02d}:00,{v:.3f}")
    (nab / "a.csv").write_text("\n".join(lines) + "\n")
    skab = tmp_path / "in" / "skab"
    skab.mkdir()
    rows = ["datetime;A;B;anomaly;changepoint"]
    for k in range(700):
        a = 1 + rng.normal(0, 0.01)
        b = 2 * a + rng.normal(0, 0.01) + (0.5 if k >= 500 else 0)
        rows.append(f"2020-03-09 10:{k // 60 % 60:02d}:{k % 60:02d};{a:.4f};{b:.4f};1.0;1.0")
    (skab / "1.csv").write_text("\n".join(rows) + "\n")
    assert main(["analytics", "replay", str(tmp_path / "in" / "nab"), "--format", "nab",
                 "--output", str(tmp_path / "out" / "nab")]) == 0
    out = (tmp_path / "out" / "nab" / "sub" / "a.csv").read_text().splitlines()
    assert out[0] == "timestamp,score" and len(out) == 601
    flagged = [i for i, line in enumerate(out[1:]) if float(line.split(",")[1]) > 0]
    assert flagged and 400 <= flagged[0] <= 402 and len(flagged) <= 3  # onsets only
    assert main(["analytics", "replay", str(skab / "1.csv"), "--format", "skab",
                 "--output", str(tmp_path / "out" / "skab")]) == 0
    sk = (tmp_path / "out" / "skab" / "1.csv").read_text().splitlines()
    assert sk[0] == "timestamp,is_anomaly,changepoint" and len(sk) == 701
    # the label columns (all 1 here) are never read: the first 500 rows are not flagged
    assert all(line.split(",")[1] == "0" for line in sk[1:500])


def test_replay_refuses_bad_input_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vigil.cli import main

    assert main(["analytics", "replay", str(tmp_path / "nope"), "--format", "nab",
                 "--output", str(tmp_path / "out")]) == 2
    assert "neither a CSV file nor a folder" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2014-04-01 00:00:00,abc\n")
    assert main(["analytics", "replay", str(bad), "--format", "nab", "--output", str(tmp_path / "out")]) == 2
    assert "not a number" in capsys.readouterr().err


def test_hash_partitioned_workers_split_devices_once_and_stably() -> None:
    from analytics.service import owner
    from wire import ConfigError

    devices = [("tower-a", f"pump-{i:03d}") for i in range(300)]
    slices = [[d for d in devices if owner(*d, 3) == k] for k in range(3)]
    assert sorted(d for s in slices for d in s) == sorted(devices) and all(len(s) > 60 for s in slices)
    assert owner("tower-a", "pump-001", 3) == owner("tower-a", "pump-001", 3)  # no salted hash
    with pytest.raises(ConfigError, match="worker_index 3 must be below worker_count 3"):
        AnalyticsSettings.load(None, worker_count=3, worker_index=3)


@pytest.mark.timeout(60)
def test_mosquitto_workers_keep_only_their_devices(mqtt_settings: MqttSettings, site_id: str,
                                                   tmp_path: Path) -> None:
    """Two workers with worker_count=2: each device's telemetry is scored by exactly one."""
    from analytics.service import owner

    url = f"sqlite:///{tmp_path / 'vigil.db'}"
    workers = [AnalyticsService(AnalyticsSettings.load(
        None, mqtt=mqtt_settings, sites=(site_id,), client_id=f"test-an{k}-{site_id}", database_url=url,
        worker_count=2, worker_index=k, stats_interval_s=0)) for k in range(2)]
    pub = make_client(mqtt_settings, f"test-pub-{site_id}")
    pub.connect(mqtt_settings.host, mqtt_settings.port)
    pub.loop_start()
    try:
        for w in workers:
            w.start()
            assert w.wait_connected(10)
        time.sleep(0.3)
        now = int(time.time() * 1000)
        devices = [f"pump-{i:02d}" for i in range(12)]
        for i, d in enumerate(devices):
            _publish(pub, site_id, d, [(now, "flow_lps", 10.0 + i)], 0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(w.stats.readings for w in workers) < 12:
            time.sleep(0.05)
        time.sleep(0.3)
        for k, w in enumerate(workers):
            kept = {d for d in devices if w.engine.lookup(site_id, d, "flow_lps") is not None}
            assert kept == {d for d in devices if owner(site_id, d, 2) == k}
        assert sum(w.stats.readings for w in workers) == 12
    finally:
        for w in workers:
            w.stop()
        pub.loop_stop()
        pub.disconnect()
