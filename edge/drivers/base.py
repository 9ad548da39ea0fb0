"""The driver interface: what the agent needs from anything that reads a device.

Shaped after Telegraf's inputs: a tiny interface (``start``/``read``/``stop``) and, per
driver, a pydantic model of its options, so the agent's config is validated at start and
a typo fails at boot rather than at the first poll.

Invariants:
- a driver's ``__init__`` only stores its arguments; connections are opened in ``start``
  (and re-opened lazily by ``read`` after a failure), so building every driver of a config
  is cheap and cannot fail on the network;
- ``read(now_ms)`` returns readings stamped at the edge (``now_ms`` unless the device
  reports its own measurement time) or raises; any exception is a failed poll of that one
  device, counted and logged by the runtime, never fatal to the agent;
- drivers are created only through a ``DriverSpec`` found in an explicit registry
  (``edge.drivers.DRIVERS``); nothing registers itself on import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from wire import Reading


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Who a driver reads for; lets it name the device in its errors and logs."""

    site: str
    agent: str
    device: str
    kind: str


class Driver(Protocol):
    """Reads one device. Called from one thread at a time (the agent's scheduler)."""

    def start(self) -> None:
        """Open connections; raise on failure (the runtime retries before the next poll)."""

    def read(self, now_ms: int) -> Sequence[Reading]:
        """Poll the device once; raise on failure."""

    def stop(self) -> None:
        """Release connections; must not raise for a driver that never started."""


OptionsT = TypeVar("OptionsT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class DriverSpec(Generic[OptionsT]):
    """A registry entry: the driver's options model and how to build it from them."""

    options: type[OptionsT]
    create: Callable[[DeviceInfo, OptionsT], Driver]
    summary: str = ""

    def build(self, device: DeviceInfo, options: BaseModel) -> Driver:
        """Build a driver from options already validated against ``self.options``."""
        if not isinstance(options, self.options):
            raise TypeError(
                f"options for {device.device} are {type(options).__name__}, expected {self.options.__name__}"
            )
        return self.create(device, options)
