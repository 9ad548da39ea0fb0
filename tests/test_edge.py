"""The edge agent: its sans-IO core with an explicit clock, its config, and its runtime
against the real Mosquitto on 127.0.0.1:1883 (each test on its own site id)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.agent import Agent, PollPlan, Publication
from edge.boot import next_boot
from edge.config import EdgeConfigError, load_config, parse_config
from edge.drivers import DRIVERS, DeviceInfo, Driver, SimulatedDriver
from edge.drivers.simulated import SimulatedOptions, WaveformSource
from edge.errors import DriverError, EdgeError
from edge.runtime import AgentRuntime, Scheduler, run, wall_ms
from edge.settings import EdgeSettings
from tests.services import MosquittoFactory
from wire import (
    MqttSettings,
    Reading,
    Status,
    StatusTopic,
    Telemetry,
    TelemetryTopic,
    decode_status,
    decode_telemetry,
    parse_topic,
)
from wire.agent import AgentHealth, decode_health
from wire.config import ConfigError
from wire.mqtt import make_client
from wire.topics import CommandTopic, health_filter, status_filter, telemetry_filter

T0 = 1_800_000_000_000  # an explicit clock for the core: 2027-01-15


# -- a real subscriber on the shared broker ---------------------------------------------


class Tap:
    """A paho subscriber to every status and telemetry topic of one site, keeping all it gets."""

    def __init__(self, settings: MqttSettings, site: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = make_client(settings, f"tap-{uuid.uuid4().hex[:12]}")
        filters = [(status_filter(site), 1), (telemetry_filter(site), 1)]
        self._client.on_connect = lambda c, *_: c.subscribe(filters)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(settings.host, settings.port)
        self._client.loop_start()
        assert self._subscribed.wait(5), "tap could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def statuses(self, agent: str | None = None) -> list[tuple[Status, bool]]:
        with self._cond:
            items = list(self.messages)
        out = []
        for topic, payload, retain in items:
            t = parse_topic(topic)
            if isinstance(t, StatusTopic) and payload and (agent is None or t.agent == agent):
                out.append((decode_status(payload), retain))
        return out

    def telemetry(self) -> list[tuple[TelemetryTopic, Telemetry]]:
        with self._cond:
            items = list(self.messages)
        out = []
        for topic, payload, _ in items:
            t = parse_topic(topic)
            if isinstance(t, TelemetryTopic):
                out.append((t, decode_telemetry(payload)))
        return out

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextlib.contextmanager
def tap(settings: MqttSettings, site: str, agents: Sequence[str]) -> Iterator[Tap]:
    """A Tap that, at the end, clears the retained statuses the test left on the shared broker."""
    t = Tap(settings, site)
    try:
        yield t
    finally:
        t.close()
        cleaner = make_client(settings, f"clean-{uuid.uuid4().hex[:12]}")
        cleaner.connect(settings.host, settings.port)
        cleaner.loop_start()
        for agent in agents:
            cleaner.publish(StatusTopic(site, agent).format(), b"", qos=1, retain=True).wait_for_publish(5)
        cleaner.disconnect()
        cleaner.loop_stop()


@contextlib.contextmanager
def running(runtimes: Sequence[AgentRuntime], stop_timeout_s: float = 5.0) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=Scheduler(runtimes, stop_timeout_s=stop_timeout_s).run, args=(stop,))
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive(), "the scheduler did not stop"


def waveform(seed: int = 1) -> WaveformSource:
    return WaveformSource(SimulatedOptions.model_validate({
        "seed": seed,
        "points": [
            {"metric": "temp_c", "unit": "degC", "base": 21, "amplitude": 2, "period_s": 60, "noise": 0.1},
            {"metric": "door_open", "type": "bool", "p_true": 0.3},
            {"metric": "mode", "type": "str", "values": ["auto", "manual"], "hold_s": 1},
        ],
    }))


def runtime(
    mqtt_settings: MqttSettings,
    site: str,
    agent: str,
    drivers: dict[str, Driver],
    *,
    interval_ms: int = 100,
    on_acked: Callable[[Publication], None] | None = None,
) -> AgentRuntime:
    core = Agent(site=site, agent=agent, devices=[PollPlan(d, interval_ms) for d in drivers], boot=wall_ms())
    return AgentRuntime(core, drivers, mqtt_settings, on_acked=on_acked)


# -- the sans-IO core ---------------------------------------------------------------------


def make_core(intervals: dict[str, int], *, max_readings: int = 500) -> Agent:
    plans = [PollPlan(d, ms) for d, ms in intervals.items()]
    return Agent(site="s1", agent="a1", devices=plans, boot=7, max_readings_per_message=max_readings)


def readings(n: int, ts: int = T0) -> list[Reading]:
    return [Reading(ts_ms=ts, metric=f"m{i}", value=float(i)) for i in range(n)]


def test_first_polls_are_spread_over_one_interval_then_run_at_a_fixed_rate() -> None:
    core = make_core({"d1": 1000, "d2": 1000, "d3": 1000, "d4": 1000})
    core.start(T0)
    assert core.due(T0) == ["d1"]
    assert core.due(T0 + 249) == []
    assert core.due(T0 + 250) == ["d2"]
    assert core.due(T0 + 999) == ["d3", "d4"]
    assert core.next_due_ms() == T0 + 1000
    # A poll handled 30 ms late does not push the next one back: no drift.
    assert core.due(T0 + 1030) == ["d1"]
    assert core.next_due_ms() == T0 + 1250


def test_a_late_poll_is_skipped_not_caught_up_in_a_burst() -> None:
    core = make_core({"d1": 100})
    core.start(T0)
    assert core.due(T0) == ["d1"]
    assert core.due(T0 + 1050) == ["d1"]  # ten polls late: one poll, not ten
    assert core.skipped_polls == 9
    assert core.next_due_ms() == T0 + 1150


def test_a_wall_clock_stepping_back_rebases_the_schedule() -> None:
    core = make_core({"d1": 1000})
    core.start(T0)
    core.due(T0)
    assert core.due(T0 - 3_600_000) == ["d1"]  # not an hour of silence
    assert core.next_due_ms() == T0 - 3_600_000 + 1000


def test_telemetry_is_batched_per_device_and_numbered_by_this_agent_only() -> None:
    core = make_core({"d1": 1000, "d2": 1000}, max_readings=3)
    other = make_core({"d1": 1000, "d2": 1000})
    pubs = core.telemetry("d1", readings(7)) + core.telemetry("d2", readings(2))
    assert [p.message.seq for p in pubs] == [0, 1, 2, 3]  # type: ignore[union-attr]
    assert [p.readings for p in pubs] == [3, 3, 1, 2]
    assert [p.topic for p in pubs] == [TelemetryTopic("s1", "a1", "d1").format()] * 3 + [
        TelemetryTopic("s1", "a1", "d2").format()
    ]
    assert all(p.qos == 1 and not p.retain for p in pubs)
    assert all(decode_telemetry(p.payload) == p.message for p in pubs)
    # The counter belongs to the instance: another agent starts from zero.
    assert other.telemetry("d1", readings(1))[0].message.seq == 0  # type: ignore[union-attr]
    assert core.telemetry("d1", []) == []
    assert core.seq == 4


def test_readings_that_break_the_contract_fail_the_poll_and_use_no_sequence_number() -> None:
    core = make_core({"d1": 1000})
    core.telemetry("d1", readings(1))
    with pytest.raises(DriverError, match=r"device d1: the driver returned invalid readings.*ts_ms"):
        core.telemetry("d1", [Reading(ts_ms=12, metric="x", value=1.0)])  # clock never set
    assert core.telemetry("d1", readings(1))[0].message.seq == 1  # type: ignore[union-attr]


def test_status_messages_are_retained_and_carry_the_boot_number() -> None:
    core = Agent(site="s1", agent="a1", boot=7, version="1.2.3",
                 devices=[PollPlan("d1", 1000, kind="pump"), PollPlan("d2", 1000, kind="door")])
    birth, will, bye = core.birth(T0), core.will(T0), core.goodbye(T0 + 5)
    assert {p.topic for p in (birth, will, bye)} == {StatusTopic("s1", "a1").format()}
    assert all(p.retain and p.qos == 1 for p in (birth, will, bye))
    # The birth announces version and device kinds; will and goodbye carry neither.
    assert decode_status(birth.payload) == Status(v=1, state="online", ts_ms=T0, boot=7, version="1.2.3",
                                                  devices={"d1": "pump", "d2": "door"})
    lost = Status(v=1, state="offline", ts_ms=T0, boot=7, reason="connection lost")
    assert decode_status(will.payload) == lost
    assert decode_status(bye.payload) == Status(v=1, state="offline", ts_ms=T0 + 5, boot=7, reason="stopped")


def test_device_health_is_reported_on_transitions_only() -> None:
    core = make_core({"d1": 1000})
    assert core.poll_succeeded("d1") == 0
    assert core.poll_failed("d1") is True
    assert core.poll_failed("d1") is False
    assert core.failing() == ("d1",)
    assert core.poll_succeeded("d1") == 2
    assert core.failing() == ()


def test_core_rejects_bad_ids_and_duplicate_devices() -> None:
    with pytest.raises(ValueError, match="agent id"):
        Agent(site="s", agent="a/b", devices=[PollPlan("d", 1000)], boot=0)
    with pytest.raises(ValueError, match="not unique"):
        Agent(site="s", agent="a", devices=[PollPlan("d", 1000), PollPlan("d", 50)], boot=0)


# -- boot number, simulated driver, settings ----------------------------------------------


def test_boot_number_grows_across_starts_even_if_the_clock_steps_back(tmp_path: Path) -> None:
    assert next_boot(T0) == T0
    state = tmp_path / "var" / "boot"
    first = next_boot(T0, state)
    assert first == T0
    assert next_boot(T0 - 86_400_000, state) == T0 + 1
    assert next_boot(T0 + 5000, state) == T0 + 5000
    state.write_text("garbage")
    with pytest.raises(EdgeError, match=r"boot file .* unreadable"):
        next_boot(T0, state)


def test_waveform_source_is_reproducible_from_its_seed() -> None:
    times = [T0 + i * 500 for i in range(40)]
    a, b, c = waveform(1), waveform(1), waveform(2)
    sa = [r for t in times for r in a.sample(t)]
    assert sa == [r for t in times for r in b.sample(t)]
    assert sa != [r for t in times for r in c.sample(t)]
    temps = [r.value for r in sa if r.metric == "temp_c"]
    assert all(isinstance(v, float) and 18 < v < 24 for v in temps)
    assert {r.value for r in sa if r.metric == "door_open"} == {True, False}
    assert {r.value for r in sa if r.metric == "mode"} == {"auto", "manual"}
    assert all(r.ts_ms in times for r in sa)


def test_simulated_driver_reads_any_signal_source() -> None:
    class Constant:
        def sample(self, now_ms: int) -> list[Reading]:
            return [Reading(ts_ms=now_ms, metric="x", value=1.0)]

    driver = SimulatedDriver(Constant())
    driver.start()
    assert driver.read(T0) == [Reading(ts_ms=T0, metric="x", value=1.0)]
    driver.stop()
    spec = DRIVERS["simulated"]
    info = DeviceInfo("s", "a", "d", "pump")
    built = spec.build(info, SimulatedOptions.model_validate({"points": [{"metric": "x", "base": 1}]}))
    assert built.read(T0) == [Reading(ts_ms=T0, metric="x", value=1.0)]


def test_edge_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIGIL_EDGE_CONFIG", str(tmp_path / "a.yaml"))
    monkeypatch.setenv("VIGIL_EDGE_MQTT__PORT", "1884")
    monkeypatch.setenv("VIGIL_EDGE_MAX_READINGS_PER_MESSAGE", "50")
    s = EdgeSettings.load()
    assert (s.config, s.mqtt.port, s.max_readings_per_message) == (tmp_path / "a.yaml", 1884, 50)
    assert EdgeSettings.section == "edge"


# -- the YAML config ------------------------------------------------------------------------

GOOD_CONFIG = """\
site: tower-a
agent: b1-gw1
devices:
  - id: pump-01
    kind: pump
    driver: simulated
    poll_interval_s: 5
    options:
      seed: 7
      points:
        - {metric: flow_lps, unit: L/s, base: 12, amplitude: 3, noise: 0.2}
        - {metric: running, type: bool, p_true: 0.98}
  - id: door-01
    kind: door
    driver: simulated
    options:
      points:
        - {metric: door_open, type: bool, p_true: 0.1}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def config_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(EdgeConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert str(path) in message
    return message


def test_a_good_config_loads_with_validated_driver_options(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD_CONFIG))
    assert (config.site, config.agent) == ("tower-a", "b1-gw1")
    assert [(d.id, d.kind, d.poll_interval_s) for d in config.devices] == [
        ("pump-01", "pump", 5.0),
        ("door-01", "door", 10.0),
    ]
    assert isinstance(config.devices[0].options, SimulatedOptions)
    assert config.devices[0].options.seed == 7


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("poll_interval_s: 5", "poll_interval_s: -1"),
         r"devices\[0\] \(pump-01\)\.poll_interval_s: Input should be greater than 0 \(got -1\)"),
        (("driver: simulated\n    poll", "driver: profibus\n    poll"),
         r"devices\[0\] \(pump-01\)\.driver: unknown driver 'profibus' \(known: [a-z, ]*simulated"),
        (("amplitude: 3", "amplitude: 3, perid_s: 60"),
         r"devices\[0\] \(pump-01\)\.options\.points\[0\]\.float\.perid_s: Extra inputs are not permitted"),
        (("p_true: 0.98", "p_true: 1.5"),
         r"devices\[0\] \(pump-01\)\.options\.points\[1\]\.bool\.p_true: Input should be less than or equal"),
        (("id: door-01", "id: pump-01"),
         r"devices\[1\] \(pump-01\)\.id: device id 'pump-01' is already used by devices\[0\]"),
        (("site: tower-a", "site: tower/a"), r"  site: Value error, site id 'tower/a' is invalid"),
        (("id: door-01", "id: cmd"), r"devices\[1\] \(cmd\)\.id: Value error, device id 'cmd' is reserved"),
        (("agent: b1-gw1\n", ""), r"  agent: Field required"),
    ],
    ids=["range", "driver", "typo", "option-range", "duplicate-id", "site-id", "reserved-id", "missing"],
)
def test_a_config_mistake_names_the_file_the_key_and_the_problem(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    assert change[0] in GOOD_CONFIG
    message = config_error(tmp_path, GOOD_CONFIG.replace(change[0], change[1], 1))
    assert message.startswith(f"invalid edge config {tmp_path / 'edge.yaml'}:")
    assert re.search(expected, message), message


def test_every_config_mistake_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD_CONFIG.replace("poll_interval_s: 5", "poll_interval_s: 0")
    text = text.replace("p_true: 0.1", "p_true: -1").replace("agent: b1-gw1", "agent: b1/gw1")
    message = config_error(tmp_path, text)
    assert "devices[0] (pump-01).poll_interval_s" in message
    assert "devices[1] (door-01).options.points[0].bool.p_true" in message
    assert "  agent: Value error, agent id 'b1/gw1' is invalid" in message


def test_yaml_syntax_errors_and_duplicate_keys_name_the_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, "site: a\nagent: [b\n")
    assert "is not valid YAML at line 3" in message
    message = config_error(tmp_path, GOOD_CONFIG.replace("kind: door", "kind: door\n    kind: pump"))
    assert "at line 15, column 5: while reading a mapping: " in message
    assert "found key 'kind' a second time (first at line 14)" in message


def test_unreadable_and_shapeless_configs_are_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgeConfigError, match=r"cannot read edge config .*missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
    assert "top level must be a mapping" in config_error(tmp_path, "- just\n- a list\n")
    with pytest.raises(EdgeConfigError, match="devices: List should have at least 1 item"):
        parse_config({"site": "s", "agent": "a", "devices": []})


# -- the runtime against the real broker ------------------------------------------------------


def test_agent_publishes_retained_birth_then_numbered_telemetry_then_graceful_offline(
    mqtt_settings: MqttSettings, site_id: str, tmp_path: Path
) -> None:
    text = GOOD_CONFIG.replace("tower-a", site_id).replace("poll_interval_s: 5", "poll_interval_s: 0.05")
    config = write(tmp_path, text.replace("kind: door", "kind: door\n    poll_interval_s: 0.1"))
    settings = EdgeSettings.load(mqtt=mqtt_settings, config=config)
    stop = threading.Event()
    with tap(mqtt_settings, site_id, ["b1-gw1"]) as t:
        thread = threading.Thread(target=run, args=(settings, stop))
        thread.start()
        try:
            assert t.wait_for(lambda: len([m for m in t.telemetry() if m[0].device == "door-01"]) >= 5)
            # A subscriber arriving now gets the retained birth.
            late = Tap(mqtt_settings, site_id)
            assert late.wait_for(lambda: bool(late.statuses()))
            (status, retained), = late.statuses()
            late.close()
            assert retained and status.state == "online" and status.boot > 0
        finally:
            stop.set()
            thread.join(10)
        assert not thread.is_alive()
        assert t.wait_for(lambda: t.statuses()[-1][0].state == "offline")

    statuses = [s for s, _ in t.statuses()]
    assert [s.state for s in statuses] == ["online", "offline"]
    assert statuses[1].reason == "stopped" and statuses[1].boot == statuses[0].boot
    telemetry = t.telemetry()
    seqs = [m.seq for _, m in telemetry]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] == 0
    for topic, message in telemetry:
        assert topic.site == site_id and topic.agent == "b1-gw1"
        metrics = {r.metric for r in message.readings}
        assert metrics == ({"flow_lps", "running"} if topic.device == "pump-01" else {"door_open"})
        assert all(abs(r.ts_ms - statuses[0].ts_ms) < 60_000 for r in message.readings)
    assert {topic.device for topic, _ in telemetry} == {"pump-01", "door-01"}


class Flaky:
    """A signal source that fails while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = threading.Event()

    def sample(self, now_ms: int) -> list[Reading]:
        if self.broken.is_set():
            raise ConnectionError("device does not answer")
        return [Reading(ts_ms=now_ms, metric="x", value=1.0)]


def test_a_failing_device_does_not_stop_the_others_and_is_logged_once(
    mqtt_settings: MqttSettings, site_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = Flaky()
    flaky.broken.set()
    acked: list[Publication] = []
    rt = runtime(
        mqtt_settings, site_id, "gw1",
        {"bad-01": SimulatedDriver(flaky), "good-01": SimulatedDriver(waveform())},
        interval_ms=20, on_acked=acked.append,
    )
    caplog.set_level(logging.INFO, logger="edge.runtime")

    def good_count() -> int:
        return len([m for m in t.telemetry() if m[0].device == "good-01"])

    with tap(mqtt_settings, site_id, ["gw1"]) as t, running([rt]):
        assert t.wait_for(lambda: good_count() >= 20)
        assert rt.stats().poll_failures >= 10 and rt.stats().devices_failing == 1
        flaky.broken.clear()
        assert t.wait_for(lambda: any(m[0].device == "bad-01" for m in t.telemetry()))
        n = good_count()
        assert t.wait_for(lambda: good_count() >= n + 5)
    stats = rt.stats()
    assert stats.devices_failing == 0 and stats.unacked == 0
    assert stats.messages_acked == stats.messages_published == len(acked)
    failing = [r for r in caplog.records if "poll failed" in r.getMessage()]
    recovered = [r for r in caplog.records if "recovered after" in r.getMessage()]
    assert len(failing) == 1 and "ConnectionError: device does not answer" in failing[0].getMessage()
    assert len(recovered) == 1 and f"{site_id}/gw1/bad-01" in recovered[0].getMessage()


def test_many_agents_in_one_process_share_one_scheduler(mqtt_settings: MqttSettings, site_id: str) -> None:
    agents = [f"gw{i}" for i in range(8)]
    rts = [runtime(mqtt_settings, site_id, a, {f"d{i}-{j}": SimulatedDriver(waveform(j)) for j in range(5)})
           for i, a in enumerate(agents)]
    with tap(mqtt_settings, site_id, agents) as t:
        with running(rts):
            assert t.wait_for(lambda: len({m[0].device for m in t.telemetry()}) == 40)
        assert t.wait_for(lambda: len([s for s, _ in t.statuses() if s.state == "offline"]) == 8)
    for rt in rts:
        s = rt.stats()
        assert s.messages_acked == s.messages_published > 0 and s.poll_failures == s.publish_failures == 0
        # Each agent numbers its own messages from 0.
        seqs = [m.seq for topic, m in t.telemetry() if topic.agent == rt.core.agent]
        assert sorted(seqs) == list(range(len(seqs)))


@pytest.mark.fault
def test_last_will_marks_the_agent_offline_when_its_process_is_killed(
    mqtt_settings: MqttSettings, site_id: str, tmp_path: Path
) -> None:
    config = write(tmp_path, GOOD_CONFIG.replace("tower-a", site_id))
    env = {
        **os.environ,
        "VIGIL_EDGE_CONFIG": str(config),
        "VIGIL_EDGE_MQTT__HOST": mqtt_settings.host,
        "VIGIL_EDGE_MQTT__PORT": str(mqtt_settings.port),
    }
    with tap(mqtt_settings, site_id, ["b1-gw1"]) as t:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "vigil"), "edge"], env=env, cwd=Path(__file__).parent.parent,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            ok = t.wait_for(lambda: any(s.state == "online" for s, _ in t.statuses()), timeout_s=15)
            assert ok, "the agent never came online"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        assert t.wait_for(lambda: t.statuses()[-1][0].state == "offline", timeout_s=10)
        online, offline = t.statuses()[0][0], t.statuses()[-1][0]
        assert offline.reason == "connection lost" and offline.boot == online.boot
        # The will is retained: a subscriber arriving later learns the agent is gone.
        late = Tap(mqtt_settings, site_id)
        assert late.wait_for(lambda: bool(late.statuses()))
        (status, retained), = late.statuses()
        late.close()
        assert retained and status.state == "offline" and status.reason == "connection lost"


@pytest.mark.fault
def test_an_agent_rides_out_a_broker_restart_and_delivers_what_it_queued(
    private_mosquitto: MosquittoFactory, caplog: pytest.LogCaptureFixture
) -> None:
    host, port, stop_broker = private_mosquitto()
    settings = MqttSettings(host=host, port=port)
    acked: list[Publication] = []
    rt = runtime(
        settings, "s1", "gw1", {"d1": SimulatedDriver(waveform())}, interval_ms=20, on_acked=acked.append
    )
    caplog.set_level(logging.INFO, logger="edge.runtime")
    with running([rt]):
        assert rt.online.wait(5)
        stop_broker()
        time.sleep(0.3)  # polls go on while the broker is away; paho keeps the messages
        assert not rt.online.is_set()
        assert rt.stats().unacked >= 5
        queued_up_to = rt.core.seq
        private_mosquitto(port=port)

        def delivered() -> set[int]:
            return {p.message.seq for p in list(acked) if isinstance(p.message, Telemetry)}

        deadline = time.monotonic() + 10
        while not set(range(queued_up_to)) <= delivered() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(range(queued_up_to)) <= delivered()
    assert rt.stats().unacked == 0
    births = [p for p in acked if isinstance(p.message, Status) and p.message.state == "online"]
    assert len(births) == 2  # a new retained online status after the reconnect
    seqs = sorted(p.message.seq for p in acked if isinstance(p.message, Telemetry))
    assert seqs == list(range(len(seqs)))  # no gap: what was queued in the outage was delivered
    lost = [r for r in caplog.records if "lost the broker" in r.getMessage()]
    assert len(lost) == 1


# -- commands and health ----------------------------------------------------------------------


def test_rebirth_and_reload_commands_and_the_health_report(
    mqtt_settings: MqttSettings, site_id: str, tmp_path: Path
) -> None:
    text = (GOOD_CONFIG.replace("tower-a", site_id).replace("poll_interval_s: 5", "poll_interval_s: 0.1")
            .replace("kind: door", "kind: door\n    poll_interval_s: 0.1"))
    config = write(tmp_path, text)
    settings = EdgeSettings.load(mqtt=mqtt_settings, config=config, health_interval_s=0.5)
    agent = "b1-gw1"
    cmd = make_client(mqtt_settings, f"cmd-{uuid.uuid4().hex[:8]}")
    cmd.connect(mqtt_settings.host, mqtt_settings.port)
    cmd.loop_start()
    healths: list[AgentHealth] = []
    watcher = make_client(mqtt_settings, f"health-{uuid.uuid4().hex[:8]}")
    watcher.on_message = lambda c, u, m: (healths.append(decode_health(bytes(m.payload)))
                                          if m.payload else None)
    watcher.connect(mqtt_settings.host, mqtt_settings.port)
    watcher.subscribe(health_filter(site_id), 1)
    watcher.loop_start()

    def command(name: str) -> None:
        cmd.publish(CommandTopic(site_id, agent, name).format(), b"", qos=1).wait_for_publish(5)

    def births() -> list[Status]:
        return [s for s, _ in t.statuses() if s.state == "online"]

    stop = threading.Event()
    thread = threading.Thread(target=run, args=(settings, stop))
    with tap(mqtt_settings, site_id, [agent]) as t:
        thread.start()
        try:
            assert t.wait_for(lambda: len(births()) == 1 and len(t.telemetry()) >= 4)
            assert births()[0].devices == {"pump-01": "pump", "door-01": "door"} and births()[0].version
            command("rebirth")
            assert t.wait_for(lambda: len(births()) == 2)
            # A config that does not load is refused: the old one keeps running, the health says why.
            config.write_text(text.replace("id: door-01", "id: door/01"))
            command("reload")
            assert t.wait_for(lambda: any(h.config_error for h in healths), 5), healths[-1:]
            err = next(h.config_error for h in healths if h.config_error)
            assert "devices[1] (door/01).id" in err and str(config) in err
            n = len(t.telemetry())
            assert t.wait_for(lambda: len(t.telemetry()) >= n + 4)
            # A good one replaces devices and drivers; the birth announces the new list.
            config.write_text(text.replace("id: door-01", "id: door-02"))
            command("reload")
            assert t.wait_for(lambda: births()[-1].devices == {"pump-01": "pump", "door-02": "door"})
            assert t.wait_for(lambda: any(m[0].device == "door-02" for m in t.telemetry()))
            assert t.wait_for(lambda: not healths[-1].config_error and "door-02" in healths[-1].devices)
        finally:
            stop.set()
            thread.join(10)
            for c in (cmd, watcher):
                c.disconnect()
                c.loop_stop()
    seqs = [m.seq for _, m in t.telemetry()]
    assert seqs == list(range(len(seqs)))  # numbering went on across reloads, no gap, no reset
    h = healths[-1]
    assert h.boot == births()[0].boot and h.outbox_depth > 0  # no ingest here: nothing acknowledged
    assert h.oldest_unacked_age_s > 0 and h.dropped == 0 and h.devices["pump-01"].state == "online"
    # The outbox kept numbering and boot epoch: a second run continues both.
    stop2 = threading.Event()
    thread = threading.Thread(target=run, args=(settings, stop2))
    with tap(mqtt_settings, site_id, [agent]) as t2:
        thread.start()
        try:
            assert t2.wait_for(lambda: any(not m.historical for _, m in t2.telemetry()))
        finally:
            stop2.set()
            thread.join(10)
        new_births = [s for s, _ in t2.statuses() if s.state == "online"]
        assert new_births and new_births[-1].boot > h.boot
        live = [m.seq for _, m in t2.telemetry() if not m.historical]
        assert min(live) >= len(seqs)


def test_broker_credentials_and_tls_settings(
    private_mosquitto: MosquittoFactory, tmp_path: Path, site_id: str
) -> None:
    with pytest.raises(ConfigError, match="password is set but username is not"):
        EdgeSettings.load(mqtt={"password": "x"})
    with pytest.raises(ConfigError, match="set tls = true"):
        EdgeSettings.load(mqtt={"ca_file": str(tmp_path / "ca.pem")})
    assert EdgeSettings.load().mqtt.username is None  # no default credentials
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "edge", "s3cret"], check=True)
    host, port, _stop = private_mosquitto(["allow_anonymous false", f"password_file {passwords}"])
    good = MqttSettings(host=host, port=port, username="edge", password="s3cret")
    bad = MqttSettings(host=host, port=port, username="edge", password="wrong")
    ok = runtime(good, site_id, "gw1", {"d1": SimulatedDriver(waveform())})
    refused = runtime(bad, site_id, "gw2", {"d1": SimulatedDriver(waveform())})
    with running([ok, refused]):
        assert ok.online.wait(10)
        assert not refused.online.wait(1.5)


def test_agent_connects_over_tls_to_a_broker_it_trusts(
    private_mosquitto: MosquittoFactory, tmp_path: Path, site_id: str
) -> None:
    ca_key, ca, key, csr, cert = (tmp_path / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    ssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
           "-keyout", str(ca_key), "-out", str(ca)]
    subprocess.run(ssl, check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                    "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert)],
                   check=True, capture_output=True)
    host, port, _stop = private_mosquitto([f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"])
    tls = runtime(MqttSettings(host=host, port=port, tls=True, ca_file=ca), site_id, "gw1",
                  {"d1": SimulatedDriver(waveform())})
    plain = runtime(MqttSettings(host=host, port=port), site_id, "gw2", {"d1": SimulatedDriver(waveform())})
    with running([tls, plain]):
        assert tls.online.wait(10)
        assert not plain.online.wait(1.5)  # the listener speaks TLS only
