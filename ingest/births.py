"""Which devices each agent announced in its latest birth, and the check of telemetry against it (sans-IO).

An agent's birth (``wire.Status`` with ``state == "online"``) lists its devices
(``Status.devices``: device id -> equipment kind). Telemetry naming a device its agent's
latest birth did not list is refused as ``unknown_device``: a mistyped device id in an edge
config, or a topic forged by something else, would otherwise create a device nobody
configured, whose readings no detector, dashboard or work order would ever look at.

Invariants:
- "latest" follows the contract's ordering of statuses: the greatest ``ts_ms`` wins, ties
  going to the later arrival; a will or goodbye (no device list) never changes the list,
  so telemetry still buffered in the broker after an agent went offline is not refused;
- an agent with no known birth carrying a device list is *accepted*: a worker that just
  started (its knowledge is in memory, and queued telemetry can arrive before the
  retained birth is redelivered), and agents older than the device list, must not lose
  data. A birth with an empty list (an agent that announces none) also accepts all;
- memory is bounded by the number of agents times the devices each announces (the
  contract caps the latter).
"""

from __future__ import annotations

from dataclasses import dataclass

from wire import Status, StatusTopic, TelemetryTopic

AgentKey = tuple[str, str]  # (site, agent)


@dataclass(frozen=True, slots=True)
class Birth:
    ts_ms: int
    boot: int
    devices: frozenset[str]


class Births:
    def __init__(self) -> None:
        self._latest: dict[AgentKey, Birth] = {}

    def update(self, topic: StatusTopic, status: Status) -> None:
        """Record a status; only a birth at least as new as the known one changes anything."""
        if status.state != "online":
            return
        key = (topic.site, topic.agent)
        known = self._latest.get(key)
        if known is not None and status.ts_ms < known.ts_ms:
            return  # a stale birth (an older retained copy, an older session's redelivery)
        self._latest[key] = Birth(status.ts_ms, status.boot, frozenset(status.devices))

    def devices(self, site: str, agent: str) -> frozenset[str] | None:
        """The devices of the agent's latest birth; None when unknown or not announced."""
        birth = self._latest.get((site, agent))
        return birth.devices if birth is not None and birth.devices else None

    def unknown_device(self, topic: TelemetryTopic) -> str | None:
        """Why this telemetry's device is refused, or None when it is accepted."""
        birth = self._latest.get((topic.site, topic.agent))
        if birth is None or not birth.devices or topic.device in birth.devices:
            return None
        listed = sorted(birth.devices)
        shown = ", ".join(listed[:10]) + (f", ... ({len(listed)} in all)" if len(listed) > 10 else "")
        return (f"device {topic.device!r} is not one agent {topic.agent!r} of site {topic.site!r} "
                f"announced in its latest birth (boot {birth.boot}, ts_ms {birth.ts_ms}: {shown}); add it to "
                "the agent's device list, or fix the device id in the topic, then replay this dead letter")
