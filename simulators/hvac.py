"""Mechanical and electrical plant: chiller, pump, air handler, power meter, space sensor.

Coupling (see ``simulators.base.Building``): the site's cooling load sets each chiller's
part load, which sets its power, efficiency and chilled-water temperatures; the
chilled-water pumps follow the same load (variable primary flow: flow tracks load, the
drive keeps a minimum), and their pressure, motor current and bearing temperature follow
their flow; AHUs open their valves and speed their fans with load; meters see the plant's
power on top of lighting and small power; rooms warm with people and the weather.

Physical faults change the physics here (a worn bearing vibrates, a leaking chiller loses
efficiency); sensor faults, offline and communication loss are the base class's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from simulators.base import DAY_MS, HOUR_MS, Conditions, DeviceModel, Metric, Value, lag


class Pump(DeviceModel):
    """A chilled-water pump on a variable speed drive, 400 V three-phase."""

    kind = "pump"
    metrics = (
        Metric("flow_lps", "L/s", 2, 0.15, low=0.0, scale=3.0),
        Metric("pressure_kpa", "kPa", 1, 1.5, low=0.0, scale=30.0),
        Metric("motor_current_a", "A", 2, 0.2, low=0.0, scale=3.0),
        Metric("vibration_mm_s", "mm/s", 2, 0.08, low=0.0, scale=0.8),
        Metric("bearing_temp_c", "degC", 1, 0.15, scale=4.0),
        Metric("running"),
        Metric("running_hours", "h", 2),
    )
    rated_flow_lps_: float
    static_kpa_: float
    head_kpa_: float
    vibration_base_: float
    bearing_temp_: float | None
    hours_: float

    def _setup(self, rng: random.Random) -> None:
        self.rated_flow_lps_ = rng.uniform(8.0, 25.0)
        self.static_kpa_ = rng.uniform(60.0, 120.0)
        self.head_kpa_ = rng.uniform(180.0, 320.0)
        self.vibration_base_ = rng.uniform(0.8, 1.6)  # ISO 10816 "good" is below 2.8 mm/s
        self.bearing_temp_ = None
        self.hours_ = rng.uniform(2_000.0, 40_000.0)

    def _step(self, now_ms: int, dt_s: float, c: Conditions, rng: random.Random) -> Mapping[str, Value]:
        speed = 0.45 + 0.5 * (c.cooling - 0.1) / 0.9  # the drive never goes below ~45 %
        flow = self.rated_flow_lps_ * speed
        pressure = self.static_kpa_ + self.head_kpa_ * speed * speed  # system curve
        vibration = self.vibration_base_ * (0.7 + 0.5 * speed)
        wear = self.severity("bearing_wear", now_ms, ramp_s=4 * 3600.0)
        cav = self.severity("cavitation", now_ms, ramp_s=120.0)
        if cav:
            pressure *= 1.0 - 0.25 * min(cav, 2.0)
            flow *= 1.0 - 0.15 * min(cav, 2.0)
            vibration += cav * rng.uniform(1.0, 3.0)  # collapsing bubbles: broadband, erratic
        vibration += 5.0 * wear  # ISO 10816 "unacceptable" is over 7.1 mm/s
        hydraulic_kw = flow * pressure / 1000.0  # L/s x kPa = W
        current = hydraulic_kw / 0.7 * 1000.0 / (math.sqrt(3.0) * 400.0 * 0.85 * 0.93) + 1.5
        current *= 1.0 + 0.08 * wear  # friction
        self.bearing_temp_ = lag(self.bearing_temp_, 25.0 + 1.1 * current + 25.0 * wear, dt_s, 900.0)
        self.hours_ += dt_s / 3600.0
        return {
            "flow_lps": flow,
            "pressure_kpa": pressure,
            "motor_current_a": current,
            "vibration_mm_s": vibration,
            "bearing_temp_c": self.bearing_temp_,
            "running": True,
            "running_hours": self.hours_,
        }


class Chiller(DeviceModel):
    """A water-cooled chiller; COP peaks near 70 % part load."""

    kind = "chiller"
    metrics = (
        Metric("chw_supply_c", "degC", 2, 0.05, scale=1.0),
        Metric("chw_return_c", "degC", 2, 0.05, scale=1.0),
        Metric("power_kw", "kW", 1, 1.0, low=0.0, scale=30.0),
        Metric("cop", None, 2, 0.03, low=0.5, scale=0.6),
        Metric("load_pct", "%", 1, 0.3, low=0.0, high=100.0, scale=10.0),
    )
    capacity_kw_: float
    setpoint_c_: float
    cop_peak_: float

    def _setup(self, rng: random.Random) -> None:
        self.capacity_kw_ = rng.uniform(400.0, 1500.0)
        self.setpoint_c_ = rng.uniform(6.0, 7.5)
        self.cop_peak_ = rng.uniform(5.2, 6.3)

    def _step(self, now_ms: int, dt_s: float, c: Conditions, rng: random.Random) -> Mapping[str, Value]:
        plr = 0.1 + 0.85 * c.cooling
        cop = self.cop_peak_ - 3.0 * (plr - 0.7) ** 2
        supply = self.setpoint_c_ + 0.4 * (plr - 0.5)  # the loop sags a little at high load
        leak = self.severity("refrigerant_leak", now_ms, ramp_s=6 * 3600.0)
        if leak:
            cop *= 1.0 - 0.35 * min(leak, 2.0)  # low suction pressure: less work per kW
            supply += 1.5 * min(leak, 2.0) * plr  # it cannot hold set point at load
        return {
            "chw_supply_c": supply,
            "chw_return_c": supply + 5.5 * plr,
            "power_kw": self.capacity_kw_ * plr / cop,
            "cop": cop,
            "load_pct": 100.0 * plr,
        }


class AirHandler(DeviceModel):
    """An air handling unit; its filter loads up over weeks until it is changed."""

    kind = "ahu"
    metrics = (
        Metric("supply_air_c", "degC", 1, 0.15, scale=1.5),
        Metric("return_air_c", "degC", 1, 0.15, scale=1.5),
        Metric("fan_speed_pct", "%", 1, 0.4, low=0.0, high=100.0, scale=10.0),
        Metric("filter_dp_pa", "Pa", 1, 1.5, low=0.0, scale=30.0),
        Metric("valve_pct", "%", 1, 0.5, low=0.0, high=100.0, scale=15.0),
    )
    sat_setpoint_c_: float
    clean_dp_pa_: float
    filter_life_days_: float
    filter_phase_days_: float
    stuck_at_: float | None

    def _setup(self, rng: random.Random) -> None:
        self.sat_setpoint_c_ = rng.uniform(12.5, 15.0)
        self.clean_dp_pa_ = rng.uniform(70.0, 110.0)
        self.filter_life_days_ = rng.uniform(60.0, 120.0)
        self.filter_phase_days_ = rng.uniform(0.0, self.filter_life_days_ * 0.6)
        self.stuck_at_ = None

    def _step(self, now_ms: int, dt_s: float, c: Conditions, rng: random.Random) -> Mapping[str, Value]:
        fan = 25.0 + 70.0 * c.occupancy  # night setback at 25 %
        valve = 15.0 + 80.0 * (c.cooling - 0.1) / 0.9
        sat = self.sat_setpoint_c_ + 2.0 * (1.0 - c.occupancy)  # supply-air reset
        stuck = self.severity("stuck_valve", now_ms)
        if stuck:
            if self.stuck_at_ is None:  # it sticks where it is, a little more closed
                self.stuck_at_ = max(5.0, valve * (1.0 - 0.4 * min(stuck, 2.0)))
            shortfall = max(0.0, valve - self.stuck_at_)
            sat += 0.12 * shortfall  # less chilled water than the coil needs
            valve = self.stuck_at_
        else:
            self.stuck_at_ = None
        age = (now_ms / DAY_MS + self.filter_phase_days_) % self.filter_life_days_
        loaded_dp = self.clean_dp_pa_ + 180.0 * (age / self.filter_life_days_) ** 1.5
        loaded_dp += 250.0 * self.severity("filter_clogging", now_ms, ramp_s=3 * 3600.0)
        return {
            "supply_air_c": sat,
            "return_air_c": 21.5 + 2.5 * c.occupancy + 0.05 * (c.outdoor_c - 22.0),
            "fan_speed_pct": fan,
            "filter_dp_pa": loaded_dp * (0.3 + 0.7 * (fan / 100.0) ** 2),  # dp ~ airflow squared
            "valve_pct": valve,
        }


class PowerMeter(DeviceModel):
    """A building or floor sub-meter: lighting and small power follow occupancy, HVAC
    follows the cooling load; energy integrates the demand."""

    kind = "power_meter"
    metrics = (
        Metric("power_kw", "kW", 2, 0.5, low=0.0, scale=30.0),
        Metric("energy_kwh", "kWh", 3),
        Metric("power_factor", None, 3, 0.004, low=0.0, high=1.0, scale=0.04),
        Metric("voltage_v", "V", 1, 0.8, scale=4.0),
    )
    base_kw_: float
    peak_kw_: float
    hvac_kw_: float
    nominal_v_: float
    energy_kwh_: float

    def _setup(self, rng: random.Random) -> None:
        self.base_kw_ = rng.uniform(40.0, 120.0)
        self.peak_kw_ = self.base_kw_ * rng.uniform(1.5, 2.5)
        self.hvac_kw_ = self.base_kw_ * rng.uniform(0.3, 0.8)
        self.nominal_v_ = rng.uniform(228.0, 232.0)
        self.energy_kwh_ = rng.uniform(1e4, 5e5)  # the meter was installed long ago

    def _step(self, now_ms: int, dt_s: float, c: Conditions, rng: random.Random) -> Mapping[str, Value]:
        ripple = 0.03 * math.sin(2.0 * math.pi * now_ms / (15 * 60_000))  # HVAC cycling
        power = (self.base_kw_ + (self.peak_kw_ - self.base_kw_) * c.occupancy) * (1.0 + ripple)
        power += self.hvac_kw_ * c.cooling
        self.energy_kwh_ += power * dt_s / 3600.0
        load = min(1.0, power / (self.peak_kw_ + self.hvac_kw_))
        return {
            "power_kw": power,
            "energy_kwh": self.energy_kwh_,
            "power_factor": 0.86 + 0.1 * load,
            "voltage_v": self.nominal_v_ - 5.0 * load,  # drop under load
        }


class SpaceSensor(DeviceModel):
    """A room sensor: people warm the room and raise CO2, the sun and the weather a little;
    the room air lags behind."""

    kind = "space_sensor"
    metrics = (
        Metric("temp_c", "degC", 2, 0.05, scale=1.5),
        Metric("rh_pct", "%", 1, 0.3, low=0.0, high=100.0, scale=6.0),
        Metric("co2_ppm", "ppm", 0, 8.0, low=380.0, scale=150.0),
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

    def _step(self, now_ms: int, dt_s: float, c: Conditions, rng: random.Random) -> Mapping[str, Value]:
        daily = math.sin(2.0 * math.pi * ((now_ms / HOUR_MS + self.utc_offset_h - 9.0) % 24.0) / 24.0)
        target = (self.setpoint_c_ - 1.5 * (1.0 - c.occupancy) + 0.8 * c.occupancy
                  + 0.05 * (c.outdoor_c - 24.0) + 0.3 * daily)  # night setback
        self.temp_ = lag(self.temp_, target, dt_s, 1200.0)
        self.co2_ = lag(self.co2_, 420.0 + self.co2_gain_ppm_ * c.occupancy, dt_s, 1800.0)
        return {
            "temp_c": self.temp_,
            "rh_pct": self.rh_base_pct_ + 4.0 * daily - 1.5 * (self.temp_ - 22.0),
            "co2_ppm": self.co2_,
        }
