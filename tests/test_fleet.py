"""The fleet with faults on the real Mosquitto (127.0.0.1:1883, and a private one for load):
wire events from the edge's event path, simulated time (the speed factor), ground truth
written by ``vigil sim``, and a short run at scale."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.agent import Agent, DeviceEvent, PollPlan
from edge.errors import DriverError
from edge.runtime import AgentRuntime, Scheduler
from simulators.fleet import Progress, Recorder, SimClock, build_fleet, percentile, plan_fleet
from simulators.runner import run
from simulators.settings import SimSettings
from tests.services import MosquittoFactory, wait_until
from wire import (
    EventTopic,
    MqttSettings,
    Reading,
    TelemetryTopic,
    decode_event,
    decode_telemetry,
    parse_topic,
)
from wire.mqtt import make_client
from wire.topics import event_filter, status_filter, telemetry_filter

T0 = 1_800_000_000_000


# -- the core's event path (sans-IO) --------------------------------------------------------


def test_the_agent_numbers_events_on_their_own_sequence_and_refuses_bad_ones() -> None:
    core = Agent(site="s1", agent="gw1", devices=[PollPlan("door-01", 1000)], boot=5)
    first = core.event("door-01", DeviceEvent(T0, "door_forced", "major", "forced", {"locked": True}))
    second = core.event("door-01", DeviceEvent(T0 + 5, "door_held_open", "minor"))
    assert first.topic == "vigil/v1/s1/gw1/door-01/event" and (first.qos, first.retain) == (1, False)
    assert decode_event(first.payload) == first.message
    assert [first.message.seq, second.message.seq] == [0, 1]  # type: ignore[union-attr]
    assert decode_event(first.payload).data == {"locked": True}
    assert core.seq == 0  # telemetry numbers are untouched: no gap for consumers watching them
    with pytest.raises(DriverError, match=r"invalid event: .*kind"):
        core.event("door-01", DeviceEvent(T0, "door forced!", "major"))
    with pytest.raises(DriverError, match="invalid event"):
        core.event("door-01", DeviceEvent(T0, "x", "catastrophic"))  # type: ignore[arg-type]
    with pytest.raises(DriverError, match="not a device of agent gw1"):
        core.event("pump-01", DeviceEvent(T0, "x", "major"))
    assert core.event("door-01", DeviceEvent(T0, "tamper", "major")).message.seq == 2  # type: ignore[union-attr]


# -- on the broker ------------------------------------------------------------------------------


class Listener:
    """Every telemetry and event message of one site."""

    def __init__(self, settings: MqttSettings, site: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self._client = make_client(settings, f"listen-{uuid.uuid4().hex[:10]}")
        filters = [(telemetry_filter(site), 1), (event_filter(site), 1)]
        self._client.on_connect = lambda c, *_: c.subscribe(filters)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(settings.host, settings.port)
        self._client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def items(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def listener(mqtt_settings: MqttSettings, site_id: str) -> Iterator[Listener]:
    t = Listener(mqtt_settings, site_id)
    yield t
    t.close()
    clear_retained_statuses(mqtt_settings, site_id)


def clear_retained_statuses(settings: MqttSettings, site: str) -> None:
    """Leave the shared broker as we found it: no retained status of this test's agents."""
    topics: set[str] = set()
    cleaner = make_client(settings, f"clean-{uuid.uuid4().hex[:10]}")
    cleaner.on_message = lambda c, u, msg: topics.add(msg.topic) if msg.retain and msg.payload else None
    cleaner.connect(settings.host, settings.port)
    cleaner.loop_start()
    cleaner.subscribe(status_filter(site), qos=1)
    time.sleep(0.5)  # retained messages arrive right after the subscription
    for topic in sorted(topics):
        cleaner.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    cleaner.disconnect()
    cleaner.loop_stop()


def test_security_and_life_safety_faults_reach_the_bus_as_events_with_ground_truth(
    mqtt_settings: MqttSettings, site_id: str, listener: Listener, tmp_path: Path
) -> None:
    """A scenario forces a door, sets off a fire alarm and takes a pump offline, in a fleet
    running 120x real time; the bus carries the events, the pump's silence, and readings
    stamped in simulated time; the ground truth says exactly that."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        "faults:\n"
        "  - {device: door-01, fault: door_forced, start: 30s, duration: 2m}\n"
        "  - {device: fire-panel-01, fault: fire_alarm, start: 40s, duration: 5m}\n"
        "  - {device: pump-01, fault: device_offline, start: 60s, duration: 90s}\n"
        "  - {device: chiller-01, fault: refrigerant_leak, start: 1h, duration: 2h}\n"  # never reached
    )
    truth = tmp_path / "truth.json"
    start = "2027-01-04T10:00:00Z"
    settings = SimSettings.load(
        mqtt=mqtt_settings, seed=2, devices=11, sites=1, site_ids=(site_id,), agents_per_site=2,
        interval_s=5, speed=120, start=start, duration_s=3.0, scenario=scenario, ground_truth=truth,
        progress_s=0.5,
    )
    recorder = Recorder()
    progress: list[Progress] = []
    run(settings, threading.Event(), on_acked=recorder, on_progress=progress.append)
    t_start = 1_799_056_800_000  # 2027-01-04T10:00Z

    def events() -> list[tuple[str, str, int]]:
        out = []
        for topic, payload in listener.items():
            t = parse_topic(topic)
            if isinstance(t, EventTopic):
                e = decode_event(payload)
                out.append((t.device, e.kind, e.ts_ms))
        return out

    assert wait_until(lambda: {k for _, k, _ in events()} >= {"door_forced", "fire_alarm"})
    got = {(d, k) for d, k, _ in events()}
    assert {("door-01", "door_forced"), ("fire-panel-01", "fire_alarm")} <= got
    for device, kind, ts in events():
        if kind in ("door_forced", "fire_alarm"):
            offset = 30_000 if kind == "door_forced" else 40_000
            assert t_start + offset <= ts <= t_start + offset + 10_000, (device, kind, ts - t_start)
    assert len(recorder.events()) == len(events())  # what was acknowledged is what arrived

    telemetry = [(parse_topic(t), decode_telemetry(p)) for t, p in listener.items()
                 if isinstance(parse_topic(t), TelemetryTopic)]
    stamps = sorted(r.ts_ms for _, m in telemetry for r in m.readings)
    assert t_start <= stamps[0] < t_start + 10_000
    assert stamps[-1] - stamps[0] > 200_000  # ~3 wall seconds at 120x is ~6 simulated minutes
    pump = sorted(r.ts_ms for t, m in telemetry if t.device == "pump-01" for r in m.readings)  # type: ignore[union-attr]
    assert pump and not [ts for ts in pump if t_start + 60_000 <= ts < t_start + 150_000]
    assert [ts for ts in pump if ts >= t_start + 150_000]  # back after the outage
    assert progress and progress[-1].poll_failures > 0 and progress[-1].events >= 2

    written = json.loads(truth.read_text())
    assert written["start_ms"] == t_start and written["speed"] == 120
    faults = {f["device"]: f for f in written["faults"]}
    assert set(faults) == {"door-01", "fire-panel-01", "pump-01"}  # the leak never started
    assert faults["door-01"]["effects"]["event"] == "event:door_forced"
    assert faults["pump-01"]["effects"] == {"*": "missing"}
    assert faults["pump-01"]["end_ms"] == t_start + 150_000
    assert written["end_ms"] >= t_start + 300_000 - 60_000 > faults["door-01"]["start_ms"]


def test_simulated_time_runs_at_the_speed_asked() -> None:
    clock = SimClock(T0, speed=1000)
    assert clock.start_ms == T0 == clock.now()  # it starts at its first reading
    time.sleep(0.05)
    assert 40_000 <= clock.now() - T0 <= 2_000_000
    assert abs(SimClock().now() - time.time() * 1000) < 1000  # default: now, real time


def test_2_000_devices_keep_up_for_a_few_seconds(private_mosquitto: MosquittoFactory) -> None:
    """A smoke test of scale (bench/fleet.py measures 10,000): one process, one agent per
    site, every device read once a second, 95 % of ticks less than a second late.

    2,000, not 5,000 (at 3,000 one CI run polled only 72 % on time): paho scans every
    message it holds on each PUBACK (``_update_inflight``),
    so once acknowledgements fall behind, each one costs more and they fall further behind.
    At 5,000 on a slower day of the 2-core machine, 3,000-4,600 messages per agent were still
    unacknowledged 5 s after the stop (py-spy: a quarter of the process in that scan)."""
    host, port, _stop = private_mosquitto(["max_inflight_messages 1000", "max_queued_messages 1000000",
                                           "set_tcp_nodelay true"])
    plan = plan_fleet(seed=1, devices=2_000, sites=2, agents_per_site=1, interval_s=1.0)
    fleet = build_fleet(plan, MqttSettings(host=host, port=port), check_readings=False, max_inflight=1000,
                        max_queued_messages=1_000_000, tick_s=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=fleet.run, args=(stop,))
    thread.start()
    try:
        assert fleet.wait_online(20)
        time.sleep(2.0)  # every device has been read once; connections settled
        fleet.take_lags()
        before = sum(s.polls for s in fleet.stats())
        time.sleep(4.0)
        polls = sum(s.polls for s in fleet.stats()) - before
        lags = fleet.take_lags()
    finally:
        stop.set()
        thread.join(30)
    stats = fleet.stats()
    # Generous margins: the machine is shared. The benchmark reports the real figures.
    # About 80 ticks are measured, so a p99 is the worst tick or two: one scheduler hiccup
    # of the 2-core machine made it 1.3 s in CI while the rest were 0.1 s. Keeping up means
    # the median tick is on time and at most 5 % of ticks are a second late.
    assert polls >= 0.8 * 2_000 * 4, polls
    assert percentile(lags, 0.5) < 0.5, sorted(lags)
    assert sum(lag > 1.0 for lag in lags) <= 0.05 * len(lags), sorted(lags)[-10:]
    assert sum(s.publish_failures for s in stats) == 0
    assert sum(s.messages_acked for s in stats) == sum(s.messages_published for s in stats)


class Panel:
    """A driver with events: one reading per poll; an event at the first poll, and a
    broken one (a kind with a space) that must be dropped alone."""

    def __init__(self) -> None:
        self.polls = 0

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def read(self, now_ms: int) -> list[Reading]:
        self.polls += 1
        return [Reading(ts_ms=now_ms, metric="state_code", value=float(self.polls))]

    def take_events(self) -> list[DeviceEvent]:
        if self.polls != 1:
            return []
        return [DeviceEvent(T0, "not valid!", "major"), DeviceEvent(T0, "fire_alarm", "critical", "zone 3")]


def test_the_edge_runtime_publishes_a_drivers_events_and_drops_a_bad_one_alone(
    mqtt_settings: MqttSettings, site_id: str, listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    core = Agent(site=site_id, agent="gw1", devices=[PollPlan("panel-01", 100)], boot=1)
    runtime = AgentRuntime(core, {"panel-01": Panel()}, mqtt_settings)
    stop = threading.Event()
    thread = threading.Thread(target=Scheduler([runtime]).run, args=(stop,))
    thread.start()
    try:
        assert wait_until(lambda: sum(isinstance(parse_topic(t), TelemetryTopic)
                                      for t, _ in listener.items()) >= 3)
        assert wait_until(lambda: any(isinstance(parse_topic(t), EventTopic) for t, _ in listener.items()))
    finally:
        stop.set()
        thread.join(10)
    events = [decode_event(p) for t, p in listener.items() if isinstance(parse_topic(t), EventTopic)]
    assert [(e.kind, e.seq, e.message) for e in events] == [("fire_alarm", 0, "zone 3")]
    telemetry = [decode_telemetry(p) for t, p in listener.items()
                 if isinstance(parse_topic(t), TelemetryTopic)]
    assert [m.seq for m in telemetry] == list(range(len(telemetry)))  # the bad event cost no telemetry
    assert "invalid event" in caplog.text
    assert runtime.stats().poll_failures == 0
