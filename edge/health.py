"""What an agent says about its own health (``wire.agent.AgentHealth``), without I/O.

The runtime tells ``HealthBook`` how each poll of each device went and how long
published messages took to be acknowledged; ``report`` turns that and the outbox's
figures into the retained health message.

Invariants:
- a device is ``offline`` from its first failed poll until its next good one, with the
  last error as the reason; this is separate from the agent's own online status (the
  agent may be fine while one meter is unplugged);
- ``since_ms`` changes only on a transition, so a consumer sees how long a device has
  been down; ``poll_errors`` only grows (since the agent started);
- ``publish_p99_s`` is over the latencies recorded since the previous report, so each
  report describes its own interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge.outbox import OutboxStats
from wire.agent import AgentHealth, DeviceHealth
from wire.payloads import Text

_MAX_REASON = 1024


@dataclass(slots=True)
class _Device:
    online: bool
    since_ms: int
    errors: int = 0
    reason: str = ""


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class HealthBook:
    """Per-device poll state and publish latencies of one agent."""

    def __init__(self, devices: Iterable[str], now_ms: int) -> None:
        self._devices: dict[str, _Device] = {}
        self.poll_errors = 0
        self._latencies: list[float] = []
        self.reset_devices(devices, now_ms)

    def reset_devices(self, devices: Iterable[str], now_ms: int) -> None:
        """Track another set of devices (a reloaded config); known ones keep their state."""
        old = self._devices
        self._devices = {d: old.get(d) or _Device(online=True, since_ms=now_ms) for d in devices}

    def poll_ok(self, device: str, now_ms: int) -> None:
        d = self._devices.get(device)
        if d is not None and not d.online:
            d.online, d.since_ms, d.reason = True, now_ms, ""

    def poll_failed(self, device: str, now_ms: int, reason: str) -> None:
        self.poll_errors += 1
        d = self._devices.get(device)
        if d is None:
            return
        d.errors += 1
        d.reason = reason[:_MAX_REASON]
        if d.online:
            d.online, d.since_ms = False, now_ms

    def offline(self) -> list[str]:
        return [name for name, d in self._devices.items() if not d.online]

    def record_latencies(self, seconds: Iterable[float]) -> None:
        self._latencies.extend(seconds)

    def report(
        self, *, now_ms: int, boot: int, outbox: OutboxStats | None, version: str, config_error: Text = ""
    ) -> AgentHealth:
        """The health message now; starts a new latency interval."""
        lat, self._latencies = self._latencies, []
        devices = {
            name: DeviceHealth(
                state="online" if d.online else "offline",
                since_ms=d.since_ms,
                poll_errors=d.errors,
                reason=d.reason,
            )
            for name, d in self._devices.items()
        }
        oldest = outbox.oldest_queued_ms if outbox is not None else None
        return AgentHealth(
            v=1,
            ts_ms=now_ms,
            boot=boot,
            outbox_depth=outbox.depth if outbox else 0,
            outbox_bytes=outbox.bytes if outbox else 0,
            oldest_unacked_age_s=max(0.0, (now_ms - oldest) / 1000.0) if oldest is not None else 0.0,
            dropped=outbox.dropped if outbox else 0,
            poll_errors=self.poll_errors,
            publish_p99_s=round(percentile(lat, 0.99), 3),
            devices=devices,
            version=version,
            config_error=config_error[:_MAX_REASON],
        )


__all__ = ["HealthBook", "percentile"]
