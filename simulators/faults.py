"""The faults the simulator can inject, and what each does to the signals (the ground truth).

One explicit registry, ``FAULTS``: for each fault kind, the device kinds it applies to,
a typical duration (for random plans), how often it is drawn, and its expected effect,
``metric -> direction``. Directions are a small vocabulary a scorer or a person can read:

- ``up`` / ``down``: the value moves that way (gradually or at once) while the fault lasts;
- ``flat``: the value stops changing (a stuck sensor, a stuck valve);
- ``noisy`` / ``spikes``: more scatter, or isolated outliers;
- ``gaps`` / ``missing``: some polls fail (communication loss), or all of them (offline);
- ``true`` / ``false`` / ``=<state>``: a boolean or a state metric takes that value;
- ``event:<kind>``: the device publishes that wire ``Event`` when the fault starts.

Sensor faults (``sensor_*``) act on one metric, named by the fault (``Fault.metric``);
their effect names it. ``*`` stands for "every metric of the device".

Invariants:
- a ``Fault`` is a plain value: (site, device, fault kind, start, end, strength, metric);
  start < end, strength > 0; what it does is decided by the device model at each sample
  from (time, fault, seed), never from wall-clock time or global state;
- every kind in ``FAULTS`` is handled by the models of every device kind it lists
  (``tests/test_simulators_faults.py`` checks each one moves its metrics as ``effects`` say).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

SENSOR_FAULTS = ("sensor_stuck", "sensor_drift", "sensor_spike", "sensor_noisy")
# Device kinds with numeric sensors a sensor fault can hit (every metric of theirs that
# has a ``scale`` is eligible).
NUMERIC_KINDS = ("pump", "chiller", "ahu", "power_meter", "space_sensor", "lift", "nvr")
ALL_KINDS = (*NUMERIC_KINDS, "door", "fire_panel", "camera", "leak_sensor")


@dataclass(frozen=True, slots=True)
class FaultKind:
    """A registry entry: where a fault applies and what it is expected to do."""

    name: str
    kinds: tuple[str, ...]
    effects: Mapping[str, str]
    duration_s: tuple[float, float]  # range drawn from by random plans
    weight: float = 1.0  # relative chance in random plans, among those that apply
    summary: str = ""


def _k(name: str, kinds: tuple[str, ...], effects: dict[str, str], hours: tuple[float, float],
       summary: str, weight: float = 1.0) -> FaultKind:
    return FaultKind(name, kinds, effects, (hours[0] * 3600.0, hours[1] * 3600.0), weight, summary)


FAULTS: dict[str, FaultKind] = {f.name: f for f in (
    _k("bearing_wear", ("pump",), {"vibration_mm_s": "up", "bearing_temp_c": "up"}, (2, 12),
       "a pump bearing wears: vibration RMS and bearing temperature rise over hours"),
    _k("cavitation", ("pump",), {"pressure_kpa": "down", "flow_lps": "down", "vibration_mm_s": "up"},
       (0.25, 2), "low suction pressure: discharge pressure and flow fall, vibration rises and scatters"),
    _k("stuck_valve", ("ahu",), {"valve_pct": "flat", "supply_air_c": "up"}, (1, 6),
       "the AHU's chilled-water valve sticks part-closed: supply air warms as load grows"),
    _k("filter_clogging", ("ahu",), {"filter_dp_pa": "up"}, (2, 12),
       "the AHU filter loads up: pressure drop across it rises over hours"),
    _k("refrigerant_leak", ("chiller",), {"cop": "down", "power_kw": "up", "chw_supply_c": "up"},
       (3, 24), "a chiller loses refrigerant: efficiency falls, power and leaving water temperature rise"),
    _k("sensor_stuck", NUMERIC_KINDS, {}, (0.25, 2), "one sensor repeats its last value"),
    _k("sensor_drift", NUMERIC_KINDS, {}, (1, 8), "one sensor drifts away from the truth"),
    _k("sensor_spike", NUMERIC_KINDS, {}, (0.25, 1), "one sensor reports isolated wild values"),
    _k("sensor_noisy", NUMERIC_KINDS, {}, (0.25, 2), "one sensor's noise grows several-fold"),
    _k("comm_loss", ALL_KINDS, {"*": "gaps"}, (0.1, 0.5),
       "a flaky link: most polls of the device fail, some get through", weight=0.5),
    _k("device_offline", ALL_KINDS, {"*": "missing"}, (0.1, 1), "the device answers no poll",
       weight=0.5),
    _k("door_forced", ("door",), {"door_open": "true", "state": "=forced", "event": "event:door_forced"},
       (0.02, 0.08), "a door is opened without a valid badge"),
    _k("door_held_open", ("door",),
       {"door_open": "true", "state": "=held_open", "event": "event:door_held_open"}, (0.05, 0.25),
       "a door is propped open past its allowed time"),
    _k("camera_offline", ("camera",),
       {"online": "false", "bitrate_kbps": "down", "event": "event:camera_offline"}, (0.1, 2),
       "a camera drops off the network (the NVR reports it offline)"),
    _k("camera_tamper", ("camera",), {"bitrate_kbps": "down", "event": "event:tamper"}, (0.05, 0.5),
       "a camera is covered or turned: the image goes flat and its bitrate collapses", weight=0.5),
    _k("recording_stopped", ("camera", "nvr"),
       {"recording": "false", "recording_channels": "down", "write_mbps": "down"}, (0.25, 3),
       "recording stops (full disk, crashed service) while live view still works"),
    _k("water_leak", ("leak_sensor",), {"leak": "true", "event": "event:water_leak"}, (0.1, 1),
       "water reaches a leak sensor's probes"),
    _k("fire_panel_trouble", ("fire_panel",),
       {"trouble": "true", "state": "=trouble", "event": "event:fire_trouble"}, (0.25, 4),
       "the fire panel reports trouble (an open circuit, a failed battery)", weight=3.0),
    _k("fire_supervisory", ("fire_panel",),
       {"supervisory": "true", "state": "=supervisory", "event": "event:fire_supervisory"}, (0.25, 4),
       "a supervised point is off normal (a sprinkler valve closed, a fire pump off)"),
    _k("lift_fault", ("lift",), {"in_service": "false", "fault_code": "=E_DOOR_LOCK", "trips": "flat",
                                 "event": "event:lift_out_of_service"}, (0.25, 3),
       "a lift trips out on a door-lock fault and stops serving calls"),
    _k("fire_alarm", ("fire_panel",), {"alarm": "true", "state": "=alarm", "event": "event:fire_alarm"},
       (0.05, 0.3), "a fire alarm (a detector in alarm)", weight=0.5),
)}


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: on which device, which kind, when, how strong, how long."""

    device: str
    fault: str
    start_ms: int
    end_ms: int
    strength: float = 1.0
    metric: str | None = None  # the sensor of a sensor_* fault
    site: str = ""
    device_kind: str = ""
    agent: str = ""
    effects: Mapping[str, str] = field(default_factory=dict)

    def active(self, now_ms: int) -> bool:
        return self.start_ms <= now_ms < self.end_ms


def expected_effects(
    fault: str, metric: str | None, metrics: Collection[str] | None = None
) -> dict[str, str]:
    """What ``fault`` is expected to do, ``metric -> direction`` (see the module docstring);
    given the device's ``metrics``, only the effects on those (and ``*`` and ``event``)."""
    kind = FAULTS[fault]
    if fault in SENSOR_FAULTS:
        name = metric or "?"
        direction = {"sensor_stuck": "flat", "sensor_drift": "up",
                     "sensor_spike": "spikes", "sensor_noisy": "noisy"}[fault]
        return {name: direction}
    return {k: v for k, v in kind.effects.items()
            if metrics is None or k in ("*", "event") or k in metrics}


__all__ = ["FAULTS", "SENSOR_FAULTS", "Fault", "FaultKind", "expected_effects"]
