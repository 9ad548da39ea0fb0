"""The simulated driver: readings from a signal source instead of a wire protocol.

Two ways in:
- from YAML, ``driver: simulated`` with ``options: {seed, points: [...]}``: each point is
  a waveform (``base + amplitude*sin(2*pi*(t + phase_s)/period_s)`` plus gaussian noise,
  clamped and rounded), a boolean that is true with probability ``p_true`` per poll
  (a door contact, a fault flag), or a string stepping through ``values`` every
  ``hold_s`` seconds (an operating mode);
- programmatically, ``SimulatedDriver(source)`` with any ``SignalSource``: this is how
  ``simulators`` plugs its richer device models into a real agent.

Invariants:
- a waveform source is reproducible: the same seed and the same sequence of ``now_ms``
  give the same readings (one ``random.Random`` per source, created on first sample);
- numeric values are Python floats, never ints, so a metric never changes type in the
  store (wire.payloads); every value is finite (clamped before rounding).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from edge.drivers.base import DeviceInfo, DriverSpec
from wire import Reading
from wire.payloads import METRIC_PATTERN


class SignalSource(Protocol):
    """Anything that can say what a device measures at ``now_ms``."""

    def sample(self, now_ms: int) -> Sequence[Reading]: ...


class _Point(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(pattern=METRIC_PATTERN)
    unit: str | None = Field(None, min_length=1, max_length=32)


class FloatPoint(_Point):
    """A numeric waveform with noise."""

    type: Literal["float"] = "float"
    base: float
    amplitude: float = 0.0
    period_s: float = Field(86_400.0, gt=0)
    phase_s: float = 0.0
    noise: float = Field(0.0, ge=0)
    decimals: int = Field(2, ge=0, le=9)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds_ordered(self) -> FloatPoint:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class BoolPoint(_Point):
    """A boolean that is true with probability ``p_true`` at each poll."""

    type: Literal["bool"]
    p_true: float = Field(ge=0, le=1)


class StrPoint(_Point):
    """A string stepping through ``values``, each held for ``hold_s`` seconds of wall time."""

    type: Literal["str"]
    values: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(min_length=1)
    hold_s: float = Field(60.0, gt=0)


def _point_type(value: Any) -> str:
    # ``type`` may be left out for the common numeric case, so the tag has a default;
    # pydantic's plain ``discriminator=`` would demand it on every point.
    if isinstance(value, dict):
        return str(value.get("type", "float"))
    return str(getattr(value, "type", "float"))


Point = Annotated[
    Annotated[FloatPoint, Tag("float")] | Annotated[BoolPoint, Tag("bool")] | Annotated[StrPoint, Tag("str")],
    Discriminator(_point_type),
]


class SimulatedOptions(BaseModel):
    """``options:`` of a ``driver: simulated`` device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    points: list[Point] = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _metrics_unique(self) -> SimulatedOptions:
        seen: set[str] = set()
        for p in self.points:
            if p.metric in seen:
                raise ValueError(f"metric {p.metric!r} is listed twice")
            seen.add(p.metric)
        return self


class WaveformSource:
    """A ``SignalSource`` built from ``SimulatedOptions``."""

    def __init__(self, options: SimulatedOptions) -> None:
        self.options = options
        self._rng_: random.Random | None = None

    def sample(self, now_ms: int) -> list[Reading]:
        if self._rng_ is None:
            self._rng_ = random.Random(self.options.seed)
        rng = self._rng_
        t_s = now_ms / 1000.0
        out: list[Reading] = []
        for p in self.options.points:
            value: float | bool | str
            if isinstance(p, FloatPoint):
                x = p.base + p.amplitude * math.sin(2.0 * math.pi * (t_s + p.phase_s) / p.period_s)
                if p.noise:
                    x += rng.gauss(0.0, p.noise)
                if p.min is not None:
                    x = max(p.min, x)
                if p.max is not None:
                    x = min(p.max, x)
                value = float(round(x, p.decimals))
            elif isinstance(p, BoolPoint):
                value = rng.random() < p.p_true
            else:
                value = p.values[int(t_s // p.hold_s) % len(p.values)]
            out.append(Reading(ts_ms=now_ms, metric=p.metric, value=value, unit=p.unit))
        return out


class SimulatedDriver:
    """A driver whose device is a ``SignalSource``; it has no connection to open."""

    def __init__(self, source: SignalSource) -> None:
        self.source = source

    def start(self) -> None:
        return None

    def read(self, now_ms: int) -> Sequence[Reading]:
        return self.source.sample(now_ms)

    def stop(self) -> None:
        return None


def _create(device: DeviceInfo, options: SimulatedOptions) -> SimulatedDriver:
    return SimulatedDriver(WaveformSource(options))


SPEC: DriverSpec[SimulatedOptions] = DriverSpec(
    options=SimulatedOptions,
    create=_create,
    summary="waveforms, booleans and strings generated from a seed (no hardware)",
)
