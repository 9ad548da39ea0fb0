"""Whether a device is online, from its agent's latest status and its newest reading — a pure core.

Rules, in order:
- ``offline``: the agent's latest status says offline (graceful stop or last will), or the
  agent has never sent a status, so nothing vouches that it is connected;
- ``stale``: the agent says online but the device's newest reading is older than
  ``offline_after_ms`` (the agent is up, the device or its driver is silent);
- ``online``: the agent says online and the device reported within ``offline_after_ms``.

A reading stamped in the future (an edge clock running ahead) counts as fresh: it proves
the device spoke, and the skew is reported in the reason rather than hidden.
Every state carries a reason sentence for the control room.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ingest.store import AgentState, DeviceSeen

State = Literal["online", "offline", "stale"]


@dataclass(frozen=True, slots=True)
class Presence:
    state: State
    reason: str

    @property
    def online(self) -> bool:
        return self.state == "online"


def describe_age(ms: int) -> str:
    """A short human age: ``45 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
    s = ms / 1000
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86_400:.1f} d"


def device_presence(
    device: DeviceSeen, agent: AgentState | None, now_ms: int, offline_after_ms: int
) -> Presence:
    """The device's state and why, as of ``now_ms``."""
    age_ms = now_ms - device.last_seen_ms
    if age_ms >= 0:
        seen = f"last reading {describe_age(age_ms)} ago"
    else:
        seen = f"last reading stamped {describe_age(-age_ms)} in the future (edge clock ahead?)"
    if agent is None:
        return Presence("offline", f"agent {device.agent!r} has sent no status message; {seen}")
    if agent.state != "online":
        why = f": {agent.reason}" if agent.reason else ""
        return Presence("offline", f"agent {device.agent!r} reported {agent.state}{why}; {seen}")
    if age_ms > offline_after_ms:
        return Presence(
            "stale",
            f"agent {device.agent!r} is online but the device is silent: {seen}, "
            f"over the {describe_age(offline_after_ms)} limit",
        )
    return Presence("online", f"agent {device.agent!r} is online; {seen}")
