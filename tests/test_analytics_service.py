"""Analytics beyond numbers and across restarts: device events, boolean and state rules,
equipment kinds from agents' births, models trained on stored history and versioned in the
database, and learned state that survives a restart (real Mosquitto, real databases, the
real embedded store)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import Engine

from analytics import db
from analytics.engine import Emitted
from analytics.events import Judge
from analytics.history import choose_columns, train
from analytics.service import AnalyticsService, open_engine
from analytics.settings import AnalyticsSettings, DetectSettings
from ingest.store import StoreSettings, open_store
from tests.services import fresh_database, wait_until
from wire import (
    Event,
    EventTopic,
    MqttSettings,
    Reading,
    Status,
    StatusTopic,
    Telemetry,
    TelemetryTopic,
    encode,
)
from wire.anomaly import Anomaly, decode_anomaly
from wire.mqtt import make_client
from wire.topics import alarm_filter

T0 = 1_795_000_000_000
MIN = 60_000


def states(events: list[Emitted]) -> list[tuple[str, str]]:
    return [(e.anomaly.fault, e.anomaly.state) for e in events]


# -- events, booleans and states (sans-IO) ---------------------------------------------------------


def test_a_forced_door_is_one_anomaly_that_clears_when_the_door_is_secure_again() -> None:
    j = Judge(DetectSettings())
    out = j.reading("hq", "gw1", "gate-7", "door", "state", "secure", T0)
    out += j.event("hq", "gw1", "gate-7", "door", "door_forced", "major",
                   "gate-7: door forced open (no valid badge)", T0 + MIN)
    out += j.reading("hq", "gw1", "gate-7", "door", "state", "forced", T0 + MIN)
    out += j.event("hq", "gw1", "gate-7", "door", "door_forced", "major", "again", T0 + 2 * MIN)  # a repeat
    out += j.reading("hq", "gw1", "gate-7", "door", "state", "forced", T0 + 3 * MIN)
    assert states(out) == [("door_forced", "open"), ("door_forced", "updated")]
    a = out[0].anomaly
    assert a.severity == "major" and a.kind == "door" and a.detectors == ("event",)
    assert a.summary == "Door gate-7: door forced open (no valid badge) (event door_forced, major)"
    assert "2 times" in out[1].anomaly.summary and out[1].anomaly.detectors == ("event", "state")
    # secured again 2 min after the last forcing: it stays on the console (min_hold_s, 5 min),
    # so a person sees it even when the door closed a second later
    assert j.reading("hq", "gw1", "gate-7", "door", "state", "secure", T0 + 4 * MIN) == []
    out = j.reading("hq", "gw1", "gate-7", "door", "state", "secure", T0 + 7 * MIN)
    assert states(out) == [("door_forced", "cleared")] and out[0].anomaly.id == a.id
    assert "back to normal after 6 min" in out[0].anomaly.summary


def test_a_door_held_open_is_judged_by_how_long_not_by_the_visitors_event() -> None:
    j = Judge(DetectSettings())
    # a visitor holds it 90 s: the panel's 30 s event is ignored, the state rule wants 2 min
    out = j.event("hq", "gw1", "door-01", "door", "door_held_open", "minor", "held open past 30 s", T0)
    for k, s in enumerate(["held_open", "held_open", "unlocked"]):
        out += j.reading("hq", "gw1", "door-01", "door", "state", s, T0 + k * 45_000)
    assert out == [] and j.events_ignored == 1
    for k in range(5):  # propped open: 4 min
        out += j.reading("hq", "gw1", "door-01", "door", "state", "held_open", T0 + 10 * MIN + k * MIN)
    assert states(out) == [("door_held_open", "open")]
    assert out[0].anomaly.summary == ("Door door-01 is held open: state held_open for 2 min (allowed 2 min)")
    assert out[0].anomaly.started_ms == T0 + 10 * MIN and out[0].anomaly.severity == "minor"
    assert states(j.reading("hq", "gw1", "door-01", "door", "state", "secure", T0 + 15 * MIN)) == [
        ("door_held_open", "cleared")]


def test_a_fire_alarm_never_clears_by_time_only_by_the_panel_or_a_restore() -> None:
    j = Judge(DetectSettings())
    out = j.event("hq", "gw1", "facp-1", "fire_panel", "fire_alarm", "major", "detector in zone 1", T0)
    assert states(out) == [("fire_alarm", "open")] and out[0].anomaly.severity == "critical"
    assert j.tick(T0 + 24 * 60 * MIN) == []
    assert states(j.reading("hq", "gw1", "facp-1", "fire_panel", "alarm", False, T0 + 5 * MIN)) == [
        ("fire_alarm", "cleared")]
    # an unknown event kind: its own severity, cleared after a quiet period or by a restore
    out = j.event("hq", "gw1", "cam-2", "camera", "tamper", "major", "image obscured", T0)
    out += j.event("hq", "gw1", "rtu-9", "equipment", "comms_fail", "warning", "", T0)
    assert states(out) == [("tamper", "open"), ("comms_fail", "open")]
    assert j.event("hq", "gw1", "door-1", "door", "access_granted", "info", "badge 4411", T0) == []
    back = j.event("hq", "gw1", "rtu-9", "equipment", "comms_fail_restored", "info", "", T0 + MIN)
    assert states(back) == [("comms_fail", "cleared")]
    assert j.tick(T0 + 29 * MIN) == []
    assert states(j.tick(T0 + 31 * MIN)) == [("tamper", "cleared")]


def test_a_pump_that_should_run_but_does_not() -> None:
    j = Judge(DetectSettings())
    out: list[Emitted] = []
    for k in range(7):
        out += j.reading("hq", "gw1", "chwp-1", "pump", "running", k < 1, T0 + k * MIN)
    assert states(out) == [("pump_stopped", "open")] and out[0].anomaly.ts_ms == T0 + 6 * MIN
    assert states(j.reading("hq", "gw1", "chwp-1", "pump", "running", True, T0 + 8 * MIN)) == [
        ("pump_stopped", "cleared")]


# -- history training ---------------------------------------------------------------------------------


def _pump_history(days: float, step_ms: int, rng: np.random.Generator, start_ms: int,
                  sites_devices: list[tuple[str, str]]) -> list[tuple[TelemetryTopic, Telemetry]]:
    batch = []
    seq = 0
    for site, device in sites_devices:
        size = rng.uniform(8, 20)
        for k in range(int(days * 86_400_000 / step_ms)):
            ts = start_ms + k * step_ms
            load = 0.6 + 0.3 * np.sin(2 * np.pi * (ts % 86_400_000) / 86_400_000)
            flow = float(round(size * load + rng.normal(0, 0.1), 3))
            current = float(round(1.5 * size * load + rng.normal(0, 0.15), 3))
            readings = (Reading(ts, "flow_lps", flow), Reading(ts, "motor_current_a", current),
                        Reading(ts, "running", True))
            batch.append((TelemetryTopic(site, "gw1", device), Telemetry(v=1, seq=seq, readings=readings)))
            seq += 1
    return batch


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with fresh_database(request.param, tmp_path, "t_analytics_svc") as url:
        e = open_engine(url)
        yield e
        e.dispose()


def test_models_train_on_healthy_history_from_the_store_with_versions(tmp_path: Path,
                                                                      database: Engine) -> None:
    store = open_store(StoreSettings(path=tmp_path / "ts.db"))
    try:
        rng = np.random.default_rng(3)
        now = T0 + 3 * 86_400_000
        devices = [("hq", "pump-01"), ("hq", "pump-02")]
        store.write(_pump_history(2.5, 600_000, rng, now - int(2.5 * 86_400_000), devices))
        metrics = {d: {"flow_lps", "motor_current_a"} for d in devices}
        assert choose_columns(metrics) == ["flow_lps", "motor_current_a"]
        cfg = DetectSettings(model_warmup_rows=200, model_min_span_s=86_400)
        # pump-02 was in a 6-hour anomaly: those steps (and an hour either side) are not healthy
        sick = {("hq", "pump-02"): [(now - 86_400_000, now - 64_800_000)]}
        got = train("pump", store, metrics, cfg, now_ms=now, history_s=7 * 86_400, step_s=600,
                    version=db.next_model_version(database, "pump"), unhealthy=sick)
        assert got.model is not None, got.reason
        m = got.model
        assert (m.version, m.source, m.columns) == (1, "history", ["flow_lps", "motor_current_a"])
        assert 2 * 360 - 50 <= m.rows <= 2 * 360 - 47  # 8 h of 10-min steps left out
        db.save_model(database, m)
        db.save_model(database, m)  # a retried save is harmless
        # not enough history: a clear reason, no model
        short = train("pump", store, metrics, cfg, now_ms=now, history_s=0.5 * 86_400, step_s=600,
                      version=2, unhealthy={})
        assert short.model is None and short.reason == "pump: 144 healthy rows of history, 200 needed"
        again = train("pump", store, metrics, cfg, now_ms=now + 86_400_000, history_s=7 * 86_400, step_s=600,
                      version=db.next_model_version(database, "pump"), unhealthy={})
        assert again.model is not None and again.model.version == 2
        db.save_model(database, again.model)
        latest, problems = db.latest_models(database)
        assert problems == [] and [(x.kind, x.version) for x in latest] == [("pump", 2)]
        assert np.allclose(latest[0].components, again.model.components)
    finally:
        store.close()


# -- the worker: kinds from births, events on the bus, restart keeps what it learned ------------------


def _publish_rows(client: mqtt.Client, site: str, device: str, start_ms: int, n: int, seq: int,
                  rng: np.random.Generator, vibration: float = 1.5) -> None:
    for k in range(n):
        ts = start_ms + k * 10_000
        readings = (Reading(ts, "vibration_mm_s", round(vibration + rng.normal(0, 0.1), 3), "mm/s"),
                    Reading(ts, "flow_lps", round(12.0 + rng.normal(0, 0.2), 3)),
                    Reading(ts, "motor_current_a", round(18.0 + rng.normal(0, 0.2), 3)))
        client.publish(TelemetryTopic(site, "gw1", device).format(),
                       encode(Telemetry(v=1, seq=seq + k, readings=readings)), qos=1).wait_for_publish(5)


@pytest.mark.timeout(120)
def test_worker_judges_events_with_announced_kinds_and_restart_keeps_baselines_and_models(
        mqtt_settings: MqttSettings, site_id: str, tmp_path: Path) -> None:
    with fresh_database("postgresql", tmp_path, "t_analytics_svc") as url:
        settings = AnalyticsSettings.load(
            None, mqtt=mqtt_settings, sites=(site_id,), share_group=None, client_id=f"test-an-{site_id}",
            database_url=url, tick_s=0.5, stats_interval_s=0, state_dir=tmp_path / "state",
            model_first_train_s=3600)
        received: list[Anomaly] = []
        sub = make_client(mqtt_settings, f"test-alarm-{site_id}")

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            received.append(decode_anomaly(bytes(msg.payload)))

        sub.on_message = on_message
        sub.connect(mqtt_settings.host, mqtt_settings.port)
        sub.subscribe(alarm_filter(site_id), qos=1)
        sub.loop_start()
        pub = make_client(mqtt_settings, f"test-pub-{site_id}")
        pub.connect(mqtt_settings.host, mqtt_settings.port)
        pub.loop_start()
        store = open_store(StoreSettings(path=tmp_path / "ts.db"))
        first = AnalyticsService(settings, history=store)
        first.start()
        try:
            assert first.wait_connected(10)
            t0 = int(time.time() * 1000) - 60 * 10_000
            # the birth says what each device is: "gate-7" is a door, "chwp-1" a pump
            birth = Status(v=1, state="online", ts_ms=t0, devices={"gate-7": "door", "chwp-1": "pump"})
            pub.publish(StatusTopic(site_id, "gw1").format(), encode(birth), qos=1,
                        retain=True).wait_for_publish(5)
            time.sleep(0.5)
            _publish_rows(pub, site_id, "chwp-1", t0, 60, 0, np.random.default_rng(4))
            ev = Event(v=1, seq=1, ts_ms=t0 + 1000, kind="door_forced", severity="major",
                       message="gate-7: door forced open (no valid badge)")
            pub.publish(EventTopic(site_id, "gw1", "gate-7").format(), encode(ev), qos=1).wait_for_publish(5)
            pub.publish(EventTopic(site_id, "gw1", "gate-7").format(), b'{"v":1,"kind":"x"}',
                        qos=1).wait_for_publish(5)
            assert wait_until(lambda: any(a.fault == "door_forced" for a in received)), received
            forced = next(a for a in received if a.fault == "door_forced")
            assert forced.kind == "door" and forced.state == "open" and forced.severity == "major"
            assert wait_until(lambda: first.stats.readings == 180 and first.stats.bad == 1)
            assert first.stats.guessed_kinds == 0 and first.engine.series_count == 3
            # a model trained on history elsewhere is stored by version; a restart scores with it
            rows = np.random.default_rng(5).normal(0, 1, (300, 3))
            from analytics.models import fit_model
            model = fit_model("pump", ["flow_lps", "motor_current_a", "vibration_mm_s"], rows,
                              settings.detect, 1, t0, source="history")
            db.save_model(first._db, model)
            baseline = first.engine.detectors[[d.name for d in first.engine.detectors].index("baseline")]
            learned = (baseline._n[:3].copy(), baseline._mean[:3].copy())  # type: ignore[attr-defined]
        finally:
            first.stop()
        assert (tmp_path / "state" / "state-0of1.npz").exists()
        second = AnalyticsService(settings.model_copy(update={"client_id": f"test-an2-{site_id}"}),
                                  history=store)
        second.start()
        try:
            assert second.engine.series_count == 3
            b2 = second.engine.detectors[[d.name for d in second.engine.detectors].index("baseline")]
            assert np.array_equal(b2._n[:3], learned[0]) and learned[0].min() == 60  # type: ignore[attr-defined]
            assert np.allclose(b2._mean[:3], learned[1])  # type: ignore[attr-defined]
            assert second.engine.models.models()["pump"].version == 1
            assert second.engine.models.stream_training is False
            # the open door anomaly survived too: the door's secure state clears it, same id
            secure = Telemetry(v=1, seq=500, readings=(Reading(t0 + 120_000, "state", "secure"),))
            pub.publish(TelemetryTopic(site_id, "gw1", "gate-7").format(), encode(secure),
                        qos=1).wait_for_publish(5)
            assert wait_until(lambda: any(a.fault == "door_forced" and a.state == "cleared"
                                          for a in received))
            cleared = next(a for a in received if a.fault == "door_forced" and a.state == "cleared")
            assert cleared.id == forced.id
        finally:
            second.stop()
            store.close()
            pub.publish(StatusTopic(site_id, "gw1").format(), b"", qos=1, retain=True).wait_for_publish(5)
            pub.loop_stop()
            pub.disconnect()
            sub.loop_stop()
            sub.disconnect()


@pytest.fixture(params=["embedded", "influxdb"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    """Both stores the history can come from: the embedded file and InfluxDB (real, behind nginx)."""
    if request.param == "embedded":
        return StoreSettings(path=tmp_path / "ts.db")
    got: StoreSettings = request.getfixturevalue("influx_settings")
    return got


def test_worker_trains_its_models_from_the_store_and_installs_them(store_settings: StoreSettings,
                                                                    database: Engine) -> None:
    store = open_store(store_settings)
    try:
        now = time.time()
        devices = [("hq", "pump-01"), ("hq", "pump-02")]
        store.write(_pump_history(1.5, 600_000, np.random.default_rng(6), int((now - 1.5 * 86_400) * 1000),
                                  devices))
        settings = AnalyticsSettings.load(None, mqtt=MqttSettings(host="127.0.0.1", port=1),
                                          detect=DetectSettings(model_warmup_rows=100))
        service = AnalyticsService(settings, database=database, history=store)
        # what the scoring thread records as telemetry arrives
        service._numeric = {"pump": {d: {"flow_lps", "motor_current_a"} for d in devices}}
        assert service.train_now() is False
        assert service.train_now() is False
        latest, _ = db.latest_models(database)
        assert [(m.kind, m.version, m.source) for m in latest] == [("pump", 2, "history")]
        service._pass()  # the scoring thread installs what was trained
        assert service.engine.models.models()["pump"].version == 2
    finally:
        store.close()


def test_kinds_fall_back_to_the_device_id_once_logged(caplog: pytest.LogCaptureFixture,
                                                     tmp_path: Path) -> None:
    settings = AnalyticsSettings.load(None, mqtt=MqttSettings(host="127.0.0.1", port=1),
                                      database_url=f"sqlite:///{tmp_path / 'a.db'}")
    service = AnalyticsService(settings)
    with caplog.at_level("WARNING", "vigil.analytics"):
        assert service.kind("hq", "pump-03") == "pump" and service.kind("hq", "ahu-1") == "ahu"
    assert service.stats.guessed_kinds == 2
    assert sum("guessed from its id" in r.getMessage() for r in caplog.records) == 1


# -- state snapshots (sans-IO) -------------------------------------------------------------------------


def test_a_snapshot_restores_learning_but_takes_rule_limits_from_the_new_settings() -> None:
    from analytics import AnalyticsError, state
    from analytics.engine import Engine
    from analytics.settings import Rule

    engine, judge = Engine(DetectSettings()), Judge(DetectSettings())
    rng = np.random.default_rng(7)
    for k in range(50):
        sid = engine.series("hq", "pump-01", "vibration_mm_s", "mm/s", "gw1", "pump")
        engine.process(np.array([sid]), np.array([T0 + k * 10_000]), np.array([1.5 + rng.normal(0, 0.1)]))
    judge.reading("hq", "gw1", "door-1", "door", "state", "held_open", T0)
    data = state.snapshot(engine, judge, saved_ms=T0)
    stricter = DetectSettings(rules=(Rule(kind="pump", metric="vibration_mm_s", high=2.0),))
    engine2, judge2, skipped = state.restore(data, stricter, now_ms=T0 + 3_600_000)
    assert skipped == [] and engine2.series_count == 1 and judge2.snapshot() == judge.snapshot()
    names = [d.name for d in engine2.detectors]
    base, base2 = engine.detectors[names.index("baseline")], engine2.detectors[names.index("baseline")]
    assert np.array_equal(base._mean, base2._mean)  # type: ignore[attr-defined]
    assert engine2.detectors[names.index("threshold")]._hi[0] == 2.0  # type: ignore[attr-defined]
    # the first reading after the restart is judged by the new rule and the old baseline
    out = engine2.process(np.array([0]), np.array([T0 + 60 * 10_000]), np.array([2.6]))
    assert [e.anomaly.fault for e in out] == ["vibration_mm_s_high"]
    with pytest.raises(AnalyticsError, match=r"snapshot is unreadable.*delete it"):
        state.restore(b"not a snapshot", stricter, now_ms=T0)
