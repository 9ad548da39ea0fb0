"""Injected faults: every kind moves its device's signals as its ground truth says; scenario
files, random plans and ground-truth files; scoring and its commands (record-anomalies
against the real Mosquitto on 127.0.0.1:1883)."""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from simulators.errors import SimError
from simulators.faults import FAULTS, SENSOR_FAULTS, Fault, expected_effects
from simulators.fleet import plan_fleet
from simulators.models import HOUR_MS, MODELS, Building, DeviceModel, UnreachableError
from simulators.record_command import record
from simulators.scenario import (
    load_scenario,
    parse_duration_s,
    random_faults,
    read_ground_truth,
    sensor_metrics,
    truncate,
    write_ground_truth,
)
from simulators.score import Detection, format_report, load_anomalies, score
from simulators.settings import SimSettings
from wire import AlarmTopic, MqttSettings
from wire.anomaly import Anomaly
from wire.mqtt import make_client

MONDAY_6AM = 1_799_020_800_000 + 6 * HOUR_MS  # 2027-01-04T06:00Z: the morning ramp follows
STEP_MS = 15_000
FAULT_START = MONDAY_6AM + HOUR_MS
FAULT_END = FAULT_START + 3 * HOUR_MS


def cases() -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = []
    for name, kind in FAULTS.items():
        if name in SENSOR_FAULTS:
            out += [(name, "pump", "flow_lps"), (name, "space_sensor", "temp_c"), (name, "nvr", "write_mbps")]
        elif name in ("comm_loss", "device_offline"):
            out += [(name, "chiller", None), (name, "door", None)]
        else:
            out += [(name, k, None) for k in kind.kinds]
    return out


Sample = tuple[int, dict[str, float | bool | str] | None]


def run_model(model: DeviceModel, times: list[int]) -> tuple[list[Sample], list[tuple[int, str]]]:
    samples: list[Sample] = []
    events: list[tuple[int, str]] = []
    for t in times:
        try:
            values = {r.metric: r.value for r in model.read(t)}
        except UnreachableError:
            samples.append((t, None))
        else:
            samples.append((t, values))
        events += [(e.ts_ms, e.kind) for e in model.take_events()]
    return samples, events


def floats(samples: list[Sample], metric: str, lo: int, hi: int) -> list[float]:
    return [float(v[metric]) for t, v in samples if v is not None and lo <= t < hi]


@pytest.mark.parametrize(("fault", "kind", "metric"), cases())
def test_every_fault_moves_its_metrics_as_the_ground_truth_says(
    fault: str, kind: str, metric: str | None
) -> None:
    times = list(range(MONDAY_6AM, FAULT_END + HOUR_MS // 2, STEP_MS))
    building = Building(11)
    f = Fault(device=f"{kind}-01", fault=fault, start_ms=FAULT_START, end_ms=FAULT_END, metric=metric,
              effects=expected_effects(fault, metric, [m.name for m in MODELS[kind].metrics]))
    clean, clean_events = run_model(MODELS[kind](f"{kind}-01", 5, building=building), times)
    faulted, events = run_model(MODELS[kind](f"{kind}-01", 5, building=building, faults=[f]), times)
    # Nothing changes before the fault starts.
    assert [s for s in faulted if s[0] < FAULT_START] == [s for s in clean if s[0] < FAULT_START]
    assert f.effects, "every fault says what it does"
    late = FAULT_START + 2 * HOUR_MS  # wear and leaks grow: compare the last hour of the fault
    during = [v for t, v in faulted if FAULT_START + 60_000 <= t < FAULT_END]
    for name, effect in f.effects.items():
        scale = next((m.scale for m in MODELS[kind].metrics if m.name == name), None)
        if effect in ("up", "down"):
            a, b = floats(clean, name, late, FAULT_END), floats(faulted, name, late, FAULT_END)
            shift = statistics.fmean(b) - statistics.fmean(a)
            assert (shift if effect == "up" else -shift) > 0.1 * (scale or 1.0), (name, effect, shift)
        elif effect == "flat":
            b = floats(faulted, name, FAULT_START + 60_000, FAULT_END)
            a = floats(clean, name, FAULT_START + 60_000, FAULT_END)
            assert statistics.pstdev(b) < 0.5 * statistics.pstdev(a), (name, statistics.pstdev(b))
        elif effect == "noisy":
            a, b = floats(clean, name, FAULT_START, FAULT_END), floats(faulted, name, FAULT_START, FAULT_END)
            da = [y - x for x, y in itertools.pairwise(a)]
            db = [y - x for x, y in itertools.pairwise(b)]
            assert statistics.pstdev(db) > 2 * statistics.pstdev(da), name
        elif effect == "spikes":
            a, b = floats(clean, name, FAULT_START, FAULT_END), floats(faulted, name, FAULT_START, FAULT_END)
            assert max(abs(y - x) for x, y in zip(a, b, strict=True)) > 3 * (scale or 1.0)
        elif effect == "gaps":
            assert during.count(None) > len(during) / 3 and any(v is not None for v in during)
        elif effect == "missing":
            assert all(v is None for v in during)
        elif effect in ("true", "false"):
            assert {v[name] for v in during if v is not None} == {effect == "true"}, name
        elif effect.startswith("="):
            settled = [v for t, v in faulted if FAULT_START + 60_000 <= t < FAULT_END and v is not None]
            assert {v[name] for v in settled} == {effect[1:]}, name
        elif effect.startswith("event:"):
            # Raised once, when the fault shows; never without the fault.
            assert [k for _, k in events if k == effect[6:]] == [effect[6:]]
            ((ts, _),) = [(t, k) for t, k in events if k == effect[6:]]
            assert FAULT_START <= ts <= FAULT_START + 60_000
            if effect != "event:door_held_open":  # visitors prop doors open without a fault too
                assert effect[6:] not in {k for _, k in clean_events}
        else:
            pytest.fail(f"unknown effect {effect!r}")
    # After the fault, the device reports again (wear, leaks and clogs persist until repaired,
    # but nothing stays offline and no sensor stays stuck).
    after = [v for t, v in faulted if t >= FAULT_END]
    assert all(v is not None for v in after)


def test_every_fault_applies_to_some_kind_and_every_kind_can_fail() -> None:
    assert all(set(k.kinds) <= set(MODELS) for k in FAULTS.values())
    for kind in MODELS:
        assert [n for n, k in FAULTS.items() if kind in k.kinds and n not in ("comm_loss", "device_offline")]
    for kind in ("pump", "chiller", "ahu", "power_meter", "space_sensor", "lift", "nvr"):
        assert sensor_metrics(kind)


# -- scenario files ------------------------------------------------------------------------

PLACES = [p for p in plan_fleet(seed=1, devices=22).placements()]
T0 = 1_800_000_000_000


def test_a_scenario_file_names_its_faults(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "faults:\n"
        "  - {device: pump-01, fault: bearing_wear, start: 10m, duration: 4h, strength: 1.5}\n"
        "  - {device: space-sensor-02, fault: sensor_drift, metric: co2_ppm, start: 90, duration: 1h30m}\n"
        "  - {device: door-01, fault: door_forced, start: '2027-01-15T08:00:00Z', duration: 2m}\n"
        "random: {rate_per_day: 2, seed: 9}\n"
    )
    scenario = load_scenario(path, PLACES, T0)
    a, b, c = scenario.faults
    assert (a.device, a.fault, a.start_ms, a.end_ms, a.strength) == ("pump-01", "bearing_wear", T0 + 600_000,
                                                                     T0 + 600_000 + 4 * HOUR_MS, 1.5)
    assert (a.site, a.agent, a.device_kind) == ("tower-a", "b1-gw1", "pump")
    assert a.effects == {"vibration_mm_s": "up", "bearing_temp_c": "up"}
    assert (b.metric, b.start_ms, b.end_ms - b.start_ms, b.effects) == ("co2_ppm", T0 + 90_000, 5_400_000,
                                                                       {"co2_ppm": "up"})
    assert c.start_ms == int(datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp() * 1000)  # an absolute time
    assert c.effects == {"door_open": "true", "state": "=forced", "event": "event:door_forced"}
    assert scenario.random is not None and (scenario.random.rate_per_day, scenario.random.seed) == (2, 9)
    assert [parse_duration_s(x) for x in (90, "90s", "10m", "1h30m", "1d")] == [90, 90, 600, 5400, 86400]


def test_every_mistake_in_a_scenario_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "faults:\n"
        "  - {device: pump-99, fault: bearing_wear, duration: 1h}\n"
        "  - {device: door-01, fault: bearing_wear, duration: 1h}\n"
        "  - {device: pump-01, fault: bearing_whine, duration: 1h}\n"
        "  - {device: pump-01, fault: sensor_stuck, metric: co2_ppm, duration: 1h}\n"
        "  - {device: pump-01, fault: cavitation, duration: soon}\n"
        "  - {device: pump-01, fault: cavitation, duration: 1h, strenght: 2}\n"
        "  - {device: pump-01, fault: cavitation, duration: 1h, start: '2027-01-15T08:00:00'}\n"
    )
    with pytest.raises(SimError) as e:
        load_scenario(path, PLACES, T0)
    text = str(e.value)
    for expected in (
        f"invalid scenario {path}",
        "faults[0] (pump-99).device: no device 'pump-99' in this fleet",
        "faults[1] (door-01).fault: bearing_wear does not apply to a door (it applies to pump)",
        "faults[2] (pump-01).fault: Value error, unknown fault 'bearing_whine'",
        "faults[3] (pump-01).metric: a pump has no sensor 'co2_ppm'",
        "faults[4] (pump-01).duration: Value error, expected a duration such as 90, 90s, 10m or 1h30m, "
        "got 'soon'",
        "faults[5] (pump-01).strenght: Extra inputs are not permitted",
        "faults[6] (pump-01).start: Value error, start '2027-01-15T08:00:00' has no UTC offset",
    ):
        assert expected in text, (expected, text)
    (tmp_path / "worse.yaml").write_text("faults: [\n")
    with pytest.raises(SimError, match="is not valid YAML"):
        load_scenario(tmp_path / "worse.yaml", PLACES, T0)


def test_random_faults_are_reproducible_per_device_and_never_overlap() -> None:
    a = random_faults(PLACES, seed=3, rate_per_day=6, start_ms=T0, horizon_s=7 * 86400)
    assert a == random_faults(PLACES, seed=3, rate_per_day=6, start_ms=T0, horizon_s=7 * 86400)
    assert a != random_faults(PLACES, seed=4, rate_per_day=6, start_ms=T0, horizon_s=7 * 86400)
    # A device's faults do not depend on the rest of the fleet.
    alone = random_faults([PLACES[0]], seed=3, rate_per_day=6, start_ms=T0, horizon_s=7 * 86400)
    assert alone == [f for f in a if f.device == PLACES[0].device]
    assert 0.6 * 22 * 6 * 7 < len(a) < 1.1 * 22 * 6 * 7  # durations take some of the time
    assert {f.fault for f in a} == set(FAULTS)
    for place in PLACES:
        mine = [f for f in a if f.device == place.device]
        assert all(x.end_ms <= y.start_ms for x, y in itertools.pairwise(mine))
        assert all(place.kind in FAULTS[f.fault].kinds for f in mine)
        assert all(f.metric in sensor_metrics(place.kind) for f in mine if f.fault in SENSOR_FAULTS)
    assert random_faults(PLACES, seed=3, rate_per_day=0, start_ms=T0, horizon_s=86400) == []


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_ground_truth_round_trips_and_truncates_to_the_run(tmp_path: Path, suffix: str) -> None:
    faults = random_faults(PLACES, seed=3, rate_per_day=6, start_ms=T0, horizon_s=86400)
    path = tmp_path / f"truth{suffix}"
    write_ground_truth(path, faults, seed=3)
    assert read_ground_truth(path) == faults
    end = T0 + 6 * HOUR_MS
    cut = truncate(faults, end)
    assert cut and all(f.start_ms < end and f.end_ms <= end for f in cut)
    assert len(cut) == sum(1 for f in faults if f.start_ms < end)
    text = path.read_text()
    assert "vibration_mm_s" in text or "gaps" in text
    if suffix == ".json":
        assert json.loads(text)["seed"] == 3
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SimError, match="is not a ground-truth file"):
        read_ground_truth(tmp_path / "junk.csv")


# -- scoring ----------------------------------------------------------------------------------


def fault(device: str, kind: str, start_min: int, minutes: int, site: str = "s") -> Fault:
    return Fault(device=device, fault=kind, start_ms=T0 + start_min * 60_000,
                 end_ms=T0 + (start_min + minutes) * 60_000, site=site)


def detection(id_: str, device: str, minute: float, name: str = "x", site: str = "s") -> Detection:
    return Detection(id_, site, device, name, T0 + int(minute * 60_000))


def test_score_counts_recall_precision_and_time_to_detect_per_kind() -> None:
    truth = [fault("pump-01", "bearing_wear", 0, 60), fault("pump-02", "bearing_wear", 0, 60),
             fault("door-01", "door_forced", 30, 2), fault("ahu-01", "filter_clogging", 100, 60)]
    found = [
        detection("a1", "pump-01", 12),  # bearing_wear found after 12 min
        detection("a2", "pump-01", 20),  # a second anomaly for the same fault: also a true positive
        detection("a3", "door-01", 30.5),  # 30 s
        detection("a4", "door-01", 45),  # 13 min after a 2-min fault ended: within the 10-min grace? no
        detection("a5", "chiller-01", 50, name="door_forced"),  # a false alarm named after a kind
        detection("a6", "pump-02", 5, site="other"),  # another site's pump-02
        detection("a7", "ahu-01", 99),  # before its fault: not counted (early 0)
    ]
    report = score(truth, found, grace_s=600)
    rows = {r.fault: r for r in report.kinds}
    bw, door, ahu = rows["bearing_wear"], rows["door_forced"], rows["filter_clogging"]
    assert (bw.faults, bw.detected, bw.recall, bw.true_positives, bw.anomalies) == (2, 1, 0.5, 2, 2)
    assert bw.ttd_s == (720.0,)
    assert (door.detected, door.recall, door.ttd_s) == (1, 1.0, (30.0,))
    assert (door.true_positives, door.anomalies) == (1, 2)
    assert door.precision == 0.5
    assert (ahu.detected, ahu.anomalies) == (0, 0) and ahu.precision is None
    assert (report.total.faults, report.total.detected, report.total.anomalies) == (4, 2, 7)
    assert report.total.true_positives == 3 and report.unmatched_other == 3
    # With a minute of tolerance before a fault, a7 counts (ttd 0).
    early = score(truth, found, grace_s=600, early_s=60)
    assert {r.fault: r.ttd_s for r in early.kinds}["filter_clogging"] == (0.0,)
    table = format_report(report)
    assert "bearing_wear" in table and "50%" in table and "720" in table


def anomaly_line(site: str, device: str, id_: str, minute: float, state: str = "open") -> str:
    a = Anomaly(v=1, id=id_, state=state, ts_ms=T0 + int(minute * 60_000), started_ms=T0, severity="major",  # type: ignore[arg-type]
                fault="vibration_high", summary="pump vibrates", kind="pump")
    return json.dumps({"topic": AlarmTopic(site, device).format(), "payload": json.loads(encode_anomaly(a))})


def encode_anomaly(a: Anomaly) -> bytes:
    import msgspec

    return msgspec.json.encode(a)


def test_vigil_sim_score_reads_files_and_names_bad_lines(tmp_path: Path) -> None:
    truth = tmp_path / "truth.csv"
    write_ground_truth(truth, [fault("pump-01", "bearing_wear", 0, 60, site="tower-a")])
    anomalies = tmp_path / "anomalies.jsonl"
    anomalies.write_text("\n".join([
        anomaly_line("tower-a", "pump-01", "an-1", 12),
        anomaly_line("tower-a", "pump-01", "an-1", 30, state="updated"),  # the same anomaly
        '{"topic": "vigil/v1/tower-a/_alarm/pump-01", "payload": {"v": 1}}',
        "not json",
    ]) + "\n")
    vigil = str(Path(sys.executable).parent / "vigil")
    out = subprocess.run([vigil, "sim", "score", "--truth", str(truth), "--anomalies", str(anomalies)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "1 injected fault(s)" in out.stdout and "1 anomaly in" in out.stdout
    assert "bearing_wear" in out.stdout and "100%" in out.stdout and "720" in out.stdout
    assert f"{anomalies}:3: invalid anomaly: Object missing required field `id`" in out.stderr
    assert f"{anomalies}:4: not JSON" in out.stderr
    js = subprocess.run([vigil, "sim", "score", "--truth", str(truth), "--anomalies", str(anomalies),
                         "--json"], capture_output=True, text=True, timeout=60, check=False)
    figures = json.loads(js.stdout.splitlines()[-1])
    assert figures["all"]["recall"] == 1.0 and figures["skipped_lines"] == 2
    missing = subprocess.run([vigil, "sim", "score", "--truth", str(tmp_path / "nope.json"),
                              "--anomalies", str(anomalies)], capture_output=True, text=True, timeout=60,
                             check=False)
    assert missing.returncode == 2 and "cannot read ground truth" in missing.stderr


def test_record_anomalies_keeps_what_analytics_publishes(
    mqtt_settings: MqttSettings, site_id: str, tmp_path: Path
) -> None:
    out = tmp_path / "anomalies.jsonl"
    stop, ready = threading.Event(), threading.Event()
    counts: list[tuple[int, int]] = []
    settings = SimSettings.load(None, mqtt=mqtt_settings)
    thread = threading.Thread(target=lambda: counts.append(record(settings, out, sites=[site_id], stop=stop,
                                                                  ready=ready)))
    thread.start()
    publisher = make_client(mqtt_settings, f"pub-{site_id}")
    publisher.connect(mqtt_settings.host, mqtt_settings.port)
    publisher.loop_start()
    try:
        assert ready.wait(10), "the recorder did not subscribe"
        good = Anomaly(v=1, id="a-1", state="open", ts_ms=T0, started_ms=T0, severity="minor",
                       fault="vibration_high", summary="pump-01 vibrates")
        topic = AlarmTopic(site_id, "pump-01").format()
        publisher.publish(AlarmTopic(site_id, "pump-02").format(), b"{}", qos=1).wait_for_publish(5)
        publisher.publish(topic, encode_anomaly(good), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (out.exists() and out.read_text()):
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
        publisher.disconnect()
        publisher.loop_stop()
    assert counts == [(1, 1)]  # the bad one was refused (and logged), the good one kept
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    item = json.loads(lines[0])
    assert item["topic"] == f"vigil/v1/{site_id}/_alarm/pump-01" and item["payload"]["id"] == "a-1"
    assert load_anomalies(out).detections == [Detection("a-1", site_id, "pump-01", "vibration_high", T0)]


def test_the_sim_actions_are_in_the_vigil_command() -> None:
    vigil = str(Path(sys.executable).parent / "vigil")
    for action in ("score", "record-anomalies"):
        out = subprocess.run([vigil, "sim", action, "--help"], capture_output=True, text=True, timeout=60,
                             check=False)
        assert out.returncode == 0 and "--config" in out.stdout, out.stderr


def test_the_example_scenario_loads_against_its_fleet() -> None:
    path = Path(__file__).resolve().parent.parent / "simulators" / "scenarios" / "example.yaml"
    scenario = load_scenario(path, plan_fleet(seed=1, devices=66).placements(), T0)
    listed = {f.fault for f in scenario.faults}
    assert listed == set(FAULTS)  # the example shows every fault kind
    assert scenario.random is not None and scenario.random.seed == 7


def test_score_ignores_anomalies_outside_the_run_a_json_truth_names(tmp_path: Path) -> None:
    truth = tmp_path / "truth.json"
    write_ground_truth(truth, [fault("pump-01", "bearing_wear", 0, 60, site="tower-a")], start_ms=T0,
                       end_ms=T0 + 90 * 60_000)
    anomalies = tmp_path / "anomalies.jsonl"
    anomalies.write_text("\n".join([
        anomaly_line("tower-a", "pump-01", "an-1", 12),
        anomaly_line("tower-a", "door-01", "an-2", 95),  # the fleet stopping: after the run
    ]) + "\n")
    vigil = str(Path(sys.executable).parent / "vigil")
    out = subprocess.run([vigil, "sim", "score", "--truth", str(truth), "--anomalies", str(anomalies),
                          "--json"], capture_output=True, text=True, timeout=60, check=False)
    figures = json.loads(out.stdout.splitlines()[-1])
    assert figures["outside_run"] == 1 and figures["all"]["precision"] == 1.0
