"""Drivers the edge agent can poll devices with, in one explicit registry.

A driver is a module exposing a ``DriverSpec`` (its pydantic options model and a
factory) and one line in ``DRIVERS`` below; protocol drivers share the point map of
``edge.drivers.points`` (metric, unit, scale, deadband, per-point interval). Nothing
registers itself on import: what an agent can run is what this table says. Code that
needs a different set (a test, the simulator) passes its own mapping to
``edge.config.load_config`` and ``edge.runtime.build_drivers``.
"""

from __future__ import annotations

from typing import Any

from edge.drivers import bacnet, modbus, simulated, snmp
from edge.drivers.base import DeviceInfo, Driver, DriverSpec
from edge.drivers.simulated import SignalSource, SimulatedDriver

DRIVERS: dict[str, DriverSpec[Any]] = {
    "simulated": simulated.SPEC,
    "modbus": modbus.SPEC,
    "snmp": snmp.SPEC,
    "bacnet": bacnet.SPEC,
}

__all__ = ["DRIVERS", "DeviceInfo", "Driver", "DriverSpec", "SignalSource", "SimulatedDriver"]
