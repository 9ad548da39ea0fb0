"""The edge agent's adapter: clocks, drivers, threads, the outbox and the MQTT connection.

One ``AgentRuntime`` per agent pairs the sans-IO core (``edge.agent.Agent``) with its
drivers, its outbox (``edge.outbox.Outbox``, optional) and its own paho client (paho runs
one network thread per client). One ``Scheduler`` thread drives any number of runtimes:
it asks each core which devices are due, reads their drivers, queues and publishes what
the core returns. So a process can run a whole simulated fleet (ten agents, hundreds of
devices) on one scheduler thread plus one network thread per agent.

Invariants:
- the last will is the retained offline status at QoS 1, re-armed before every connect
  with that connect's time; after every connect the retained online status (birth, with
  version and device kinds) is published at QoS 1 before anything else from the
  on_connect callback, then the agent subscribes to its ``ack`` topic and ``cmd/+``;
- with an outbox, telemetry is written to it before it is published, and leaves it only
  when ingest acknowledges it (``wire.agent.Ack``) or the bound drops it (counted): a
  broker restart, an agent crash or an ingest outage costs a replay, never a reading.
  While disconnected nothing is handed to paho; after reconnecting the backlog is replayed
  in order, marked historical, at most ``replay_window`` unacknowledged at a time, while
  new readings are sent live first;
- without an outbox (the simulator's load generator), telemetry is published at QoS 1
  and paho keeps up to ``max_queued_messages`` in memory; beyond that a message is
  dropped, counted in ``publish_failures`` and logged (once per episode);
- everything the outbox, the core and the drivers see happens on the scheduler thread:
  paho's callbacks only put acks, commands, PUBACKs of events and connection changes in
  an inbox the scheduler drains (and wake it), so the outbox needs no lock;
- a driver that raises fails that device's poll only: it is counted, logged once when the
  device starts failing and once when it recovers, reported offline in the agent's health
  with the reason, and the other devices keep their schedule. Drivers of real protocols
  are wrapped in ``IsolatedDriver`` (``build_drivers``), so one that hangs costs the
  scheduler at most ``driver_timeout_s`` once, then fails fast until it returns;
- a driver may also report events: if it has ``take_events()`` (see ``EventSource``),
  the runtime calls it after each successful ``read`` and publishes what it returns after
  that poll's telemetry (kept in the outbox until the broker acknowledges them);
- commands: ``cmd/rebirth`` republishes birth and health; ``cmd/reload`` re-reads the
  config file and rebuilds the drivers, and a config that does not load leaves the old
  one running, logs why and says it in the health (``config_error``). Retained command
  messages are ignored (a retained reload would fire on every reconnect);
- ``on_acked`` is called once per message the broker acknowledged (paho's on_publish),
  from paho's network thread, with the exact ``Publication`` sent (live telemetry and
  status); it must be quick and must not publish;
- ``Scheduler.run`` returns only after every started runtime published its graceful
  offline status, waited (up to ``stop_timeout_s``) for outstanding acknowledgements, and
  disconnected; messages still unacknowledged then are counted and logged, and stay in
  the outbox for the next start.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from edge.agent import Agent, DeviceEvent, PollPlan, Publication
from edge.boot import next_boot
from edge.config import AgentConfig, load_config
from edge.drivers import DRIVERS, DeviceInfo, Driver, DriverSpec
from edge.drivers.isolated import IsolatedDriver
from edge.errors import DriverError, EdgeError
from edge.health import HealthBook
from edge.outbox import Outbox, Outgoing
from edge.settings import EdgeSettings
from wire import MqttSettings, Telemetry, WireError, encode
from wire.agent import Ack, AgentHealth, decode_ack
from wire.mqtt import make_client, set_nodelay
from wire.topics import AckTopic, CommandTopic, HealthTopic, command_filter, parse_topic

log = logging.getLogger(__name__)

OnAcked = Callable[[Publication], None]
# What a ``reload`` command builds: the new poll plans and their drivers (not started).
Reloader = Callable[[], tuple[list[PollPlan], dict[str, Driver]]]
_ACCEPTED = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)  # NO_CONN: queued, sent on connect
COMMANDS = ("rebirth", "reload")


def agent_version() -> str:
    """The installed Vigil version, announced in the birth and the health."""
    try:
        return metadata.version("vigil")[:64]
    except metadata.PackageNotFoundError:
        return "unknown"


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
    messages_acked: int  # by the broker (PUBACK)
    readings_published: int
    readings_acked: int
    publish_failures: int  # refused by the client (queue full): lost without an outbox
    unacked: int  # published but not acknowledged by the broker yet
    skipped_polls: int
    outbox_depth: int = 0  # held until ingest acknowledges them
    outbox_dropped: int = 0
    acks_received: int = 0


@dataclass(slots=True)
class _Sent:
    """A message handed to paho, until its PUBACK."""

    pub: Publication | None  # None for a replayed telemetry message
    readings: int
    sent_s: float  # monotonic
    event_id: int | None = None


class AgentRuntime:
    """One agent on the bus: its core, its drivers, its outbox and its own paho client."""

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
        outbox: Outbox | None = None,
        health_interval_s: float = 10.0,
        reloader: Reloader | None = None,
    ) -> None:
        missing = set(core.devices) ^ set(drivers)
        if missing:
            raise EdgeError(f"agent {core.agent}: devices and drivers differ on {sorted(missing)}")
        if outbox is not None and outbox.next_seq != core.seq:
            raise EdgeError(f"agent {core.agent}: the core numbers from {core.seq}, its outbox from "
                            f"{outbox.next_seq}; build the core with first_seq=outbox.next_seq")
        self.core = core
        self.drivers = dict(drivers)
        self.mqtt_settings = mqtt_settings
        self.on_acked = on_acked
        self.max_queued_messages = max_queued_messages
        self.max_inflight = max_inflight
        self.client_id = client_id or f"vigil-edge-{core.site}-{core.agent}"
        self.outbox = outbox
        self.health_interval_ms = int(health_interval_s * 1000)
        self.reloader = reloader
        self.online = threading.Event()
        # Set by paho's callbacks when the inbox has work; a Scheduler shares one among its runtimes.
        self.wake: threading.Event | None = None
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._link_up = False  # the scheduler thread's view of the connection
        self._client: mqtt.Client | None = None
        self._started_drivers: set[str] = set()
        self._stopping = False
        self._was_connected = False
        self._connect_ms = 0
        self._dropping = False
        self._health = HealthBook(core.devices, 0)
        self._next_health_ms = 0
        self._config_error = ""
        self._health_topic = HealthTopic(core.site, core.agent).format()
        self._ack_topic = AckTopic(core.site, core.agent).format()
        self._cmd_filter = command_filter(core.site, core.agent)
        self._bad_acks = 0
        # Acknowledgement bookkeeping, shared with paho's network thread. paho calls
        # on_publish holding its own message lock, and publish() takes that lock, so this
        # lock is never held while calling into paho (that order would deadlock); a PUBACK
        # that beats the bookkeeping of its own publish() lands in _early_acks.
        self._lock = threading.Lock()
        self._pending: dict[int, _Sent] = {}
        self._early_acks: set[int] = set()
        self._puback_latencies: list[float] = []
        self._polls = 0
        self._poll_failures = 0
        self._published = 0
        self._acked = 0
        self._readings_published = 0
        self._readings_acked = 0
        self._publish_failures = 0
        self._acks_received = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, now_ms: int) -> None:
        """Start drivers, arm the last will and connect in the background."""
        self.core.start(now_ms)
        self._health = HealthBook(self.core.devices, now_ms)
        self._next_health_ms = now_ms + self.health_interval_ms
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
        client.on_message = self._on_message
        self._arm_will(client, now_ms)
        self._client = client
        if self.outbox is not None and self.outbox.recovered:
            log.info("agent %s/%s: %d message(s) in the outbox from before the restart will be replayed",
                     self.core.site, self.core.agent, self.outbox.recovered)
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
                kept = " (kept in the outbox for the next start)" if self.outbox is not None else ""
                log.warning(
                    "agent %s/%s stopped with %d message(s) not acknowledged by the broker%s",
                    self.core.site, self.core.agent, lost, kept,
                )
            client.disconnect()
            client.loop_stop()
            self._client = None
        self._stop_drivers()

    def _stop_drivers(self) -> None:
        for device in sorted(self._started_drivers):
            try:
                self.drivers[device].stop()
            except Exception as e:  # one driver's failure must not stop the others'
                log.warning("device %s: driver failed to stop: %s", device, e)
        self._started_drivers.clear()

    # -- polling ------------------------------------------------------------------------

    def poll(self, now_ms: int) -> None:
        """Handle what arrived, read every due device, queue and publish its readings,
        replay backlog, publish health when due."""
        self._drain_inbox(now_ms)
        core = self.core
        outbox = self.outbox
        batch: list[Publication] = []
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
                self._health.poll_failed(device, now_ms, f"{type(e).__name__}: {e}")
                if core.poll_failed(device):
                    log.warning(
                        "device %s/%s/%s: poll failed: %s: %s (logged again when it recovers)",
                        core.site, core.agent, device, type(e).__name__, e,
                    )
                continue
            self._health.poll_ok(device, now_ms)
            failed = core.poll_succeeded(device)
            if failed:
                log.info(
                    "device %s/%s/%s: recovered after %d failed poll(s)",
                    core.site, core.agent, device, failed,
                )
            if outbox is None:
                for pub in publications:
                    self._publish(pub)
            else:
                batch.extend(publications)
            for event in events:
                try:
                    pub = core.event(device, event)
                except DriverError as e:  # this event only: the poll's telemetry is already out
                    log.error("device %s/%s/%s: %s", core.site, core.agent, device, e)
                    continue
                if outbox is None:
                    self._publish(pub)
                else:
                    outbox.add_event(pub.topic, pub.payload, now_ms)
        if outbox is not None:
            self._send_outbox(batch, now_ms)
        if self.health_interval_ms > 0 and now_ms >= self._next_health_ms:
            self.publish_health(now_ms)

    def _send_outbox(self, batch: list[Publication], now_ms: int) -> None:
        outbox = self.outbox
        assert outbox is not None
        rows: list[tuple[int, str, bytes]] = []
        by_seq: dict[int, Publication] = {}
        for p in batch:
            assert isinstance(p.message, Telemetry)
            rows.append((p.message.seq, p.topic, p.payload))
            by_seq[p.message.seq] = p
        live = outbox.add(rows, now_ms, online=self._link_up)
        for out in live:
            self._publish(by_seq[out.seq], seq=out.seq)
        if self._link_up:
            for event_id, topic, payload in outbox.events_to_send():
                self._publish_raw(topic, payload, _Sent(None, 0, time.monotonic(), event_id))
            # Only as much as keeps paho's queue short: a live reading published next waits
            # behind what is queued there, so a deep queue would make live readings late.
            room = 2 * self.max_inflight - self.unacked()
            if room > 0:
                for out in outbox.take_replay(now_ms, room):
                    self._publish_replay(out)
        outbox.expire(now_ms)

    def busy(self) -> bool:
        """True if the scheduler should come back soon: inbox work or a backlog to replay."""
        if not self._inbox.empty():
            return True
        return self.outbox is not None and self._link_up and self.outbox.can_replay()

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

    # -- inbox (work paho's thread hands to the scheduler thread) ---------------------------

    def _drain_inbox(self, now_ms: int) -> None:
        inbox = self._inbox
        while True:
            try:
                kind, item = inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "ack":
                self._acks_received += 1
                if self.outbox is not None:
                    self.outbox.acked(item.ranges, now_ms)
                    self._health.record_latencies(self.outbox.take_latencies())
            elif kind == "event-puback":
                if self.outbox is not None:
                    self.outbox.event_delivered(item)
            elif kind == "up":
                self._link_up = True
                self.publish_health(now_ms)
            elif kind == "down":
                self._link_up = False
                if self.outbox is not None:
                    n = self.outbox.disconnected()
                    if n:
                        log.info("agent %s/%s: %d message(s) in flight go back to the backlog",
                                 self.core.site, self.core.agent, n)
            elif kind == "cmd":
                self._command(item, now_ms)

    def _command(self, name: str, now_ms: int) -> None:
        core = self.core
        log.info("agent %s/%s: command %s", core.site, core.agent, name)
        if name == "rebirth":
            if self._link_up or self.online.is_set():
                self._publish(core.birth(self._connect_ms))
            self.publish_health(now_ms)
        elif name == "reload":
            self.reload(now_ms)
        else:
            log.warning("agent %s/%s: unknown command %r ignored (known: %s)", core.site, core.agent, name,
                        ", ".join(COMMANDS))

    def reload(self, now_ms: int) -> bool:
        """Re-read the config and swap devices and drivers; keep the old ones on any error."""
        core = self.core
        if self.reloader is None:
            self._config_error = "reload is not supported by this agent (no config file)"
            log.error("agent %s/%s: %s", core.site, core.agent, self._config_error)
            self.publish_health(now_ms)
            return False
        try:
            plans, drivers = self.reloader()
            core.replace_devices(plans, now_ms)  # validates before changing anything
        except Exception as e:
            self._config_error = str(e)[:1024]
            log.error("agent %s/%s: reload refused, the previous config keeps running: %s",
                      core.site, core.agent, e)
            self.publish_health(now_ms)
            return False
        self._stop_drivers()
        self.drivers = dict(drivers)
        for device in core.devices:
            self._start_driver(device)
        self._health.reset_devices(core.devices, now_ms)
        self._config_error = ""
        log.info("agent %s/%s: config reloaded, %d device(s)", core.site, core.agent, len(core.devices))
        if self.online.is_set():
            self._publish(core.birth(self._connect_ms))  # the device list changed
        self.publish_health(now_ms)
        return True

    def health(self, now_ms: int) -> AgentHealth:
        """The health message now; starts a new latency interval."""
        with self._lock:
            lat, self._puback_latencies = self._puback_latencies, []
        if self.outbox is None:
            self._health.record_latencies(lat)
        return self._health.report(
            now_ms=now_ms, boot=self.core.boot, version=self.core.version, config_error=self._config_error,
            outbox=self.outbox.stats() if self.outbox is not None else None,
        )

    def publish_health(self, now_ms: int) -> None:
        self._next_health_ms = now_ms + self.health_interval_ms
        if self._client is None or not self.online.is_set():
            return  # published again on connect; a stale retained health is worse than none
        report = self.health(now_ms)
        self._publish(Publication(self._health_topic, encode(report), report, qos=1, retain=True))

    # -- publishing ---------------------------------------------------------------------

    def _publish(self, pub: Publication, *, seq: int | None = None) -> None:
        self._publish_raw(pub.topic, pub.payload, _Sent(pub, pub.readings, time.monotonic()),
                          retain=pub.retain, seq=seq)

    def _publish_replay(self, out: Outgoing) -> None:
        # Counted as one reading per message: decoding it to count would cost more than the send.
        self._publish_raw(out.topic, out.payload, _Sent(None, 0, time.monotonic()), seq=out.seq)

    def _publish_raw(self, topic: str, payload: bytes, sent: _Sent | None, *, retain: bool = False,
                     seq: int | None = None) -> None:
        client = self._client
        if client is None:
            raise EdgeError(f"agent {self.core.agent} is not started")
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in _ACCEPTED:
            if seq is not None and self.outbox is not None:
                self.outbox.send_failed(seq)  # stays in the outbox, replayed later: not lost
            if sent is not None and sent.event_id is not None and self.outbox is not None:
                self.outbox.event_send_failed(sent.event_id)  # likewise, sent again next round
            with self._lock:
                self._publish_failures += 1
                first = not self._dropping
                self._dropping = True
            if first:
                log.error(
                    "agent %s/%s: the client refused a message (%s); %s until the broker catches up "
                    "(counted in publish_failures)",
                    self.core.site, self.core.agent, mqtt.error_string(info.rc),
                    "telemetry waits in the outbox" if self.outbox is not None
                    else "messages are being dropped",
                )
            return
        if sent is None:
            sent = _Sent(None, 0, time.monotonic())
        with self._lock:
            self._published += 1
            self._readings_published += sent.readings
            recovered = self._dropping
            self._dropping = False
            early = info.mid in self._early_acks
            if early:
                self._early_acks.discard(info.mid)
                self._count_ack(sent)
            else:
                self._pending[info.mid] = sent
        if recovered:
            log.info("agent %s/%s: the client accepts messages again", self.core.site, self.core.agent)
        if early:
            self._delivered(sent)

    def _count_ack(self, sent: _Sent) -> None:
        self._acked += 1
        self._readings_acked += sent.readings
        if sent.pub is not None and sent.readings:
            self._puback_latencies.append(time.monotonic() - sent.sent_s)
            if len(self._puback_latencies) > 100_000:
                del self._puback_latencies[:50_000]

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

    def _put(self, kind: str, item: Any) -> None:
        self._inbox.put((kind, item))
        if self.wake is not None:
            self.wake.set()

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
            topics = [(self._cmd_filter, 1)]
            if self.outbox is not None:
                topics.append((self._ack_topic, 1))
            client.subscribe(topics)
        self.online.set()
        self._put("up", None)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_online = self.online.is_set()
        self.online.clear()
        self._put("down", None)
        if was_online and not self._stopping:
            log.warning(
                "agent %s/%s lost the broker (%s); reconnecting, %s",
                self.core.site, self.core.agent, reason,
                "readings wait in the outbox" if self.outbox is not None else "messages are kept in memory",
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if message.topic == self._ack_topic:
                ack: Ack = decode_ack(bytes(message.payload))
                self._put("ack", ack)
                return
            topic = parse_topic(message.topic)
            if isinstance(topic, CommandTopic):
                if message.retain:
                    log.warning("agent %s/%s: ignoring retained command %s (commands are not retained)",
                                self.core.site, self.core.agent, topic.name)
                    return
                self._put("cmd", topic.name)
        except WireError as e:
            self._bad_acks += 1
            if self._bad_acks == 1 or self._bad_acks % 1000 == 0:
                log.warning("agent %s/%s: ignoring a bad message on %s (%d so far): %s",
                            self.core.site, self.core.agent, message.topic, self._bad_acks, e)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            sent = self._pending.pop(mid, None)
            if sent is None:
                self._early_acks.add(mid)
                return
            self._count_ack(sent)
        self._delivered(sent)

    def _delivered(self, sent: _Sent) -> None:
        if sent.event_id is not None:
            self._put("event-puback", sent.event_id)
        if self.on_acked is None or sent.pub is None:
            return
        try:
            self.on_acked(sent.pub)
        except Exception:
            # An exception escaping into paho would end its network thread, and the agent.
            log.exception("agent %s/%s: on_acked callback failed", self.core.site, self.core.agent)

    # -- counters -----------------------------------------------------------------------

    def stats(self) -> AgentStats:
        outbox = self.outbox
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
                outbox_depth=outbox.stats().depth if outbox is not None else 0,
                outbox_dropped=outbox.dropped if outbox is not None else 0,
                acks_received=self._acks_received,
            )


class Scheduler:
    """Drives any number of agent runtimes from one thread until a stop event is set."""

    def __init__(
        self,
        runtimes: Sequence[AgentRuntime],
        *,
        stop_timeout_s: float = 5.0,
        clock: Callable[[], int] = wall_ms,
        tick_s: float = 0.01,
    ) -> None:
        self.runtimes = tuple(runtimes)
        self.stop_timeout_s = stop_timeout_s
        self.clock = clock
        self.tick_s = tick_s
        self._wake = threading.Event()
        for rt in self.runtimes:
            rt.wake = self._wake

    def run(self, stop_event: threading.Event) -> None:
        """Start every runtime, poll until ``stop_event`` is set, then stop them all."""
        started: list[AgentRuntime] = []
        try:
            now = self.clock()
            for rt in self.runtimes:
                rt.start(now)
                started.append(rt)
            while not stop_event.is_set():
                self._wake.clear()
                now = self.clock()
                for rt in self.runtimes:
                    rt.poll(now)
                dues = [d for d in (rt.next_due_ms() for rt in self.runtimes) if d is not None]
                wait_s = (min(dues) - self.clock()) / 1000.0 if dues else 1.0
                if any(rt.busy() for rt in self.runtimes):
                    wait_s = min(wait_s, self.tick_s)
                # Capped so a stop or a wall clock that jumps is noticed within 0.2 s; acks and
                # commands set _wake, and are handled at once.
                self._wake.wait(min(max(wait_s, 0.0), 0.2))
        finally:
            self._stop(started)

    def _stop(self, runtimes: Sequence[AgentRuntime]) -> None:
        stop_all(runtimes, self.clock(), self.stop_timeout_s)


def build_drivers(
    config: AgentConfig,
    drivers: Mapping[str, DriverSpec[Any]] = DRIVERS,
    *,
    timeout_s: float = 5.0,
) -> dict[str, Driver]:
    """Create the driver of every device of a validated config.

    Every driver but ``simulated`` (which computes its readings and cannot block) runs in
    an ``IsolatedDriver``: its own thread, each call bounded by ``timeout_s``, so one
    device that hangs does not stall the agent's other devices."""
    out: dict[str, Driver] = {}
    for dev in config.devices:
        info = DeviceInfo(site=config.site, agent=config.agent, device=dev.id, kind=dev.kind)
        try:
            driver = drivers[dev.driver].build(info, dev.options)
        except Exception as e:  # translated: the message names the device
            raise EdgeError(
                f"{config.source}: device {dev.id}: cannot create its {dev.driver} driver: {e}"
            ) from e
        isolated = dev.driver != "simulated"
        out[dev.id] = IsolatedDriver(driver, info, timeout_s=timeout_s) if isolated else driver
    return out


def poll_plans(config: AgentConfig) -> list[PollPlan]:
    return [PollPlan(d.id, max(1, round(d.poll_interval_s * 1000)), kind=d.kind) for d in config.devices]


def build_runtime(
    config: AgentConfig,
    settings: EdgeSettings,
    *,
    boot: int,
    drivers: Mapping[str, DriverSpec[Any]] = DRIVERS,
    on_acked: OnAcked | None = None,
    outbox: Outbox | None = None,
) -> AgentRuntime:
    """An agent runtime for a validated YAML config; ``reload`` re-reads ``config.source``."""
    try:
        core = Agent(
            site=config.site,
            agent=config.agent,
            devices=poll_plans(config),
            boot=boot,
            max_readings_per_message=settings.max_readings_per_message,
            first_seq=outbox.next_seq if outbox is not None else 0,
            version=agent_version(),
        )
    except (WireError, ValueError) as e:
        raise EdgeError(f"{config.source}: {e}") from None

    def reloader() -> tuple[list[PollPlan], dict[str, Driver]]:
        new = load_config(settings.config, drivers)
        if (new.site, new.agent) != (config.site, config.agent):
            raise EdgeError(
                f"{new.source}: site/agent changed from {config.site}/{config.agent} "
                f"to {new.site}/{new.agent}; "
                "an agent's identity (and its outbox) cannot change on reload: restart it instead"
            )
        return poll_plans(new), build_drivers(new, drivers, timeout_s=settings.driver_timeout_s)

    return AgentRuntime(
        core,
        build_drivers(config, drivers, timeout_s=settings.driver_timeout_s),
        settings.mqtt,
        on_acked=on_acked,
        max_queued_messages=settings.max_queued_messages,
        max_inflight=settings.max_inflight,
        client_id=settings.client_id,
        outbox=outbox,
        health_interval_s=settings.health_interval_s,
        reloader=reloader,
    )


def open_outbox(settings: EdgeSettings, config: AgentConfig, now_ms: int) -> Outbox:
    o = settings.outbox
    return Outbox(o.file(settings.config), identity=f"{config.site}/{config.agent}", now_ms=now_ms,
                  limits=o.limits(), synchronous=o.synchronous)


def run(settings: EdgeSettings, stop_event: threading.Event) -> None:
    """Entry point of ``vigil edge``: run the agent of ``settings.config`` until ``stop_event``.

    Raises ``EdgeError`` (``EdgeConfigError`` for a bad YAML) before connecting if the
    config is unusable.
    """
    config = load_config(settings.config)
    now = wall_ms()
    outbox = open_outbox(settings, config, now)
    try:
        # The outbox keeps the boot epoch; a boot file, if configured, is honoured too.
        boot = outbox.boot if settings.boot_file is None else next_boot(outbox.boot, settings.boot_file)
        runtime = build_runtime(config, settings, boot=boot, outbox=outbox)
        log.info(
            "edge agent %s/%s: %d device(s) from %s, broker %s:%d, outbox %s (boot %d, next seq %d, %d held)",
            config.site, config.agent, len(config.devices), settings.config,
            settings.mqtt.host, settings.mqtt.port, outbox.path or "in memory", boot,
            outbox.next_seq, outbox.recovered,
        )
        Scheduler([runtime], stop_timeout_s=settings.stop_timeout_s).run(stop_event)
    finally:
        outbox.close()


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
