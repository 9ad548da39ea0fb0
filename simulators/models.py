"""Deterministic device models: what each kind of building equipment measures, over a day.

Each model is a ``SignalSource`` for the edge's simulated driver: ``sample(now_ms)``
returns the device's readings at that time. A model draws its personality (pump size,
chiller capacity, set points, door traffic) from its seed on first use, follows a daily
load pattern (``occupancy``: office hours on weekdays, low at night and at weekends), and
adds gaussian sensor noise before rounding to what the real instrument would report.

Adding a kind: subclass ``DeviceModel``, list its ``metrics`` (name, unit, decimals,
noise, bounds) and write ``_setup`` (draw parameters) and ``_step`` (true values at
``now_ms``), then add one line to ``MODELS``. Coupled physics, faults and ground truth
(a later issue) extend ``_step`` and the per-model state; the base class stays the same.

Invariants:
- reproducible: the same class, seed and sequence of ``now_ms`` give the same readings
  (one ``random.Random(seed)`` per model, all draws in a fixed order; no global random);
- ``__init__`` only stores its arguments; parameters and state (names ending in ``_``)
  are created on the first ``sample``;
- numeric values are finite Python floats within each metric's bounds, rounded to its
  decimals; booleans and strings are only what a metric declares;
- a counter metric (``energy_kwh``) never decreases, whatever the sampling intervals,
  because it integrates a power that is never negative and carries no noise of its own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from wire import Reading

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
Value = float | bool | str


@dataclass(frozen=True, slots=True)
class Metric:
    """How a model reports one metric: unit, rounding, sensor noise (sd) and bounds."""

    name: str
    unit: str | None = None
    decimals: int = 2
    noise: float = 0.0
    low: float | None = None
    high: float | None = None


def _smoothstep(edge0: float, edge1: float, x: float) -> float:
    t = min(1.0, max(0.0, (x - edge0) / (edge1 - edge0)))
    return t * t * (3.0 - 2.0 * t)


def occupancy(now_ms: int, utc_offset_h: float = 0.0) -> float:
    """How busy a building is, 0..1: ramps up 07-09, full until 17, down by 19:30 local
    time on weekdays; a quarter of that at weekends."""
    local_h = now_ms / HOUR_MS + utc_offset_h
    day = math.floor(local_h / 24.0)
    hour = local_h - 24.0 * day
    occ = min(_smoothstep(7.0, 9.0, hour), 1.0 - _smoothstep(17.0, 19.5, hour))
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    return occ * (0.25 if weekday >= 5 else 1.0)


def lag(current: float | None, target: float, dt_s: float, tau_s: float) -> float:
    """First-order response (thermal mass, room air): start at the target, then follow it."""
    if current is None:
        return target
    return current + (target - current) * (1.0 - math.exp(-dt_s / tau_s))


class DeviceModel:
    """Base of every device model; subclasses set ``kind``, ``metrics``, ``_setup``, ``_step``."""

    kind: ClassVar[str] = ""
    metrics: ClassVar[tuple[Metric, ...]] = ()

    def __init__(self, device_id: str, seed: int, *, utc_offset_h: float = 0.0) -> None:
        self.device_id = device_id
        self.seed = seed
        self.utc_offset_h = utc_offset_h
        self._rng_: random.Random | None = None
        self._last_ms_: int | None = None

    def sample(self, now_ms: int) -> list[Reading]:
        rng = self._rng_
        if rng is None:
            rng = self._rng_ = random.Random(self.seed)
            self._setup(rng)
        dt_s = 0.0 if self._last_ms_ is None else max(0.0, (now_ms - self._last_ms_) / 1000.0)
        self._last_ms_ = now_ms
        values = self._step(now_ms, dt_s, occupancy(now_ms, self.utc_offset_h), rng)
        out: list[Reading] = []
        for m in self.metrics:
            value = values[m.name]
            if not isinstance(value, bool | str):
                x = float(value)
                if m.noise:
                    x += rng.gauss(0.0, m.noise)
                if m.low is not None:
                    x = max(m.low, x)
                if m.high is not None:
                    x = min(m.high, x)
                value = round(x, m.decimals)
            out.append(Reading(ts_ms=now_ms, metric=m.name, value=value, unit=m.unit))
        return out

    def _setup(self, rng: random.Random) -> None:
        """Draw this device's parameters (size, set points) from its seed."""

    def _step(self, now_ms: int, dt_s: float, load: float, rng: random.Random) -> Mapping[str, Value]:
        """True values at ``now_ms``, ``dt_s`` after the previous sample (0 on the first)."""
        raise NotImplementedError


class Pump(DeviceModel):
    """A chilled- or condenser-water pump on a variable speed drive, 400 V three-phase."""

    kind = "pump"
    metrics = (
        Metric("flow_lps", "L/s", 2, 0.15, low=0.0),
        Metric("pressure_kpa", "kPa", 1, 1.5, low=0.0),
        Metric("motor_current_a", "A", 2, 0.2, low=0.0),
        Metric("vibration_mm_s", "mm/s", 2, 0.1, low=0.0),
        Metric("bearing_temp_c", "degC", 1, 0.15),
    )
    rated_flow_lps_: float
    static_kpa_: float
    head_kpa_: float
    vibration_base_: float
    bearing_temp_: float | None

    def _setup(self, rng: random.Random) -> None:
        self.rated_flow_lps_ = rng.uniform(8.0, 25.0)
        self.static_kpa_ = rng.uniform(60.0, 120.0)
        self.head_kpa_ = rng.uniform(180.0, 320.0)
        self.vibration_base_ = rng.uniform(0.8, 1.6)  # ISO 10816 "good" is below 2.8 mm/s
        self.bearing_temp_ = None

    def _step(self, now_ms: int, dt_s: float, load: float, rng: random.Random) -> Mapping[str, Value]:
        speed = 0.45 + 0.5 * load  # the drive never lets the loop go below ~45 %
        flow = self.rated_flow_lps_ * speed
        pressure = self.static_kpa_ + self.head_kpa_ * speed * speed  # system curve
        hydraulic_kw = flow * pressure / 1000.0  # L/s x kPa = W
        shaft_kw = hydraulic_kw / 0.7
        current = shaft_kw * 1000.0 / (math.sqrt(3.0) * 400.0 * 0.85 * 0.93) + 1.5  # + magnetising
        self.bearing_temp_ = lag(self.bearing_temp_, 25.0 + 1.1 * current, dt_s, 900.0)
        return {
            "flow_lps": flow,
            "pressure_kpa": pressure,
            "motor_current_a": current,
            "vibration_mm_s": self.vibration_base_ * (0.7 + 0.5 * speed),
            "bearing_temp_c": self.bearing_temp_,
        }


class Chiller(DeviceModel):
    """A water-cooled chiller; COP peaks near 70 % part load."""

    kind = "chiller"
    metrics = (
        Metric("chw_supply_c", "degC", 2, 0.05),
        Metric("chw_return_c", "degC", 2, 0.05),
        Metric("power_kw", "kW", 1, 1.0, low=0.0),
        Metric("cop", None, 2, 0.03, low=0.5),
    )
    capacity_kw_: float
    setpoint_c_: float
    cop_peak_: float

    def _setup(self, rng: random.Random) -> None:
        self.capacity_kw_ = rng.uniform(400.0, 1500.0)
        self.setpoint_c_ = rng.uniform(6.0, 7.5)
        self.cop_peak_ = rng.uniform(5.2, 6.3)

    def _step(self, now_ms: int, dt_s: float, load: float, rng: random.Random) -> Mapping[str, Value]:
        plr = 0.2 + 0.75 * load
        cop = self.cop_peak_ - 3.0 * (plr - 0.7) ** 2
        supply = self.setpoint_c_ + 0.4 * (plr - 0.5)  # the loop sags a little at high load
        return {
            "chw_supply_c": supply,
            "chw_return_c": supply + 5.5 * plr,
            "power_kw": self.capacity_kw_ * plr / cop,
            "cop": cop,
        }


class AirHandler(DeviceModel):
    """An air handling unit; its filter loads up over weeks until it is changed."""

    kind = "ahu"
    metrics = (
        Metric("supply_air_c", "degC", 1, 0.15),
        Metric("return_air_c", "degC", 1, 0.15),
        Metric("fan_speed_pct", "%", 1, 0.4, low=0.0, high=100.0),
        Metric("filter_dp_pa", "Pa", 1, 1.5, low=0.0),
    )
    sat_setpoint_c_: float
    clean_dp_pa_: float
    filter_life_days_: float
    filter_phase_days_: float

    def _setup(self, rng: random.Random) -> None:
        self.sat_setpoint_c_ = rng.uniform(12.5, 15.0)
        self.clean_dp_pa_ = rng.uniform(70.0, 110.0)
        self.filter_life_days_ = rng.uniform(60.0, 120.0)
        self.filter_phase_days_ = rng.uniform(0.0, self.filter_life_days_)

    def _step(self, now_ms: int, dt_s: float, load: float, rng: random.Random) -> Mapping[str, Value]:
        fan = 25.0 + 70.0 * load  # night setback at 25 %
        age = (now_ms / DAY_MS + self.filter_phase_days_) % self.filter_life_days_
        loaded_dp = self.clean_dp_pa_ + 180.0 * (age / self.filter_life_days_) ** 1.5
        return {
            "supply_air_c": self.sat_setpoint_c_ + 2.0 * (1.0 - load),  # supply-air reset
            "return_air_c": 21.5 + 2.5 * load,
            "fan_speed_pct": fan,
            "filter_dp_pa": loaded_dp * (0.3 + 0.7 * (fan / 100.0) ** 2),  # dp ~ airflow squared
        }


class PowerMeter(DeviceModel):
    """A building or floor sub-meter: demand follows occupancy, energy integrates it."""

    kind = "power_meter"
    metrics = (
        Metric("power_kw", "kW", 2, 0.5, low=0.0),
        Metric("energy_kwh", "kWh", 3),
        Metric("power_factor", None, 3, 0.004, low=0.0, high=1.0),
        Metric("voltage_v", "V", 1, 0.8),
    )
    base_kw_: float
    peak_kw_: float
    nominal_v_: float
    energy_kwh_: float

    def _setup(self, rng: random.Random) -> None:
        self.base_kw_ = rng.uniform(40.0, 120.0)
        self.peak_kw_ = self.base_kw_ * rng.uniform(2.0, 3.5)
        self.nominal_v_ = rng.uniform(228.0, 232.0)
        self.energy_kwh_ = rng.uniform(1e4, 5e5)  # the meter was installed long ago

    def _step(self, now_ms: int, dt_s: float, load: float, rng: random.Random) -> Mapping[str, Value]:
        ripple = 0.03 * math.sin(2.0 * math.pi * now_ms / (15 * 60_000))  # HVAC cycling
        power = (self.base_kw_ + (self.peak_kw_ - self.base_kw_) * load) * (1.0 + ripple)
        self.energy_kwh_ += power * dt_s / 3600.0
        return {
            "power_kw": power,
            "energy_kwh": self.energy_kwh_,
            "power_factor": 0.86 + 0.1 * load,
            "voltage_v": self.nominal_v_ - 4.0 * load,  # drop under load
        }


class Door(DeviceModel):
    """An access-controlled door: locked after hours, opened by people during the day.

    ``state`` is what the access panel reports: ``secure`` (closed and locked),
    ``unlocked`` (closed, free access hours), ``open``, ``held_open`` (open over 30 s)."""

    kind = "door"
    metrics = (Metric("door_open"), Metric("locked"), Metric("state"))
    HELD_OPEN_MS: ClassVar[int] = 30_000
    openings_per_h_: float
    opened_at_ms_: int | None
    close_at_ms_: int

    def _setup(self, rng: random.Random) -> None:
        self.openings_per_h_ = rng.uniform(10.0, 60.0)
        self.opened_at_ms_ = None
        self.close_at_ms_ = 0

    def _step(self, now_ms: int, dt_s: float, load: float, rng: random.Random) -> Mapping[str, Value]:
        locked = load < 0.05
        if self.opened_at_ms_ is not None and now_ms >= self.close_at_ms_:
            self.opened_at_ms_ = None
        if self.opened_at_ms_ is None and dt_s > 0:
            rate_per_s = self.openings_per_h_ / 3600.0 * max(load, 0.02)  # badge access at night
            if rng.random() < 1.0 - math.exp(-rate_per_s * dt_s):
                held = rng.random() < 0.03
                open_s = rng.uniform(40.0, 180.0) if held else rng.uniform(3.0, 12.0)
                self.opened_at_ms_ = now_ms
                self.close_at_ms_ = now_ms + int(open_s * 1000)
        is_open = self.opened_at_ms_ is not None
        if self.opened_at_ms_ is not None:
            state = "held_open" if now_ms - self.opened_at_ms_ > self.HELD_OPEN_MS else "open"
        else:
            state = "secure" if locked else "unlocked"
        return {"door_open": is_open, "locked": locked, "state": state}


class SpaceSensor(DeviceModel):
    """A room sensor: people warm the room and raise CO2; the room air lags behind."""

    kind = "space_sensor"
    metrics = (
        Metric("temp_c", "degC", 2, 0.05),
        Metric("rh_pct", "%", 1, 0.3, low=0.0, high=100.0),
        Metric("co2_ppm", "ppm", 0, 8.0, low=380.0),
    )
    setpoint_c_: float
    co2_gain_ppm_: float
    rh_base_pct_: float
    temp_: float | None
    co2_: float | None

    def _setup(self, rng: random.Random) -> None:
        self.setpoint_c_ = rng.uniform(21.0, 23.0)
        self.co2_gain_ppm_ = rng.uniform(350.0, 900.0)
        self.rh_base_pct_ = rng.uniform(38.0, 52.0)
        self.temp_ = None
        self.co2_ = None

    def _step(self, now_ms: int, dt_s: float, load: float, rng: random.Random) -> Mapping[str, Value]:
        daily = math.sin(2.0 * math.pi * ((now_ms / HOUR_MS + self.utc_offset_h - 9.0) % 24.0) / 24.0)
        target = self.setpoint_c_ - 1.5 * (1.0 - load) + 0.8 * load + 0.4 * daily  # night setback
        self.temp_ = lag(self.temp_, target, dt_s, 1200.0)
        self.co2_ = lag(self.co2_, 420.0 + self.co2_gain_ppm_ * load, dt_s, 1800.0)
        return {
            "temp_c": self.temp_,
            "rh_pct": self.rh_base_pct_ + 4.0 * daily - 1.5 * (self.temp_ - 22.0),
            "co2_ppm": self.co2_,
        }


MODELS: dict[str, type[DeviceModel]] = {
    Pump.kind: Pump,
    Chiller.kind: Chiller,
    AirHandler.kind: AirHandler,
    PowerMeter.kind: PowerMeter,
    Door.kind: Door,
    SpaceSensor.kind: SpaceSensor,
}
