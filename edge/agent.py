"""The edge agent's core, without I/O: when to poll which device, and what to publish.

The runtime (``edge.runtime``) owns the clock, the drivers and the MQTT client; it asks
this core which devices are due at ``now_ms``, hands it what the drivers returned, and
publishes the ``Publication`` values it gets back, in order.

Invariants:
- the sequence number belongs to this agent: it starts at ``first_seq`` (the outbox's
  ``next_seq``, so it continues across restarts; 0 without an outbox) and grows by one
  per telemetry message, never shared with another agent or reset within a session, nor
  by a config reload (``replace_devices``); with ``boot`` it identifies a message;
- readings of one device are published in batches of at most ``max_readings_per_message``
  (several readings per message; one poll may give several messages), never mixed with
  another device's, because the topic names the device;
- polls run at a fixed rate (``due + interval``), not ``now + interval``, so they do not
  drift; a poll that is late by a whole interval or more is skipped rather than caught up
  in a burst, and a wall clock that steps back re-bases the schedule instead of stalling;
- the first polls of an agent's devices are spread over one interval, so N devices on one
  interval do not all fire in the same millisecond;
- a poll whose readings break the wire contract is refused here (``DriverError``) with
  the reason, rather than dead-lettered downstream, far from its cause. The check decodes
  each payload as ingest will (about 15 % of an agent's CPU per message); a source already
  tested to produce valid readings (the simulator's models, as a load generator) may turn
  it off with ``check_readings=False``;
- a device's health changes are reported only on transitions (starts failing, recovers),
  so the runtime logs an outage once when it starts and once when it ends;
- events (door forced, fire alarm, tamper) a driver reports are published on the
  device's event topic at QoS 1, numbered by their own sequence (from 0 per session), so
  telemetry numbers stay gapless for consumers that watch for lost messages; an event
  that breaks the contract is refused like bad readings, using no number.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edge.errors import DriverError
from wire import (
    Event,
    EventTopic,
    Reading,
    Status,
    StatusTopic,
    Telemetry,
    TelemetryTopic,
    WireError,
    decode_event,
    decode_telemetry,
    encode,
)
from wire.agent import AgentHealth
from wire.payloads import MIN_TS_MS, AgentState, Severity, decode_status


@dataclass(frozen=True, slots=True)
class PollPlan:
    """How often the core should poll one device."""

    device: str
    poll_interval_ms: int
    kind: str = "device"  # equipment kind, announced in the birth (wire.payloads.Status)

    def __post_init__(self) -> None:
        if self.poll_interval_ms < 1:
            raise ValueError(
                f"poll interval of {self.device} must be at least 1 ms, got {self.poll_interval_ms}"
            )


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """Something a driver saw happen at its device; the agent numbers and publishes it."""

    ts_ms: int
    kind: str
    severity: Severity
    message: str = ""
    data: Mapping[str, float | bool | str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Publication:
    """One MQTT message to publish, with the typed message it encodes."""

    topic: str
    payload: bytes
    message: Telemetry | Status | Event | AgentHealth
    qos: int
    retain: bool
    device: str | None = None  # None for the agent's own status

    @property
    def readings(self) -> int:
        return len(self.message.readings) if isinstance(self.message, Telemetry) else 0


class Agent:
    """One agent session's decisions: schedule, sequence numbers, batches, status, health."""

    def __init__(
        self,
        *,
        site: str,
        agent: str,
        devices: Sequence[PollPlan],
        boot: int,
        max_readings_per_message: int = 500,
        check_readings: bool = True,
        first_seq: int = 0,
        version: str = "",
    ) -> None:
        if max_readings_per_message < 1:
            raise ValueError("max_readings_per_message must be at least 1")
        self.site = site
        self.agent = agent
        self.boot = boot
        self.max_readings_per_message = max_readings_per_message
        self.check_readings = check_readings
        self.version = version
        self._status_topic = StatusTopic(site, agent).format()
        self._event_seq = 0
        self._heap: list[tuple[int, int]] = []  # (due_ms, index into _plans)
        if first_seq < 0:
            raise ValueError(f"first_seq must be at least 0, got {first_seq}")
        self._seq = first_seq
        self.skipped_polls = 0
        self._set_devices(devices)

    def _set_devices(self, devices: Sequence[PollPlan]) -> None:
        plans = tuple(devices)
        ids = [p.device for p in plans]
        if len(set(ids)) != len(ids):
            raise ValueError(f"device ids of agent {self.agent} are not unique: {ids}")
        # Building the topics validates every id once, here, rather than at each publish.
        telemetry_topics = {d: TelemetryTopic(self.site, self.agent, d).format() for d in ids}
        kinds = {p.device: p.kind for p in plans}
        try:  # the birth must decode: a bad kind is refused here, at start, not by ingest later
            decode_status(encode(Status(v=1, state="online", ts_ms=MIN_TS_MS, devices=kinds)))
        except WireError as e:
            raise ValueError(f"devices of agent {self.agent}: {e}") from None
        self._plans = plans
        self._telemetry_topics = telemetry_topics
        self._kinds = kinds
        self._event_topics: dict[str, str] = {}  # built on a device's first event
        self._interval = {p.device: p.poll_interval_ms for p in plans}
        self._failures: dict[str, int] = {}

    def replace_devices(self, devices: Sequence[PollPlan], now_ms: int) -> None:
        """Poll another set of devices (a reloaded config), keeping the sequence numbers."""
        self._set_devices(devices)
        self.start(now_ms)

    @property
    def seq(self) -> int:
        """The sequence number the next telemetry message will carry."""
        return self._seq

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(p.device for p in self._plans)

    # -- schedule -----------------------------------------------------------------------

    def start(self, now_ms: int) -> None:
        """Plan the first poll of every device, spread over its first interval."""
        n = len(self._plans)
        self._heap = [(now_ms + (i * p.poll_interval_ms) // n, i) for i, p in enumerate(self._plans)]
        heapq.heapify(self._heap)

    def due(self, now_ms: int) -> list[str]:
        """Devices to poll now, in due order; each is rescheduled for its next poll."""
        if not self._heap:
            return []
        first_due, first = self._heap[0]
        if first_due - now_ms > self._plans[first].poll_interval_ms:
            # The earliest poll is more than an interval away: the clock stepped back.
            self.start(now_ms)
        heap = self._heap
        out: list[str] = []
        while heap and heap[0][0] <= now_ms:
            due_ms, i = heap[0]
            interval = self._plans[i].poll_interval_ms
            nxt = due_ms + interval
            if nxt <= now_ms:
                self.skipped_polls += (now_ms - due_ms) // interval
                nxt = now_ms + interval
            heapq.heapreplace(heap, (nxt, i))
            out.append(self._plans[i].device)
        return out

    def next_due_ms(self) -> int | None:
        """When the next poll is due, or None before ``start``."""
        return self._heap[0][0] if self._heap else None

    # -- messages -----------------------------------------------------------------------

    def telemetry(self, device: str, readings: Sequence[Reading]) -> list[Publication]:
        """Batch one poll's readings of ``device`` into numbered telemetry messages.

        Raises DriverError if a reading breaks the wire contract (a driver bug, or a
        non-finite value); no sequence number is used then."""
        topic = self._telemetry_topics[device]
        out: list[Publication] = []
        step = self.max_readings_per_message
        seq = self._seq
        for start in range(0, len(readings), step):
            message = Telemetry(v=1, seq=seq, readings=tuple(readings[start : start + step]))
            try:
                payload = encode(message)
                if self.check_readings:
                    decode_telemetry(payload)  # what ingest will do: refuse it here, where the cause is
            except (WireError, TypeError, ValueError) as e:
                raise DriverError(f"device {device}: the driver returned invalid readings: {e}") from None
            seq += 1
            out.append(Publication(topic, payload, message, qos=1, retain=False, device=device))
        # Numbers are taken only once every batch is valid, so a refused poll leaves no gap.
        self._seq = seq
        return out

    def event(self, device: str, event: DeviceEvent) -> Publication:
        """The message of one event of ``device``; raise DriverError if it breaks the contract."""
        topic = self._event_topics.get(device)
        if topic is None:
            if device not in self._interval:
                raise DriverError(f"device {device}: not a device of agent {self.agent}")
            topic = self._event_topics[device] = EventTopic(self.site, self.agent, device).format()
        try:
            message = Event(v=1, seq=self._event_seq, ts_ms=event.ts_ms, kind=event.kind,
                            severity=event.severity, message=event.message, data=dict(event.data))
            payload = encode(message)
            if self.check_readings:
                decode_event(payload)
        except (WireError, TypeError, ValueError) as e:
            raise DriverError(f"device {device}: the driver reported an invalid event: {e}") from None
        self._event_seq += 1
        return Publication(topic, payload, message, qos=1, retain=False, device=device)

    def _status(self, state: AgentState, now_ms: int, reason: str) -> Publication:
        online = state == "online"
        message = Status(v=1, state=state, ts_ms=now_ms, boot=self.boot, reason=reason,
                         version=self.version if online else "", devices=dict(self._kinds) if online else {})
        return Publication(self._status_topic, encode(message), message, qos=1, retain=True)

    def birth(self, now_ms: int) -> Publication:
        """The retained online status with version and device kinds, published after every
        connect and on a ``rebirth`` command."""
        return self._status("online", now_ms, "")

    def will(self, connect_ms: int) -> Publication:
        """The retained offline status the broker publishes if the connection dies."""
        return self._status("offline", connect_ms, "connection lost")

    def goodbye(self, now_ms: int) -> Publication:
        """The retained offline status of a graceful stop."""
        return self._status("offline", now_ms, "stopped")

    # -- health -------------------------------------------------------------------------

    def poll_failed(self, device: str) -> bool:
        """Count a failed poll; True if the device was healthy until now."""
        n = self._failures.get(device, 0) + 1
        self._failures[device] = n
        return n == 1

    def poll_succeeded(self, device: str) -> int:
        """Mark a good poll; return how many polls had failed in a row before it (0: none)."""
        return self._failures.pop(device, 0)

    def failing(self) -> tuple[str, ...]:
        """Devices whose last poll failed."""
        return tuple(self._failures)
