"""The edge agent's adapter: clocks, drivers, threads and the MQTT connection.

One ``AgentRuntime`` per agent pairs the sans-IO core (``edge.agent.Agent``) with its
drivers and its own paho client (paho runs one network thread per client). One
``Scheduler`` thread drives any number of runtimes: it asks each core which devices are
due, reads their drivers, and publishes what the core returns. So a process can run a
whole simulated fleet (ten agents, hundreds of devices) on one scheduler thread plus one
network thread per agent.

Invariants:
- the last will is the retained offline status at QoS 1, re-armed before every connect
  with that connect's time; after every connect the retained online status is published
  at QoS 1 before anything else from the on_connect callback;
- telemetry is published at QoS 1; while the broker is away paho keeps up to
  ``max_queued_messages`` in memory and sends them after reconnecting; beyond that a
  message is dropped, counted in ``publish_failures`` and logged (once per episode);
- a driver that raises fails that device's poll only: it is counted, logged once when the
  device starts failing and once when it recovers, and the other devices keep their
  schedule (drivers must not block for long: they run on the scheduler thread);
- a driver may also report events: if it has ``take_events()`` (see ``EventSource``),
  the runtime calls it after each successful ``read`` and publishes what it returns after
  that poll's telemetry (``take_events`` raising fails the poll like a failed read; an
  event that breaks the contract is logged and dropped, alone);
- ``on_acked`` is called once per message the broker acknowledged (paho's on_publish),
  from paho's network thread, with the exact ``Publication`` sent; it must be quick and
  must not publish;
- ``Scheduler.run`` returns only after every started runtime published its graceful
  offline status, waited (up to ``stop_timeout_s``) for outstanding acknowledgements, and
  disconnected; messages still unacknowledged then are counted and logged, never silently
  dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from edge.agent import Agent, DeviceEvent, PollPlan, Publication
from edge.boot import next_boot
from edge.config import AgentConfig, load_config
from edge.drivers import DRIVERS, DeviceInfo, Driver, DriverSpec
from edge.errors import DriverError, EdgeError
from edge.settings import EdgeSettings
from wire import MqttSettings, WireError
from wire.mqtt import make_client, set_nodelay

log = logging.getLogger(__name__)

OnAcked = Callable[[Publication], None]
_ACCEPTED = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)  # NO_CONN: queued, sent on connect


class EventSource(Protocol):
    """A driver that also reports events (door forced, fire alarm, tamper)."""

    def take_events(self) -> Sequence[DeviceEvent]:
        """Events seen since the last call, oldest first; each is returned once."""


def wall_ms() -> int:
    """Epoch milliseconds: readings carry the edge's wall-clock time (wire.payloads)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class AgentStats:
    """A snapshot of one agent's counters."""

    site: str
    agent: str
    boot: int
    connected: bool
    polls: int
    poll_failures: int
    devices_failing: int
    messages_published: int  # handed to the client (sent, or queued until connected)
    messages_acked: int
    readings_published: int
    readings_acked: int
    publish_failures: int  # refused by the client (queue full): lost, and logged
    unacked: int  # published but not acknowledged yet
    skipped_polls: int


class AgentRuntime:
    """One agent on the bus: its core, its drivers and its own paho client."""

    def __init__(
        self,
        core: Agent,
        drivers: Mapping[str, Driver],
        mqtt_settings: MqttSettings,
        *,
        on_acked: OnAcked | None = None,
        max_queued_messages: int = 10_000,
        max_inflight: int = 100,
        client_id: str | None = None,
    ) -> None:
        missing = set(core.devices) ^ set(drivers)
        if missing:
            raise EdgeError(f"agent {core.agent}: devices and drivers differ on {sorted(missing)}")
        self.core = core
        self.drivers = dict(drivers)
        self.mqtt_settings = mqtt_settings
        self.on_acked = on_acked
        self.max_queued_messages = max_queued_messages
        self.max_inflight = max_inflight
        self.client_id = client_id or f"vigil-edge-{core.site}-{core.agent}"
        self.online = threading.Event()
        self._client: mqtt.Client | None = None
        self._started_drivers: set[str] = set()
        self._stopping = False
        self._was_connected = False
        self._connect_ms = 0
        self._dropping = False
        # Acknowledgement bookkeeping, shared with paho's network thread. paho calls
        # on_publish holding its own message lock, and publish() takes that lock, so this
        # lock is never held while calling into paho (that order would deadlock); a PUBACK
        # that beats the bookkeeping of its own publish() lands in _early_acks.
        self._lock = threading.Lock()
        self._pending: dict[int, Publication] = {}
        self._early_acks: set[int] = set()
        self._polls = 0
        self._poll_failures = 0
        self._published = 0
        self._acked = 0
        self._readings_published = 0
        self._readings_acked = 0
        self._publish_failures = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, now_ms: int) -> None:
        """Start drivers, arm the last will and connect in the background."""
        self.core.start(now_ms)
        for device in self.core.devices:
            self._start_driver(device)
        client = make_client(
            self.mqtt_settings,
            self.client_id,
            max_inflight=self.max_inflight,
            max_queued=self.max_queued_messages,
        )
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._arm_will(client, now_ms)
        self._client = client
        try:
            m = self.mqtt_settings
            client.connect_async(m.host, m.port, m.keepalive_s)
        except (OSError, ValueError) as e:
            raise EdgeError(f"agent {self.core.agent}: cannot connect to the broker: {e}") from None
        client.loop_start()

    def say_goodbye(self, now_ms: int) -> None:
        """First half of a stop: publish the retained graceful offline status."""
        self._stopping = True
        if self._client is not None:
            # Never stamped before this connection's birth (a simulated clock may run in the
            # past): stores keep the greatest ts_ms, so an older goodbye would leave the agent
            # "online" (see wire.payloads.Status).
            self._publish(self.core.goodbye(max(now_ms, self._connect_ms)))

    def close(self, deadline_monotonic: float) -> None:
        """Second half of a stop: wait for acknowledgements until the deadline, disconnect."""
        client = self._client
        if client is not None:
            while self.online.is_set() and self.unacked() and time.monotonic() < deadline_monotonic:
                time.sleep(0.005)
            lost = self.unacked()
            if lost:
                log.warning(
                    "agent %s/%s stopped with %d message(s) not acknowledged by the broker "
                    "(they may not have arrived)", self.core.site, self.core.agent, lost,
                )
            client.disconnect()
            client.loop_stop()
            self._client = None
        for device in sorted(self._started_drivers):
            try:
                self.drivers[device].stop()
            except Exception as e:  # one driver's failure must not stop the others'
                log.warning("device %s: driver failed to stop: %s", device, e)
        self._started_drivers.clear()

    # -- polling ------------------------------------------------------------------------

    def poll(self, now_ms: int) -> None:
        """Read every due device and publish its readings."""
        core = self.core
        for device in core.due(now_ms):
            self._polls += 1
            try:
                if device not in self._started_drivers:
                    self._start_driver(device, raise_errors=True)
                driver = self.drivers[device]
                readings = driver.read(now_ms)
                publications = core.telemetry(device, readings)
                take_events = getattr(driver, "take_events", None)  # see EventSource
                events = take_events() if take_events is not None else ()
            except Exception as e:  # a driver's failure is its device's, not the agent's
                self._poll_failures += 1
                if core.poll_failed(device):
                    log.warning(
                        "device %s/%s/%s: poll failed: %s: %s (logged again when it recovers)",
                        core.site, core.agent, device, type(e).__name__, e,
                    )
                continue
            failed = core.poll_succeeded(device)
            if failed:
                log.info(
                    "device %s/%s/%s: recovered after %d failed poll(s)",
                    core.site, core.agent, device, failed,
                )
            for pub in publications:
                self._publish(pub)
            for event in events:
                try:
                    pub = core.event(device, event)
                except DriverError as e:  # this event only: the poll's telemetry is already out
                    log.error("device %s/%s/%s: %s", core.site, core.agent, device, e)
                    continue
                self._publish(pub)

    def next_due_ms(self) -> int | None:
        return self.core.next_due_ms()

    def _start_driver(self, device: str, *, raise_errors: bool = False) -> None:
        try:
            self.drivers[device].start()
        except Exception:
            if raise_errors:
                raise
            # Counted and logged as this device's failed poll when it next comes due.
            return
        self._started_drivers.add(device)

    # -- publishing ---------------------------------------------------------------------

    def _publish(self, pub: Publication) -> None:
        client = self._client
        if client is None:
            raise EdgeError(f"agent {self.core.agent} is not started")
        info = client.publish(pub.topic, pub.payload, qos=pub.qos, retain=pub.retain)
        if info.rc not in _ACCEPTED:
            with self._lock:
                self._publish_failures += 1
                first = not self._dropping
                self._dropping = True
            if first:
                log.error(
                    "agent %s/%s: the client refused a message (%s); messages are being dropped "
                    "until the broker catches up (counted in publish_failures)",
                    self.core.site, self.core.agent, mqtt.error_string(info.rc),
                )
            return
        with self._lock:
            self._published += 1
            self._readings_published += pub.readings
            recovered = self._dropping
            self._dropping = False
            early = info.mid in self._early_acks
            if early:
                self._early_acks.discard(info.mid)
                self._count_ack(pub)
            else:
                self._pending[info.mid] = pub
        if recovered:
            log.info("agent %s/%s: the client accepts messages again", self.core.site, self.core.agent)
        if early:
            self._notify(pub)

    def _count_ack(self, pub: Publication) -> None:
        self._acked += 1
        self._readings_acked += pub.readings

    def unacked(self) -> int:
        with self._lock:
            return len(self._pending)

    # -- paho callbacks (network thread) ------------------------------------------------

    def _arm_will(self, client: mqtt.Client, connect_ms: int) -> None:
        # The birth of this connection carries the same ts_ms as its will: stores keep the
        # status with the greatest ts_ms, ties going to the later arrival, so a will that
        # fires replaces its own birth, while a stale will of an older connection (a session
        # takeover) never replaces a newer birth.
        self._connect_ms = connect_ms
        will = self.core.will(connect_ms)
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        self._arm_will(client, wall_ms())

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error("agent %s/%s: the broker refused the connection: %s", self.core.site, self.core.agent,
                      reason)
            return
        set_nodelay(client)
        self._was_connected = True
        log.info(
            "agent %s/%s connected to %s:%d (boot %d)",
            self.core.site, self.core.agent, self.mqtt_settings.host, self.mqtt_settings.port, self.core.boot,
        )
        if not self._stopping:
            self._publish(self.core.birth(self._connect_ms))
        self.online.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_online = self.online.is_set()
        self.online.clear()
        if was_online and not self._stopping:
            log.warning(
                "agent %s/%s lost the broker (%s); reconnecting, messages are kept in memory",
                self.core.site, self.core.agent, reason,
            )

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            pub = self._pending.pop(mid, None)
            if pub is None:
                self._early_acks.add(mid)
                return
            self._count_ack(pub)
        self._notify(pub)

    def _notify(self, pub: Publication) -> None:
        if self.on_acked is None:
            return
        try:
            self.on_acked(pub)
        except Exception:
            # An exception escaping into paho would end its network thread, and the agent.
            log.exception("agent %s/%s: on_acked callback failed", self.core.site, self.core.agent)

    # -- counters -----------------------------------------------------------------------

    def stats(self) -> AgentStats:
        with self._lock:
            return AgentStats(
                site=self.core.site,
                agent=self.core.agent,
                boot=self.core.boot,
                connected=self.online.is_set(),
                polls=self._polls,
                poll_failures=self._poll_failures,
                devices_failing=len(self.core.failing()),
                messages_published=self._published,
                messages_acked=self._acked,
                readings_published=self._readings_published,
                readings_acked=self._readings_acked,
                publish_failures=self._publish_failures,
                unacked=len(self._pending),
                skipped_polls=self.core.skipped_polls,
            )


class Scheduler:
    """Drives any number of agent runtimes from one thread until a stop event is set."""

    def __init__(
        self,
        runtimes: Sequence[AgentRuntime],
        *,
        stop_timeout_s: float = 5.0,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.runtimes = tuple(runtimes)
        self.stop_timeout_s = stop_timeout_s
        self.clock = clock

    def run(self, stop_event: threading.Event) -> None:
        """Start every runtime, poll until ``stop_event`` is set, then stop them all."""
        started: list[AgentRuntime] = []
        try:
            now = self.clock()
            for rt in self.runtimes:
                rt.start(now)
                started.append(rt)
            while not stop_event.is_set():
                now = self.clock()
                for rt in self.runtimes:
                    rt.poll(now)
                dues = [d for d in (rt.next_due_ms() for rt in self.runtimes) if d is not None]
                wait_ms = (min(dues) - self.clock()) if dues else 1000
                # Capped so a wall clock that jumps is noticed within a second.
                stop_event.wait(min(max(wait_ms, 0), 1000) / 1000.0)
        finally:
            self._stop(started)

    def _stop(self, runtimes: Sequence[AgentRuntime]) -> None:
        stop_all(runtimes, self.clock(), self.stop_timeout_s)


def build_drivers(
    config: AgentConfig, drivers: Mapping[str, DriverSpec[Any]] = DRIVERS
) -> dict[str, Driver]:
    """Create the driver of every device of a validated config."""
    out: dict[str, Driver] = {}
    for dev in config.devices:
        info = DeviceInfo(site=config.site, agent=config.agent, device=dev.id, kind=dev.kind)
        try:
            out[dev.id] = drivers[dev.driver].build(info, dev.options)
        except Exception as e:  # translated: the message names the device
            raise EdgeError(
                f"{config.source}: device {dev.id}: cannot create its {dev.driver} driver: {e}"
            ) from e
    return out


def build_runtime(
    config: AgentConfig,
    settings: EdgeSettings,
    *,
    boot: int,
    drivers: Mapping[str, DriverSpec[Any]] = DRIVERS,
    on_acked: OnAcked | None = None,
) -> AgentRuntime:
    """An agent runtime for a validated YAML config."""
    try:
        core = Agent(
            site=config.site,
            agent=config.agent,
            devices=[PollPlan(d.id, max(1, round(d.poll_interval_s * 1000))) for d in config.devices],
            boot=boot,
            max_readings_per_message=settings.max_readings_per_message,
        )
    except (WireError, ValueError) as e:
        raise EdgeError(f"{config.source}: {e}") from None
    return AgentRuntime(
        core,
        build_drivers(config, drivers),
        settings.mqtt,
        on_acked=on_acked,
        max_queued_messages=settings.max_queued_messages,
        max_inflight=settings.max_inflight,
    )


def run(settings: EdgeSettings, stop_event: threading.Event) -> None:
    """Entry point of ``vigil edge``: run the agent of ``settings.config`` until ``stop_event``.

    Raises ``EdgeError`` (``EdgeConfigError`` for a bad YAML) before connecting if the
    config is unusable.
    """
    config = load_config(settings.config)
    boot = next_boot(wall_ms(), settings.boot_file)
    runtime = build_runtime(config, settings, boot=boot)
    log.info(
        "edge agent %s/%s: %d device(s) from %s, broker %s:%d",
        config.site, config.agent, len(config.devices), settings.config,
        settings.mqtt.host, settings.mqtt.port,
    )
    Scheduler([runtime], stop_timeout_s=settings.stop_timeout_s).run(stop_event)


def stop_all(runtimes: Sequence[AgentRuntime], now_ms: int, timeout_s: float) -> None:
    """Stop runtimes together: goodbyes first, then one shared deadline, so N agents stop
    in one timeout, not N."""
    for rt in runtimes:
        try:
            rt.say_goodbye(now_ms)
        except Exception as e:  # every agent must still get to disconnect
            log.error("agent %s/%s: graceful offline status failed: %s", rt.core.site, rt.core.agent, e)
    deadline = time.monotonic() + timeout_s
    for rt in runtimes:
        rt.close(deadline)
