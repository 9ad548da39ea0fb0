"""Device models (deterministic, plausible, coupled) and the fleet, run through real edge
agents against the real Mosquitto on 127.0.0.1:1883. Faults, ground truth and scoring are
in test_simulators_faults.py; events, speed and scale in test_fleet.py."""

from __future__ import annotations

import contextlib
import itertools
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial

import pytest

from edge.drivers import SignalSource
from simulators.errors import SimError
from simulators.fleet import DEFAULT_KINDS, Recorder, build_fleet, plan_fleet, site_id
from simulators.models import DAY_MS, HOUR_MS, MODELS, Building, DeviceModel, occupancy
from simulators.runner import run
from simulators.settings import SimSettings
from tests.test_edge import Tap, tap
from wire import ConfigError, MqttSettings, Reading, TelemetryTopic, decode_telemetry, parse_topic

MONDAY_MIDNIGHT = 1_799_020_800_000  # 2027-01-04T00:00:00Z, a Monday


def week(step_min: int = 5) -> list[int]:
    return list(range(MONDAY_MIDNIGHT, MONDAY_MIDNIGHT + 7 * DAY_MS, step_min * 60_000))


def series(model: DeviceModel, times: list[int]) -> dict[str, list[float | bool | str]]:
    out: dict[str, list[float | bool | str]] = {}
    for t in times:
        for r in model.sample(t):
            assert r.ts_ms == t
            out.setdefault(r.metric, []).append(r.value)
    return out


# -- models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_model_is_reproducible_from_its_seed(kind: str) -> None:
    times = [MONDAY_MIDNIGHT + 9 * HOUR_MS + i * 2000 for i in range(1800)]
    cls = MODELS[kind]
    a, b, c = cls("x-01", 42), cls("x-01", 42), cls("x-01", 43)
    sa = [r for t in times for r in a.sample(t)]
    assert sa == [r for t in times for r in b.sample(t)]
    assert sa != [r for t in times for r in c.sample(t)]


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_model_reports_exactly_its_metrics_with_their_types(kind: str) -> None:
    model: SignalSource = MODELS[kind]("x-01", 1)
    readings = model.sample(MONDAY_MIDNIGHT)
    assert [r.metric for r in readings] == [m.name for m in MODELS[kind].metrics]
    for r in readings:
        assert isinstance(r, Reading)
        assert type(r.value) in (float, bool, str), (r.metric, type(r.value))


# Plausible ranges (kind, metric) -> (low, high), inclusive, for any seed, over a week.
RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "pump": {"flow_lps": (3, 26), "pressure_kpa": (60, 450), "motor_current_a": (1, 40),
             "vibration_mm_s": (0, 2.8), "bearing_temp_c": (25, 70), "running_hours": (2000, 40_200)},
    "chiller": {"chw_supply_c": (5, 8.5), "chw_return_c": (6, 14), "power_kw": (10, 400), "cop": (3.5, 7),
                "load_pct": (10, 100)},
    "ahu": {"supply_air_c": (11, 18), "return_air_c": (19, 27), "fan_speed_pct": (0, 100),
            "filter_dp_pa": (10, 350), "valve_pct": (0, 100)},
    "power_meter": {"power_kw": (30, 700), "energy_kwh": (1e4, 1e6), "power_factor": (0.8, 1.0),
                    "voltage_v": (218, 236)},
    "space_sensor": {"temp_c": (17, 27), "rh_pct": (25, 70), "co2_ppm": (380, 1500)},
    "lift": {"trips": (1e4, 2.1e6), "door_cycles": (2e4, 4.2e6), "motor_current_a": (0, 70)},
    "fire_panel": {"battery_v": (26, 28), "zones_in_alarm": (0, 0)},
    "camera": {"bitrate_kbps": (300, 6000), "fps": (15, 30)},
    "nvr": {"recording_channels": (16, 64), "write_mbps": (10, 160), "disk_used_pct": (80, 100)},
    "leak_sensor": {"battery_pct": (0, 100), "temp_c": (10, 30)},
}


def floats(values: list[float | bool | str]) -> list[float]:
    assert all(type(v) is float for v in values)
    return [float(v) for v in values]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_models_are_plausible_over_a_week(seed: int) -> None:
    times = week()
    for kind, ranges in RANGES.items():
        values = series(MODELS[kind](f"{kind}-01", seed), times)
        for metric, (low, high) in ranges.items():
            xs = floats(values[metric])
            assert low <= min(xs) and max(xs) <= high, (kind, metric, min(xs), max(xs))

    chiller = series(MODELS["chiller"]("chiller-01", seed), times)
    supply, back = floats(chiller["chw_supply_c"]), floats(chiller["chw_return_c"])
    assert all(r - s > 0.5 for s, r in zip(supply, back, strict=True))
    energy = floats(series(MODELS["power_meter"]("power-meter-01", seed), times)["energy_kwh"])
    assert all(b >= a for a, b in itertools.pairwise(energy)) and energy[-1] > energy[0]

    door = series(MODELS["door"]("door-01", seed), [MONDAY_MIDNIGHT + i * 1000 for i in range(86_400)])
    assert set(door["door_open"]) == set(door["locked"]) == {True, False}
    assert {"secure", "unlocked", "open"} <= set(door["state"]) <= {"secure", "unlocked", "open", "held_open"}
    # The door is open only when the panel says so.
    opened = [s in ("open", "held_open") for s in door["state"]]
    assert opened == door["door_open"]


def test_load_follows_office_hours_on_weekdays() -> None:
    monday, saturday = MONDAY_MIDNIGHT, MONDAY_MIDNIGHT + 5 * DAY_MS
    assert occupancy(monday + 3 * HOUR_MS) == 0.0
    assert occupancy(monday + 12 * HOUR_MS) == 1.0
    assert occupancy(saturday + 12 * HOUR_MS) == 0.25
    assert occupancy(monday + 12 * HOUR_MS, utc_offset_h=-12) == 0.0  # midnight local time
    meter = MODELS["power_meter"]("power-meter-01", 1)
    night, noon = (floats(series(meter, [monday + h * HOUR_MS])["power_kw"])[0] for h in (3, 12))
    assert noon > 1.5 * night
    room = MODELS["space_sensor"]("space-sensor-01", 1)
    co2 = floats(series(room, [monday + h * HOUR_MS for h in range(24)])["co2_ppm"])
    assert co2[15] > co2[4] + 200


# -- the fleet plan ---------------------------------------------------------------------------


def test_the_default_plan_is_60_devices_of_every_kind_on_10_agents_in_2_sites() -> None:
    plan = plan_fleet(seed=1)
    assert plan.sites == ("tower-a", "mall-b")
    assert [a.agent for a in plan.agents] == [f"b{s}-gw{g}" for s in (1, 2) for g in range(1, 6)]
    devices = plan.devices
    assert len(devices) == 60 and len({d.device for d in devices}) == 60
    counts = Counter(d.kind for d in devices)
    assert set(counts) == set(DEFAULT_KINDS) and max(counts.values()) - min(counts.values()) <= 1
    assert {"pump-01", "pump-06", "power-meter-03", "leak-sensor-05"} <= {d.device for d in devices}
    for site in plan.sites:  # every site, and every agent, gets a mix of kinds
        assert len({d.kind for a in plan.agents if a.site == site for d in a.devices}) == len(DEFAULT_KINDS)
    assert all(len({d.kind for d in a.devices}) == 6 for a in plan.agents)
    assert len({a.building_seed for a in plan.agents}) == 2  # one building per site
    assert plan_fleet(seed=1) == plan
    assert plan_fleet(seed=2).devices[0].seed != devices[0].seed
    # The seed of a device does not depend on its site's name.
    renamed = plan_fleet(seed=1, site_ids=["x1", "x2"])
    assert [d.seed for d in renamed.devices] == [d.seed for d in devices]


def test_plan_options_and_mistakes() -> None:
    plan = plan_fleet(devices=7, sites=3, agents_per_site=2, kinds=["pump", "door"])
    assert plan.sites == ("tower-a", "mall-b", "estate-c")
    assert sum(len(a.devices) for a in plan.agents) == 7
    assert all(a.devices for a in plan.agents)  # no agent without devices
    assert [site_id(i) for i in (0, 25, 26, 27)] == ["tower-a", "mall-z", "estate-aa", "tower-ab"]
    with pytest.raises(SimError, match=r"unknown device kinds \['boiler'\]"):
        plan_fleet(kinds=["pump", "boiler"])
    with pytest.raises(SimError, match="site_ids must be 2 distinct ids"):
        plan_fleet(site_ids=["a", "a"])
    with pytest.raises(SimError, match="site id 'a/b' is invalid"):
        plan_fleet(sites=1, site_ids=["a/b"])


def test_sim_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_SIM_KINDS", '["pump", "door"]')
    monkeypatch.setenv("VIGIL_SIM_DEVICES", "12")
    s = SimSettings.load()
    assert (s.kinds, s.devices, s.sites, s.duration_s) == (("pump", "door"), 12, 2, 0.0)
    monkeypatch.setenv("VIGIL_SIM_KINDS", '["pump", "boiler"]')
    with pytest.raises(ConfigError, match=r"VIGIL_SIM_KINDS.*unknown device kinds \['boiler'\]"):
        SimSettings.load()


# -- the fleet on the real broker ---------------------------------------------------------------


@contextlib.contextmanager
def taps(settings: MqttSettings, sites: dict[str, list[str]]) -> Iterator[list[Tap]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(tap(settings, site, agents)) for site, agents in sites.items()]


def offline_count_is(t: Tap, n: int) -> bool:
    return [s.state for s, _ in t.statuses()].count("offline") == n


def test_a_fleet_of_60_devices_in_2_sites_publishes_exactly_what_it_recorded(
    mqtt_settings: MqttSettings, site_id: str
) -> None:
    settings = SimSettings.load(
        mqtt=mqtt_settings, seed=3, devices=60, sites=2, site_ids=(f"{site_id}-a", f"{site_id}-b"),
        agents_per_site=5, interval_s=0.25, duration_s=1.5,
    )
    plan = plan_fleet(seed=3, devices=60, sites=2, site_ids=settings.site_ids)
    recorder = Recorder()
    agents: dict[str, list[str]] = {}
    for a in plan.agents:
        agents.setdefault(a.site, []).append(a.agent)
    with taps(mqtt_settings, agents) as site_taps:
        started = time.monotonic()
        run(settings, threading.Event(), on_acked=recorder)  # returns after duration_s
        assert 1.5 <= time.monotonic() - started < 10

        recorded = {(p.topic, p.payload) for p in recorder.publications() if p.readings}
        assert len(recorded) == len(recorder.telemetry())  # nothing was acknowledged twice

        def received() -> set[tuple[str, bytes]]:
            return {(topic, payload) for t in site_taps for topic, payload, _ in list(t.messages)
                    if isinstance(parse_topic(topic), TelemetryTopic)}

        assert site_taps[0].wait_for(lambda: received() >= recorded, timeout_s=10)
        assert received() == recorded  # every reading arrived, and nothing else was sent
        for t in site_taps:
            assert t.wait_for(partial(offline_count_is, t, 5))

    telemetry = [(parse_topic(topic), decode_telemetry(payload)) for topic, payload in recorded]
    devices = {(t.site, t.device) for t, _ in telemetry}  # type: ignore[union-attr]
    assert len(devices) == 60
    kinds = {d.kind for d in plan.devices}
    assert len(kinds) >= 4
    assert sum(len(m.readings) for _, m in telemetry) == recorder.readings()
    for t in site_taps:
        states = [(s.state, s.reason) for s, _ in t.statuses()]
        assert Counter(states) == {("online", ""): 5, ("offline", "stopped"): 5}


def test_fleet_agents_report_counters_and_stop_cleanly(mqtt_settings: MqttSettings, site_id: str) -> None:
    plan = plan_fleet(seed=5, devices=12, sites=1, agents_per_site=3, site_ids=[site_id], interval_s=0.05)
    fleet = build_fleet(plan, mqtt_settings)
    stop = threading.Event()
    with tap(mqtt_settings, site_id, [a.agent for a in plan.agents]) as t:
        thread = threading.Thread(target=fleet.run, args=(stop,))
        thread.start()
        try:
            assert fleet.wait_online(5)
            assert t.wait_for(lambda: len(t.telemetry()) >= 60)
        finally:
            stop.set()
            thread.join(10)
    stats = fleet.stats()
    assert [s.agent for s in stats] == ["b1-gw1", "b1-gw2", "b1-gw3"]
    for s in stats:
        assert s.messages_published == s.messages_acked > 0
        assert s.readings_published == s.readings_acked > 0
        assert s.poll_failures == s.publish_failures == s.unacked == 0
        assert not s.connected


def test_a_site_is_coupled_through_its_building() -> None:
    """Load drives everything: at a busy hot afternoon the chiller, its pumps, the AHU
    valve, the meter and the room all sit higher than at night, and a chiller's water
    temperatures and power agree with its load."""
    building = Building(7)
    night, day = MONDAY_MIDNIGHT + 3 * HOUR_MS, MONDAY_MIDNIGHT + 14 * HOUR_MS
    assert building.at(day).cooling > building.at(night).cooling + 0.3
    assert building.at(day) == Building(7).at(day)  # a pure function of seed and time
    assert building.outdoor_c(day) != Building(8).outdoor_c(day)

    def at(kind: str, t: int, metric: str) -> float:
        model = MODELS[kind](f"{kind}-01", 3, building=building)
        return float(sum(floats(series(model, [t + i * 60_000 for i in range(30)])[metric][-10:])) / 10)

    for kind, metric in [("chiller", "power_kw"), ("chiller", "load_pct"), ("pump", "flow_lps"),
                         ("pump", "motor_current_a"), ("ahu", "valve_pct"), ("power_meter", "power_kw"),
                         ("space_sensor", "co2_ppm"), ("camera", "bitrate_kbps"), ("nvr", "write_mbps")]:
        assert at(kind, day, metric) > at(kind, night, metric), (kind, metric)
    chiller = series(MODELS["chiller"]("chiller-01", 3, building=building),
                     [MONDAY_MIDNIGHT + i * 600_000 for i in range(144)])
    supply, back = floats(chiller["chw_supply_c"]), floats(chiller["chw_return_c"])
    dt = [r - s for s, r in zip(supply, back, strict=True)]
    load = floats(chiller["load_pct"])
    assert statistics.correlation(dt, load) > 0.95
    assert statistics.correlation(floats(chiller["power_kw"]), load) > 0.9


def test_counters_never_decrease_and_states_are_declared() -> None:
    times = [MONDAY_MIDNIGHT + 8 * HOUR_MS + i * 5000 for i in range(2000)]
    lift = series(MODELS["lift"]("lift-01", 2), times)
    for counter in ("trips", "door_cycles"):
        xs = floats(lift[counter])
        assert all(b >= a for a, b in itertools.pairwise(xs)) and xs[-1] > xs[0]
    hours = floats(series(MODELS["pump"]("pump-01", 2), times)["running_hours"])
    assert all(b >= a for a, b in itertools.pairwise(hours)) and hours[-1] - hours[0] > 2.5
    panel = series(MODELS["fire_panel"]("fire-panel-01", 2), times)
    assert set(panel["state"]) == {"normal"} and set(panel["alarm"]) == {False}  # no fault, no alarm
    assert set(series(MODELS["leak_sensor"]("leak-sensor-01", 2), times)["leak"]) == {False}
    camera = series(MODELS["camera"]("camera-01", 2), times)
    assert set(camera["online"]) == set(camera["recording"]) == {True}
    assert set(lift["fault_code"]) == {"none"}
