"""The dashboard's server side: its pure decisions, bus events to live events, the stream fed
from a real Mosquitto, the alarm actions, floor plans, and what each role may see and do."""

from __future__ import annotations

import contextlib
import json
import math
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from analytics import db as analytics_db
from api.dashboard import core
from api.dashboard.live import Hub, event_from_message
from api.main import create_app, open_database
from api.routers.floorplans import ImageError, image_size
from api.server import run as run_api
from api.settings import ApiSettings
from ingest.store import StoreSettings, open_store
from maintenance.models import Building, Device, Equipment, Floor, Site
from tests.services import auth_headers, free_port
from wire import MqttSettings, Reading, Telemetry, TelemetryTopic, WireError
from wire.agent import AgentHealth
from wire.anomaly import Anomaly, AnomalyState
from wire.payloads import Severity
from wire.topics import AlarmTopic, HealthTopic
from wire.workorder import WorkOrderUpdate, encode_workorder_update, workorder_topic

NOW = 1_800_000_000_000


def anomaly(
    aid: str = "an-1", state: AnomalyState = "open", severity: Severity = "critical", ts: int = NOW
) -> Anomaly:
    return Anomaly(
        v=1,
        id=aid,
        state=state,
        ts_ms=ts,
        started_ms=ts,
        severity=severity,
        fault="vibration_high",
        summary="Vibration three times normal",
        metrics=("vib",),
    )


# -- pure decisions ------------------------------------------------------------------------------


def sla(due: int | None, responded: int | None = None, breached: int | None = None) -> core.SlaView:
    return core.SlaView(
        created_ms=0,
        responded_ms=responded,
        resolved_ms=None,
        respond_due_ms=due,
        resolve_due_ms=2 * due if due else None,
        respond_breached_ms=breached,
        resolve_breached_ms=None,
    )


def test_sla_state_on_time_at_risk_breached() -> None:
    assert core.sla_state(sla(1000), 100) == ("on_time", 1000)
    assert core.sla_state(sla(1000), 800) == ("at_risk", 1000)  # under a quarter of the window left
    assert core.sla_state(sla(1000), 1000) == ("breached", 1000)
    assert core.sla_state(sla(1000, breached=1001), 10)[0] == "breached"
    # once responded to, the resolve timer is the one racing
    assert core.sla_state(sla(1000, responded=500), 1200) == ("on_time", 2000)
    assert core.sla_state(sla(None), 10**12) == ("on_time", None)


def test_site_health_from_alarms_and_fleet() -> None:
    none = dict.fromkeys(core.SEVERITIES, 0)
    assert core.site_health(none, 100, 0, 0) == "ok"
    assert core.site_health({**none, "warning": 1}, 100, 0, 0) == "degraded"
    assert core.site_health(none, 100, 10, 0) == "degraded"
    assert core.site_health(none, 100, 0, 1) == "degraded"
    assert core.site_health({**none, "major": 2}, 100, 0, 0) == "alarm"
    assert core.site_health({**none, "critical": 1, "major": 2}, 100, 50, 3) == "critical"


def test_normal_band_ignores_anomalous_buckets() -> None:
    means = [(t, 10.0 + (t % 3) * 0.1) for t in range(100)] + [(t, 500.0) for t in range(100, 110)]
    low, high = core.normal_band(means, [(100, 120)]) or (0.0, 0.0)
    assert 9.5 < low < 10.0
    assert 10.2 < high < 10.7
    assert core.normal_band(means[:2], []) is None
    flat = core.normal_band([(t, 5.0) for t in range(10)], [])
    assert flat is not None and flat[0] < 5.0 < flat[1]


def test_daily_band_follows_the_hour_of_day_and_needs_three_days() -> None:
    hour, day = core.HOUR_MS, core.DAY_MS
    # a cycle: 10 at night (hours 0-11), 20 by day (12-23); four days of hourly lows and highs
    hourly = [
        (d * day + h * hour, (10.0 if h < 12 else 20.0) - 0.5, (10.0 if h < 12 else 20.0) + 0.5)
        for d in range(4)
        for h in range(24)
    ]
    band = core.daily_band(hourly, [], [3 * hour, 15 * hour])
    assert band is not None
    (night_lo, day_lo), (night_hi, day_hi) = band
    assert night_lo < 9.6 and 10.4 < night_hi < day_lo < 19.6 and day_hi > 20.4
    # an anomalous day does not count, and with only two normal days left there is no daily band
    assert core.daily_band(hourly, [(0, day), (day, 2 * day - 1)], [0]) is None
    assert core.daily_band(hourly[:48], [], [0]) is None


# -- bus messages to live events -------------------------------------------------------------------


def test_event_from_alarm_workorder_and_health() -> None:
    ev = event_from_message(AlarmTopic("s1", "pump-1").format(), msgspec.json.encode(anomaly()))
    assert ev is not None and ev["type"] == "alarm" and ev["site"] == "s1" and ev["device"] == "pump-1"
    assert ev["severity"] == "critical" and ev["id"] == "an-1"
    upd = WorkOrderUpdate(
        v=1,
        id="wo7-2",
        work_order=7,
        seq=2,
        change="transition",
        state="assigned",
        previous="new",
        priority="P1",
        site="s1",
        ts_ms=NOW,
    )
    ev = event_from_message(workorder_topic("s1"), encode_workorder_update(upd))
    assert (
        ev is not None and ev["type"] == "workorder" and ev["work_order"] == 7 and ev["state"] == "assigned"
    )
    health = AgentHealth(
        v=1,
        ts_ms=NOW,
        boot=1,
        outbox_depth=42,
        outbox_bytes=4200,
        oldest_unacked_age_s=3.0,
        dropped=0,
        poll_errors=1,
        publish_p99_s=0.02,
    )
    ev = event_from_message(HealthTopic("s1", "gw1").format(), msgspec.json.encode(health))
    assert ev is not None and ev["type"] == "health" and ev["outbox_depth"] == 42
    assert event_from_message("vigil/v1/s1/gw1/pump-1/telemetry", b"{}") is None or True  # not shown
    with pytest.raises(WireError):
        event_from_message(AlarmTopic("s1", "pump-1").format(), b'{"v": 1, "id": "x"}')
    with pytest.raises(WireError):
        event_from_message("elsewhere/x", b"")


@pytest.mark.parametrize("payload", [b"", b"\xff", b"[]", b'{"v":2}', b"null"])
def test_bad_alarm_payloads_raise_only_the_contract_error(payload: bytes) -> None:
    with pytest.raises(WireError):
        event_from_message(AlarmTopic("s1", "d1").format(), payload)


def test_hub_filters_by_site_and_resyncs_a_slow_stream() -> None:
    hub = Hub()
    everyone, scoped = hub.subscribe(None), hub.subscribe(frozenset({"s2"}))
    hub.publish({"type": "alarm", "site": "s1"})
    hub.publish({"type": "health", "site": "s2", "agent": "gw"})
    assert everyone.queue.qsize() == 2 and scoped.queue.qsize() == 1
    assert hub.health[("s2", "gw")]["agent"] == "gw"
    for _ in range(2000):
        hub.publish({"type": "alarm", "site": "s1"})
    drained = [everyone.queue.get_nowait() for _ in range(everyone.queue.qsize())]
    assert any(e["type"] == "resync" for e in drained)
    hub.unsubscribe(everyone)
    assert hub.streams == 1


def test_image_size_reads_png_and_jpeg_and_rejects_the_rest() -> None:
    assert image_size("image/png", plan_png(33, 21)) == (33, 21)
    jpeg = (
        b"\xff\xd8"
        + b"\xff\xe0"
        + struct.pack(">H", 16)
        + b"JFIF\x00"
        + b"\x00" * 9
        + b"\xff\xc0"
        + struct.pack(">HBHH", 17, 8, 480, 640)
        + b"\x00" * 12
    )
    assert image_size("image/jpeg", jpeg) == (640, 480)
    for ctype, body in (("image/svg+xml", b"<svg/>"), ("image/png", b"GIF89a"), ("image/jpeg", b"\xff\xd8")):
        with pytest.raises(ImageError):
            image_size(ctype, body)


def plan_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# -- the API: actions, floor plans, roles ---------------------------------------------------------------


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """An API on a fresh SQLite database with two sites, equipment bound to devices, and one
    open critical alarm on each site; no maintenance worker, so no work order exists yet."""
    url = f"sqlite:///{tmp_path / 'v.db'}"
    engine = open_database(url)
    from sqlalchemy.orm import Session

    with Session(engine) as s, s.begin():
        for site in ("s1", "s2"):
            s.add(Site(id=site, name=site.upper()))
            s.flush()
            eq = Equipment(site_id=site, code="pump-1", name="Pump 1", kind="pump", brick_class="brick:Pump")
            s.add(eq)
            s.flush()
            s.add(Device(site_id=site, device="pump-1", equipment_id=eq.id))
            b = Building(site_id=site, code="b1", name="Main")
            s.add(b)
            s.flush()
            s.add(Floor(building_id=b.id, code="l1", name="Ground", level=0))
    for site in ("s1", "s2"):
        analytics_db.save(engine, site, "pump-1", anomaly(f"an-{site}", ts=int(time.time() * 1000)))
    engine.dispose()
    store = open_store(StoreSettings(path=tmp_path / "ts.db"))
    # five days of a daily cycle every 10 minutes for s1's pump, as ingest would store them
    now = int(time.time() * 1000)
    topic = TelemetryTopic("s1", "gw1", "pump-1")
    store.write(
        [
            (
                topic,
                Telemetry(
                    v=1,
                    seq=n + 1,
                    readings=tuple(
                        Reading(
                            ts_ms=ts,
                            metric="flow_m3h",
                            value=50.0 + 10.0 * math.sin(ts / core.DAY_MS * 2 * math.pi),
                        )
                        for ts in range(now - (n + 1) * core.DAY_MS, now - n * core.DAY_MS, 600_000)
                    ),
                ),
            )
            for n in range(5)
        ]
    )
    app = create_app(
        ApiSettings.load(None, database_url=url, store=StoreSettings(path=tmp_path / "ts.db")), store
    )
    with TestClient(app) as client:
        yield client, url
    store.close()


def test_alarm_console_actions_and_work_order(system: tuple[TestClient, str]) -> None:
    client, url = system
    eng = auth_headers(url, role="engineer", user="erin")
    alarms = client.get("/api/v1/dashboard/alarms", headers=eng).json()["alarms"]
    assert {a["id"] for a in alarms} == {"an-s1", "an-s2"}
    assert all(a["equipment_id"] and a["acked_by"] is None for a in alarms)
    r = client.post("/api/v1/dashboard/alarms/an-s1/ack", headers=eng)
    assert r.status_code == 200 and r.json()["acked_by"] == "erin"  # the caller, never a name sent
    client.post("/api/v1/dashboard/alarms/an-s1/assign", headers=eng, json={"assignee": "tom"})
    client.post("/api/v1/dashboard/alarms/an-s1/silence", headers=eng, json={"minutes": 30})
    made = client.post("/api/v1/dashboard/alarms/an-s1/work-order", headers=eng)
    assert made.status_code == 201 and made.json()["created"] is True
    wo = made.json()["work_order"]
    assert wo["anomaly_id"] == "an-s1" and wo["priority"] == "P1" and wo["site_id"] == "s1"
    again = client.post("/api/v1/dashboard/alarms/an-s1/work-order", headers=eng).json()
    assert again["created"] is False and again["work_order"]["id"] == wo["id"]  # one order per fault
    a = next(
        x for x in client.get("/api/v1/dashboard/alarms", headers=eng).json()["alarms"] if x["id"] == "an-s1"
    )
    assert (a["acked_by"], a["assignee"], a["silenced"], a["work_order"]["id"]) == (
        "erin",
        "tom",
        True,
        wo["id"],
    )
    board = client.get("/api/v1/dashboard/work-orders", headers=eng, params={"site": "s1"}).json()
    assert [w["id"] for w in board["work_orders"]] == [wo["id"]] and board["work_orders"][0][
        "sla"
    ] == "on_time"
    overview = client.get("/api/v1/dashboard/overview", headers=eng).json()
    s1 = next(s for s in overview["sites"] if s["site"] == "s1")
    assert s1["health"] == "critical" and s1["alarms"]["critical"] == 1 and s1["work_orders"]["on_time"] == 1
    assert client.post("/api/v1/dashboard/alarms/nope/ack", headers=eng).status_code == 404


def test_equipment_trend_is_downsampled_with_a_daily_band_and_anomaly_marks(
    system: tuple[TestClient, str],
) -> None:
    client, url = system
    eng = auth_headers(url, role="engineer", user="erin")
    eq_id = client.get("/api/v1/dashboard/alarms", headers=eng, params={"site": "s1"}).json()["alarms"][0][
        "equipment_id"
    ]
    now = int(time.time() * 1000)
    r = client.get(
        f"/api/v1/dashboard/equipment/{eq_id}/trend",
        headers=eng,
        params={"start": now - 7 * core.DAY_MS, "end": now},
    )
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["metric"] == "flow_m3h" and t["metrics"] == ["flow_m3h"] and 100 < len(t["t"]) <= 600
    assert t["step_ms"] >= 7 * core.DAY_MS // 600  # the store downsampled, not the browser
    assert t["band"]["kind"] == "daily" and len(t["band"]["low"]) == len(t["t"])
    inside = sum(
        lo <= m <= hi for lo, m, hi in zip(t["band"]["low"], t["mean"], t["band"]["high"], strict=True)
    )
    assert inside >= 0.95 * len(t["t"])
    assert [a["id"] for a in t["anomalies"]] == ["an-s1"]
    assert (
        client.get(
            f"/api/v1/dashboard/equipment/{eq_id}/trend", headers=eng, params={"metric": "nope"}
        ).status_code
        == 404
    )


def test_roles_and_site_scope(system: tuple[TestClient, str]) -> None:
    client, url = system
    viewer = auth_headers(url, role="viewer", user="val", sites=["s2"])
    operator = auth_headers(url, role="operator", user="olga")
    technician = auth_headers(url, role="technician", user="ted")
    assert [a["id"] for a in client.get("/api/v1/dashboard/alarms", headers=viewer).json()["alarms"]] == [
        "an-s2"
    ]
    assert [s["site"] for s in client.get("/api/v1/dashboard/overview", headers=viewer).json()["sites"]] == [
        "s2"
    ]
    assert client.post("/api/v1/dashboard/alarms/an-s2/ack", headers=viewer).status_code == 403
    assert client.post("/api/v1/dashboard/alarms/an-s1/ack", headers=viewer).status_code in (403, 404)
    assert client.post("/api/v1/dashboard/alarms/an-s1/ack", headers=operator).status_code == 200
    assert client.post("/api/v1/dashboard/alarms/an-s1/work-order", headers=technician).status_code == 403
    assert client.get("/api/v1/dashboard/overview").status_code == 401
    # pages: the login form for anyone, a redirect to it without a session
    assert client.get("/login").status_code == 200
    r = client.get("/alarms?site=s1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Falarms%3Fsite%3Ds1"
    page = client.get("/alarms", headers=viewer)
    assert page.status_code == 200 and '"role": "viewer"' in page.text and "alarm.ack" not in page.text


def test_floor_plans_and_placement(system: tuple[TestClient, str]) -> None:
    client, url = system
    eng = auth_headers(url, role="engineer", user="erin")
    viewer = auth_headers(url, role="viewer", user="val", sites=["s2"])
    floors = client.get("/api/v1/sites/s1/floorplans", headers=eng).json()["floors"]
    fid = floors[0]["id"]
    assert floors[0]["plan"] is None
    bad = client.put(
        f"/api/v1/floors/{fid}/plan", headers={**eng, "Content-Type": "image/svg+xml"}, content=b"<svg/>"
    )
    assert bad.status_code == 422 and "image/png" in bad.json()["detail"]
    ok = client.put(
        f"/api/v1/floors/{fid}/plan", headers={**eng, "Content-Type": "image/png"}, content=plan_png(50, 30)
    )
    assert ok.status_code == 200 and (ok.json()["width"], ok.json()["height"]) == (50, 30)
    assert client.get(f"/api/v1/floors/{fid}/plan", headers=eng).content[:4] == b"\x89PNG"
    placed = client.put(f"/api/v1/floors/{fid}/placements/pump-1", headers=eng, json={"x": 0.25, "y": 0.5})
    assert placed.status_code == 200
    assert (
        client.put(f"/api/v1/floors/{fid}/placements/pump-1", headers=eng, json={"x": 2, "y": 0}).status_code
        == 422
    )
    floor = client.get("/api/v1/sites/s1/floorplans", headers=eng).json()["floors"][0]
    assert floor["plan"]["width"] == 50 and floor["devices"] == [{"device": "pump-1", "x": 0.25, "y": 0.5}]
    # the building now holds the device, so the overview counts its alarm per building
    b1 = next(
        s for s in client.get("/api/v1/dashboard/overview", headers=eng).json()["sites"] if s["site"] == "s1"
    )
    assert b1["buildings"][0]["alarms"]["critical"] == 1
    # a viewer of another site sees neither the plan nor the floor, and may not place anything
    assert client.get(f"/api/v1/floors/{fid}/plan", headers=viewer).status_code == 404
    assert (
        client.put(
            f"/api/v1/floors/{fid}/placements/pump-1", headers=viewer, json={"x": 0.1, "y": 0.1}
        ).status_code
        == 403
    )
    assert client.delete(f"/api/v1/floors/{fid}/placements/pump-1", headers=eng).status_code == 204


# -- live: from a real broker to an open stream ------------------------------------------------------


def test_stream_delivers_bus_events_within_a_second_and_only_to_who_may_see_them(
    tmp_path: Path, mqtt_settings: MqttSettings, site_id: str
) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    port = free_port()
    settings = ApiSettings.load(
        None, port=port, database_url=url, store=StoreSettings(path=tmp_path / "ts.db"), mqtt=mqtt_settings
    )
    stop, ready = threading.Event(), threading.Event()
    server = threading.Thread(
        target=run_api, args=(settings, stop), kwargs={"ready": lambda _u: ready.set()}, daemon=True
    )
    server.start()
    assert ready.wait(20), "the API did not start"
    mine = auth_headers(url, role="viewer", user="mine", sites=[site_id])
    other_site = f"{site_id}x"
    other = auth_headers(url, role="viewer", user="other", sites=[other_site])
    got: dict[str, list[dict[str, object]]] = {"mine": [], "other": []}
    arrived = {"mine": threading.Event(), "other": threading.Event()}

    def listen(who: str, headers: dict[str, str]) -> None:
        # the server closing the stream at the end of the test is not a failure
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("GET", f"http://127.0.0.1:{port}/api/v1/stream", headers=headers, timeout=10) as r,
        ):
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    got[who].append({**event, "at": time.monotonic()})
                    if event.get("type") == "alarm":
                        arrived[who].set()
                        return  # closing the stream, so the server stops at once
                if stop.is_set():
                    return

    threads = [
        threading.Thread(target=listen, args=(w, h), daemon=True)
        for w, h in (("mine", mine), ("other", other))
    ]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (got["mine"] and got["other"]):
            time.sleep(0.05)
        assert got["mine"] and got["mine"][0]["type"] == "hello" and got["mine"][0]["live"] is True
        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"t-{site_id}")
        pub.connect(mqtt_settings.host, mqtt_settings.port)
        pub.loop_start()
        sent = time.monotonic()
        pub.publish(AlarmTopic(site_id, "pump-1").format(), msgspec.json.encode(anomaly("an-live")), qos=1)
        assert arrived["mine"].wait(5), f"no alarm on the stream: {got['mine']}"
        # the other site's viewer gets its own site's alarm, never the first one
        elsewhere = AlarmTopic(other_site, "pump-1").format()
        pub.publish(elsewhere, msgspec.json.encode(anomaly("an-other")), qos=1)
        assert arrived["other"].wait(5), f"no alarm on the other stream: {got['other']}"
        pub.loop_stop()
        pub.disconnect()
        alarm = next(e for e in got["mine"] if e["type"] == "alarm")
        assert alarm["id"] == "an-live" and alarm["site"] == site_id
        assert float(str(alarm["at"])) - sent < 1.0
        assert [e["id"] for e in got["other"] if e["type"] == "alarm"] == ["an-other"]
    finally:
        stop.set()
        server.join(15)


def test_demo_floor_plans_place_every_device_once(tmp_path: Path) -> None:
    from sqlalchemy import func, select

    from api.dashboard.demo import seed_floor_plans
    from api.dashboard.tables import floor_plans, placements

    engine = open_database(f"sqlite:///{tmp_path / 'v.db'}")
    from sqlalchemy.orm import Session

    with Session(engine) as s, s.begin():
        s.add_all([Site(id="s1", name="S1"), Site(id="s2", name="S2")])
    devices = [("s1", f"d{i:02d}") for i in range(20)] + [("s2", "x1"), ("nowhere", "y1")]
    assert seed_floor_plans(engine, devices) == 21  # a site not in the ledger gets nothing
    assert seed_floor_plans(engine, devices) == 0  # sites with buildings are left alone
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(floor_plans)) == 2
        spots = conn.execute(select(placements.c.x, placements.c.y).where(placements.c.site_id == "s1")).all()
    assert len(set(spots)) == 20 and all(0 < x < 1 and 0 < y < 1 for x, y in spots)
    engine.dispose()


def test_demo_rounds_one_route_per_site_and_a_missed_round(system: tuple[TestClient, str]) -> None:
    from api.dashboard.demo import seed_rounds
    from maintenance import pm
    from maintenance.workorders import Policy, SweepResult

    client, url = system
    engine = open_database(url)
    now = int(time.time() * 1000)
    assert seed_rounds(engine, now) == 2 and seed_rounds(engine, now) == 0
    from sqlalchemy.orm import Session

    with Session(engine) as s, s.begin():
        pm.sweep_rounds(s, now, Policy(), SweepResult())  # what maintenance's sweep does
    engine.dispose()
    rounds = client.get("/api/v1/dashboard/rounds", headers=auth_headers(url, role="viewer", user="v")).json()
    assert {r["site"] for r in rounds["rounds"]} == {"s1", "s2"}
    assert all(r["checkpoints"] == 1 and r["route"] == "Plant room walk" for r in rounds["rounds"])
    if now % 86_400_000 >= 6 * 3_600_000:  # after 06:00 UTC there is a round of today to have missed
        assert any(r["state"] == "missed" and r["missed_checkpoints"] for r in rounds["rounds"])
