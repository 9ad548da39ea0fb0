"""What every device model shares: the building it is in, its metrics, noise, quantisation,
faults and events.

A ``Building`` couples the devices of one site the way a real one does: its occupancy
schedule and its weather set a cooling load, and every model derives its signals from
that load (chillers their power and water temperatures, pumps their flow and pressure,
AHUs their fans and valves, meters their demand, rooms their temperature and CO2), so
the signals of one site rise and fall together, as analytics expects of real data.

A model is the edge driver of its device (``start``/``read``/``stop``, and
``take_events`` for the wire events it raises), so the edge runtime polls it directly.
``read(now_ms)`` asks the model's ``_step`` for the true values, then adds sensor noise,
applies the sensor faults active then, clamps and rounds to the instrument's resolution.

Invariants:
- reproducible: the same class, seed, building, faults and sequence of ``now_ms`` give
  the same readings and events (one ``random.Random(seed)`` per model, all draws in a fixed
  order; no global random, no wall clock); a ``Building`` is a pure function of its seed
  and the time;
- ``__init__`` only stores its arguments; parameters and state (names ending in ``_``)
  are created on the first ``read``;
- numeric values are finite Python floats within each metric's bounds, rounded to its
  decimals; booleans and strings are only what a metric declares;
- a counter metric (``energy_kwh``, ``running_hours``, ``trips``) never decreases, because
  it integrates something never negative and carries no noise and no sensor fault;
- a ``device_offline`` fault makes every ``read`` raise ``UnreachableError``, and a
  ``comm_loss`` fault the reads in the 30 s windows its seed marks down (a flaky link
  fails in bursts): the edge runtime counts a failed poll and publishes nothing for it,
  as with real hardware.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from edge.agent import DeviceEvent
from simulators.errors import SimError
from simulators.faults import Fault
from wire import Reading
from wire.payloads import Severity

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
Value = float | bool | str


class UnreachableError(SimError):
    """The simulated device does not answer this poll (an offline or comm_loss fault)."""


@dataclass(frozen=True, slots=True)
class Metric:
    """How a model reports one metric: unit, resolution (decimals), sensor noise (sd),
    bounds, and ``scale``, the size of a typical change (sizes sensor faults); a metric
    without a scale is not a sensor (a counter, a state) and gets no sensor fault."""

    name: str
    unit: str | None = None
    decimals: int = 2
    noise: float = 0.0
    low: float | None = None
    high: float | None = None
    scale: float | None = None


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


def stable_seed(*parts: object) -> int:
    """A seed from values, the same in every process (``hash`` of a str is salted)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, slots=True)
class Conditions:
    """A building at one moment: what drives every device in it."""

    occupancy: float  # 0..1
    outdoor_c: float
    cooling: float  # fraction of the design cooling load, 0.1..1


class Building:
    """Occupancy schedule and weather of one site, and the cooling load they make.

    Weather: a daily cycle peaking mid-afternoon around a climate mean, plus a day-to-day
    offset drawn per day from the seed (interpolated, so there is no step at midnight).
    Cooling load: a base (IT rooms, the envelope at night), people and equipment by
    occupancy, and the outdoor temperature through the envelope and fresh air."""

    def __init__(self, seed: int = 0, *, utc_offset_h: float = 0.0) -> None:
        rng = random.Random(stable_seed("building", seed))
        self.seed = seed
        self.utc_offset_h = utc_offset_h
        self.mean_c = rng.uniform(20.0, 28.0)
        self.swing_c = rng.uniform(3.0, 6.0)
        self._last: tuple[int, Conditions] | None = None
        self._days: dict[int, float] = {}

    def _day_offset(self, day: int) -> float:
        x = self._days.get(day)
        if x is None:
            if len(self._days) > 64:  # a cache, not a history: a long replay stays small
                self._days.clear()
            x = self._days[day] = random.Random(stable_seed("weather", self.seed, day)).uniform(-3.0, 3.0)
        return x

    def outdoor_c(self, now_ms: int) -> float:
        local_h = now_ms / HOUR_MS + self.utc_offset_h
        day_f = local_h / 24.0 - 0.5  # day offsets are pinned at local noon
        day = math.floor(day_f)
        frac = day_f - day
        offset = (1.0 - frac) * self._day_offset(day) + frac * self._day_offset(day + 1)
        daily = math.cos(2.0 * math.pi * (local_h - 15.0) / 24.0)  # warmest at 15:00
        return self.mean_c + offset + self.swing_c * daily

    def at(self, now_ms: int) -> Conditions:
        last = self._last
        if last is not None and last[0] == now_ms:  # every device of a tick asks the same
            return last[1]
        occ = occupancy(now_ms, self.utc_offset_h)
        outdoor = self.outdoor_c(now_ms)
        cooling = min(1.0, max(0.1, 0.15 + 0.5 * occ + 0.03 * (outdoor - 22.0)))
        c = Conditions(occ, outdoor, cooling)
        self._last = (now_ms, c)
        return c


_DEFAULT_BUILDING = Building(0)


class DeviceModel:
    """Base of every device model; subclasses set ``kind``, ``metrics``, ``_setup``, ``_step``."""

    kind: ClassVar[str] = ""
    metrics: ClassVar[tuple[Metric, ...]] = ()

    def __init__(
        self,
        device_id: str,
        seed: int,
        *,
        building: Building | None = None,
        faults: Sequence[Fault] = (),
    ) -> None:
        self.device_id = device_id
        self.seed = seed
        self.building = building or _DEFAULT_BUILDING
        self.faults = tuple(sorted(faults, key=lambda f: f.start_ms))
        self._rng_: random.Random | None = None
        self._last_ms_: int | None = None
        self._events_: list[DeviceEvent] = []
        self.events_raised = 0
        self.active_: dict[str, Fault] = {}  # fault kind -> the fault active at this sample
        self._held_: dict[tuple[int, str], float] = {}  # stuck sensors' frozen values
        self._announced_: set[tuple[str, int]] = set()  # (fault, start) already raised an event

    @property
    def utc_offset_h(self) -> float:
        return self.building.utc_offset_h

    # -- the edge driver interface ----------------------------------------------------

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def read(self, now_ms: int) -> list[Reading]:
        return self.sample(now_ms)

    def take_events(self) -> list[DeviceEvent]:
        events, self._events_ = self._events_, []
        return events

    # -- sampling ---------------------------------------------------------------------

    def sample(self, now_ms: int) -> list[Reading]:
        rng = self._rng_
        if rng is None:
            rng = self._rng_ = random.Random(self.seed)
            self._setup(rng)
        dt_s = 0.0 if self._last_ms_ is None else max(0.0, (now_ms - self._last_ms_) / 1000.0)
        self._last_ms_ = now_ms
        active = self.active_
        if self.faults or active:
            active.clear()
            for f in self.faults:
                if f.start_ms > now_ms:
                    break
                if now_ms < f.end_ms:
                    active[f.fault] = f
            if "device_offline" in active:
                raise UnreachableError(f"{self.device_id} does not answer (simulated: offline)")
            loss = active.get("comm_loss")
            if loss is not None and self._link_down(loss, now_ms):
                raise UnreachableError(f"{self.device_id}: no reply (simulated: communication loss)")
        values = self._step(now_ms, dt_s, self.building.at(now_ms), rng)
        out: list[Reading] = []
        gauss = rng.gauss
        # The hot path of a large fleet (one call per device per poll): locals, and Reading
        # built positionally (ts_ms, metric, value, unit).
        for m in self.metrics:
            value = values[m.name]
            if value.__class__ is float or not isinstance(value, bool | str):
                x = float(value)
                if m.noise:
                    x += gauss(0.0, m.noise)
                if active and m.scale is not None:
                    x = self._sensor_fault(m, x, now_ms, rng)
                low, high = m.low, m.high
                if low is not None and x < low:
                    x = low
                if high is not None and x > high:
                    x = high
                value = round(x, m.decimals)
            out.append(Reading(now_ms, m.name, value, m.unit))
        return out

    def _link_down(self, f: Fault, now_ms: int) -> bool:
        """A flaky link fails in bursts: each 30 s window of the fault is down or up, drawn
        from the seed and the window (not from the poll), so a poll rate changes nothing."""
        window = (now_ms - f.start_ms) // 30_000
        draw = random.Random(stable_seed("link", self.seed, f.start_ms, window)).random()
        return draw < min(0.95, 0.6 * f.strength)

    def _sensor_fault(self, m: Metric, x: float, now_ms: int, rng: random.Random) -> float:
        scale = m.scale or 0.0
        for name in ("sensor_stuck", "sensor_drift", "sensor_spike", "sensor_noisy"):
            f = self.active_.get(name)
            if f is None or f.metric != m.name:
                continue
            if name == "sensor_stuck":
                return self._held_.setdefault((f.start_ms, m.name), x)
            if name == "sensor_drift":
                hours = (now_ms - f.start_ms) / HOUR_MS
                x += scale * f.strength * min(3.0, 0.75 * hours)  # 3/4 of a scale per hour, capped
            elif name == "sensor_spike":
                if rng.random() < 0.05:
                    x += rng.choice((-1.0, 1.0)) * scale * f.strength * rng.uniform(4.0, 8.0)
            else:
                x += rng.gauss(0.0, scale * f.strength * 0.4)
        return x

    def severity(self, fault: str, now_ms: int, ramp_s: float = 0.0) -> float:
        """How strongly ``fault`` acts now: its strength, ramped up linearly over ``ramp_s``
        from its start (wear grows; a leak empties); 0 when it is not active."""
        f = self.active_.get(fault)
        if f is None:
            return 0.0
        if ramp_s <= 0:
            return f.strength
        return f.strength * min(1.0, (now_ms - f.start_ms) / (ramp_s * 1000.0))

    def raise_event(self, fault: str, now_ms: int, kind: str, severity: Severity, message: str,
                    **data: float | bool | str) -> None:
        """Publish ``kind`` once for the active ``fault`` (at its first sample)."""
        f = self.active_.get(fault)
        if f is None or (fault, f.start_ms) in self._announced_:
            return
        self._announced_.add((fault, f.start_ms))
        self.event(now_ms, kind, severity, message, **data)

    def event(self, now_ms: int, kind: str, severity: Severity, message: str,
              **data: float | bool | str) -> None:
        """Publish an event (one that is not a fault's: a door held open by a visitor)."""
        self.events_raised += 1
        self._events_.append(DeviceEvent(ts_ms=now_ms, kind=kind, severity=severity,
                                         message=f"{self.device_id}: {message}", data=data))

    def _setup(self, rng: random.Random) -> None:
        """Draw this device's parameters (size, set points) from its seed."""

    def _step(self, now_ms: int, dt_s: float, c: Conditions, rng: random.Random) -> Mapping[str, Value]:
        """True values at ``now_ms``, ``dt_s`` after the previous sample (0 on the first)."""
        raise NotImplementedError


__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "Building",
    "Conditions",
    "DeviceModel",
    "Metric",
    "UnreachableError",
    "Value",
    "lag",
    "occupancy",
    "stable_seed",
]
