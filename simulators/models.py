"""The device models of the simulated fleet, in one explicit registry.

Each model is a deterministic, coupled simulation of one kind of building equipment (see
``simulators.base`` for what they share and ``simulators.hvac`` / ``simulators.safety``
for the kinds). Adding a kind: subclass ``DeviceModel``, list its ``metrics`` (name, unit,
decimals, noise, bounds, scale) and write ``_setup`` (draw parameters) and ``_step``
(true values at ``now_ms`` from the building's conditions and the active faults), add
one line to ``MODELS``, and list the kind in the faults it can suffer
(``simulators.faults``).
"""

from __future__ import annotations

from simulators.base import (
    DAY_MS,
    HOUR_MS,
    Building,
    Conditions,
    DeviceModel,
    Metric,
    UnreachableError,
    lag,
    occupancy,
)
from simulators.hvac import AirHandler, Chiller, PowerMeter, Pump, SpaceSensor
from simulators.safety import Camera, Door, FirePanel, LeakSensor, Lift, Nvr

MODELS: dict[str, type[DeviceModel]] = {
    m.kind: m
    for m in (Pump, Chiller, AirHandler, PowerMeter, Door, SpaceSensor, Lift, FirePanel, Camera, Nvr,
              LeakSensor)
}

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "MODELS",
    "Building",
    "Conditions",
    "DeviceModel",
    "Metric",
    "UnreachableError",
    "lag",
    "occupancy",
]
