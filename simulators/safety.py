"""Security, life-safety and vertical transport: door, fire panel, camera, NVR, leak sensor, lift.

These devices report states more than magnitudes, and the moments that matter (a door
forced, a fire alarm, a camera tampered with, water on the floor) are also published as
wire ``Event`` messages, once, when they happen, as a real access or fire panel does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import ClassVar

from simulators.base import DAY_MS, Conditions, DeviceModel, Metric, Value


class Door(DeviceModel):
    """An access-controlled door: locked after hours, opened by people during the day.

    ``state`` is what the access panel reports: ``secure`` (closed and locked),
    ``unlocked`` (closed, free access hours), ``open``, ``held_open`` (open over 30 s),
    ``forced`` (opened while locked, without a valid badge)."""

    kind = "door"
    metrics = (Metric("door_open"), Metric("locked"), Metric("state"), Metric("openings", None, 0))
    HELD_OPEN_MS: ClassVar[int] = 30_000
    openings_per_h_: float
    opened_at_ms_: int | None
    close_at_ms_: int
    openings_: float
    held_reported_: bool
    was_open_: bool

    def _setup(self, rng: random.Random) -> None:
        self.openings_per_h_ = rng.uniform(10.0, 60.0)
        self.opened_at_ms_ = None
        self.close_at_ms_ = 0
        self.openings_ = float(rng.randrange(1_000, 200_000))
        self.held_reported_ = False
        self.was_open_ = False

    def _step(self, now_ms: int, dt_s: float, c: Conditions, rng: random.Random) -> Mapping[str, Value]:
        locked = c.occupancy < 0.05
        if self.opened_at_ms_ is not None and now_ms >= self.close_at_ms_:
            self.opened_at_ms_ = None
            self.held_reported_ = False
        if self.opened_at_ms_ is None and dt_s > 0:
            rate_per_s = self.openings_per_h_ / 3600.0 * max(c.occupancy, 0.02)  # badge access at night
            if rng.random() < 1.0 - math.exp(-rate_per_s * dt_s):
                held = rng.random() < 0.01  # a visitor who props it open
                open_s = rng.uniform(40.0, 120.0) if held else rng.uniform(3.0, 12.0)
                self.opened_at_ms_ = now_ms
                self.close_at_ms_ = now_ms + int(open_s * 1000)
                self.openings_ += 1
        forced = self.active_.get("door_forced")
        propped = self.active_.get("door_held_open")
        if forced is not None:
            self.raise_event("door_forced", now_ms, "door_forced", "major",
                             "door forced open (no valid badge)", locked=locked)
            state, is_open = "forced", True
        elif propped is not None:
            if now_ms - propped.start_ms >= self.HELD_OPEN_MS:
                self.raise_event("door_held_open", now_ms, "door_held_open", "minor",
                                 "door held open past 30 s")
                state = "held_open"
            else:
                state = "open"
            is_open = True
        elif self.opened_at_ms_ is not None:
            is_open = True
            if now_ms - self.opened_at_ms_ > self.HELD_OPEN_MS:
                state = "held_open"
                if not self.held_reported_:
                    self.held_reported_ = True
                    self.event(now_ms, "door_held_open", "minor", "door held open past 30 s")
            else:
                state = "open"
        else:
            is_open = False
            state = "secure" if locked else "unlocked"
        if (forced is not None or propped is not None) and not self.was_open_:
            self.openings_ += 1
        self.was_open_ = is_open
        return {"door_open": is_open, "locked": locked, "state": state, "openings": self.openings_}


class FirePanel(DeviceModel):
    """A fire alarm control panel: ``normal``, ``trouble``, ``supervisory`` or ``alarm``.

    Trouble is the panel's own health (an open loop, a low battery); supervisory a watched
    valve or pump off normal; alarm a detector or call point. Alarm wins over the others."""

    kind = "fire_panel"
    metrics = (
        Metric("state"),
        Metric("alarm"),
        Metric("trouble"),
        Metric("supervisory"),
        Metric("battery_v", "V", 2, 0.02, scale=0.5),
        Metric("zones_in_alarm", None, 0, low=0.0),
    )
    battery_v_: float

    def _setup(self, rng: random.Random) -> None:
        self.battery_v_ = rng.uniform(26.8, 27.6)  # 24 V lead-acid on float charge

    def _step(self, now_ms: int, dt_s: float, c: Conditions, rng: random.Random) -> Mapping[str, Value]:
        alarm = "fire_alarm" in self.active_
        trouble = "fire_panel_trouble" in self.active_
        supervisory = "fire_supervisory" in self.active_
        if supervisory:
            self.raise_event("fire_supervisory", now_ms, "fire_supervisory", "minor",
                             "fire panel supervisory: a sprinkler valve is off normal")
        battery = self.battery_v_
        if trouble:
            battery -= 3.0 * min(1.0, self.severity("fire_panel_trouble", now_ms))  # failed battery
            self.raise_event("fire_panel_trouble", now_ms, "fire_trouble", "major",
                             "fire panel in trouble: battery or loop fault")
        if alarm:
            self.raise_event("fire_alarm", now_ms, "fire_alarm", "critical",
                             "fire alarm: detector activated in zone 1", zone=1.0)
        state = "alarm" if alarm else "trouble" if trouble else "supervisory" if supervisory else "normal"
        return {"state": state, "alarm": alarm, "trouble": trouble, "supervisory": supervisory,
                "battery_v": battery, "zones_in_alarm": 1.0 if alarm else 0.0}


class Camera(DeviceModel):
    """An IP camera as its NVR sees it: online, recording, and the stream's bitrate, which
    grows with motion in the scene (people), as variable-bitrate encoders do."""

    kind = "camera"
    metrics = (
        Metric("online"),
        Metric("recording"),
        Metric("bitrate_kbps", "kbit/s", 0, 60.0, low=0.0),
        Metric("fps", "1/s", 0, low=0.0),
    )
    base_kbps_: float
    fps_: float

    def _setup(self, rng: random.Random) -> None:
        self.base_kbps_ = rng.choice((1024.0, 2048.0, 4096.0))
        self.fps_ = rng.choice((15.0, 25.0, 30.0))

    def _step(self, now_ms: int, dt_s: float, c: Conditions, rng: random.Random) -> Mapping[str, Value]:
        online = "camera_offline" not in self.active_
        recording = online and "recording_stopped" not in self.active_
        bitrate = self.base_kbps_ * (0.6 + 0.6 * c.occupancy)
        fps = self.fps_
        if not online:
            self.raise_event("camera_offline", now_ms, "camera_offline", "major", "camera offline")
            bitrate, fps = 0.0, 0.0
        elif "camera_tamper" in self.active_:
            self.raise_event("camera_tamper", now_ms, "tamper", "major",
                             "camera tamper: image obscured or moved")
            bitrate *= 0.08  # a covered lens encodes to almost nothing
        return {"online": online, "recording": recording, "bitrate_kbps": bitrate, "fps": fps}


class Nvr(DeviceModel):
    """A network video recorder: channels recording, write rate, and disk use, which fills
    until retention starts deleting the oldest footage, then stays nearly constant."""

    kind = "nvr"
    metrics = (
        Metric("online"),
        Metric("recording_channels", None, 0, low=0.0),
        Metric("write_mbps", "Mbit/s", 1, 0.5, low=0.0, scale=8.0),
        Metric("disk_used_pct", "%", 2, 0.01, low=0.0, high=100.0, scale=3.0),
        Metric("temp_c", "degC", 1, 0.2, scale=4.0),
    )
    channels_: int
    retention_pct_: float
    fill_days_: float

    def _setup(self, rng: random.Random) -> None:
        self.channels_ = rng.choice((16, 32, 64))
        self.retention_pct_ = rng.uniform(88.0, 94.0)
        self.fill_days_ = rng.uniform(20.0, 40.0)

    def _step(self, now_ms: int, dt_s: float, c: Conditions, rng: random.Random) -> Mapping[str, Value]:
        stopped = "recording_stopped" in self.active_
        channels = 0 if stopped else self.channels_
        write = channels * 2.0 * (0.6 + 0.6 * c.occupancy)
        # Retention keeps the disk at its level, with a small daily sawtooth of deletes.
        saw = (now_ms % DAY_MS) / DAY_MS
        disk = self.retention_pct_ + 1.5 * saw
        return {"online": True, "recording_channels": float(channels), "write_mbps": write,
                "disk_used_pct": disk, "temp_c": 38.0 + 0.1 * write}


class LeakSensor(DeviceModel):
    """A water-leak sensor under a riser or in a plant room: dry, or wet; on a battery."""

    kind = "leak_sensor"
    metrics = (
        Metric("leak"),
        Metric("battery_pct", "%", 0, low=0.0, high=100.0),
        Metric("temp_c", "degC", 1, 0.1, scale=2.0),
    )
    battery_days_: float
    installed_day_: float

    def _setup(self, rng: random.Random) -> None:
        self.battery_days_ = rng.uniform(700.0, 1500.0)
        self.installed_day_ = rng.uniform(0.0, 600.0)

    def _step(self, now_ms: int, dt_s: float, c: Conditions, rng: random.Random) -> Mapping[str, Value]:
        leak = "water_leak" in self.active_
        if leak:
            self.raise_event("water_leak", now_ms, "water_leak", "major", "water detected")
        age = (now_ms / DAY_MS + self.installed_day_) % self.battery_days_
        return {"leak": leak, "battery_pct": 100.0 * (1.0 - age / self.battery_days_),
                "temp_c": 20.0 + 0.3 * (c.outdoor_c - 20.0)}


class Lift(DeviceModel):
    """A traction lift: trips and door cycles counted, motor current while the car moves,
    and the controller's fault code (``none`` when healthy)."""

    kind = "lift"
    metrics = (
        Metric("in_service"),
        Metric("trips", None, 0),
        Metric("door_cycles", None, 0),
        Metric("motor_current_a", "A", 1, 0.4, low=0.0, scale=8.0),
        Metric("fault_code"),
    )
    trips_per_h_: float
    trips_: float
    door_cycles_: float
    moving_until_ms_: int
    rated_a_: float

    def _setup(self, rng: random.Random) -> None:
        self.trips_per_h_ = rng.uniform(40.0, 160.0)
        self.trips_ = float(rng.randrange(10_000, 2_000_000))
        self.door_cycles_ = self.trips_ * 2.0
        self.moving_until_ms_ = 0
        self.rated_a_ = rng.uniform(25.0, 60.0)

    def _step(self, now_ms: int, dt_s: float, c: Conditions, rng: random.Random) -> Mapping[str, Value]:
        if "lift_fault" in self.active_:
            self.raise_event("lift_fault", now_ms, "lift_out_of_service", "major",
                             "lift out of service: door lock fault (E_DOOR_LOCK)", fault_code="E_DOOR_LOCK")
            self.moving_until_ms_ = 0  # the car stops where it is; no trips until reset
            return {"in_service": False, "trips": self.trips_, "door_cycles": self.door_cycles_,
                    "motor_current_a": 0.0, "fault_code": "E_DOOR_LOCK"}
        if now_ms >= self.moving_until_ms_ and dt_s > 0:
            rate_per_s = self.trips_per_h_ / 3600.0 * max(c.occupancy, 0.03)
            if rng.random() < 1.0 - math.exp(-rate_per_s * dt_s):
                self.trips_ += 1
                self.door_cycles_ += 2  # open at the landing, then close
                self.moving_until_ms_ = now_ms + int(rng.uniform(8.0, 30.0) * 1000)
        moving = now_ms < self.moving_until_ms_
        current = self.rated_a_ * rng.uniform(0.5, 0.9) if moving else 2.0
        return {"in_service": True, "trips": self.trips_, "door_cycles": self.door_cycles_,
                "motor_current_a": current, "fault_code": "none"}
