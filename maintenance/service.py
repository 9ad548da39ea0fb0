"""The maintenance role: anomaly events from the bus into work orders, and the periodic
sweep (SLA timers, the closed loop, preventive maintenance, inspection rounds).

Threads: paho's network loop queues each message; one worker thread applies queued
messages in one transaction per batch, commits, then acks them in order; between batches
it runs the sweep and publishes the outbox (SLA breach events, and the WorkOrderUpdate
of every state change). Besides anomaly events it
takes the telemetry of the devices that meter schedules follow (e.g. a pump's ``running``
flag, counted as running hours), subscribed to after each sweep.

Invariants:
- an anomaly event is acked only after its work order change is committed (QoS 1, manual
  acks, persistent session under ``client_id``): a crash loses nothing, and the replay
  that follows is a no-op (``maint_anomaly_events`` dedupes);
- a message that breaks the contract is stored in ``maint_rejected_events`` with the
  decoder's reason and acked; the messages around it are applied as usual (so is one that
  hits a bug: kept with ``internal error: ...``);
- a database outage is retried without limit while the broker holds the backlog;
- an outbox event is marked sent only after the broker acknowledged it (at least once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from maintenance import pm
from maintenance.db import open_engine
from maintenance.models import Outbox, RejectedEvent
from maintenance.settings import MaintenanceSettings
from maintenance.workorders import BatchCache, Policy, SweepResult, apply_anomaly, sweep_sla, sweep_verify
from wire import AlarmTopic, TelemetryTopic, WireError, decode_telemetry, parse_topic
from wire.anomaly import Anomaly, decode_anomaly
from wire.mqtt import connect_in_background, make_client, set_nodelay, wait_connected
from wire.topics import PREFIX, alarm_filter

log = logging.getLogger("vigil.maintenance")


@dataclass(frozen=True, slots=True)
class Message:
    mid: int
    qos: int
    topic: str
    payload: bytes


@dataclass
class Stats:
    messages: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    retries: int = 0
    outbox_published: int = 0  # SLA breaches and work order updates


def policy_of(settings: MaintenanceSettings) -> Policy:
    return Policy(verify_hold_ms=int(settings.verify_hold_s * 1000),
                  reopen_window_ms=int(settings.reopen_days * 86_400_000))


def apply_messages(session: Session, messages: list[Message], *, now_ms: int, policy: Policy,
                   stats: Stats | None = None) -> None:
    """Apply a batch of bus messages in ``session`` (the caller commits)."""
    events: list[tuple[str, str, Anomaly]] = []
    meters: dict[tuple[str, str], list[tuple[int, str, Any]]] = {}
    for m in messages:
        try:
            topic = parse_topic(m.topic)
            if isinstance(topic, AlarmTopic):
                events.append((topic.site, topic.device, decode_anomaly(m.payload)))
            elif isinstance(topic, TelemetryTopic):  # a device whose meter a PM schedule follows
                meters.setdefault((topic.site, topic.device), []).extend(
                    (r.ts_ms, r.metric, r.value) for r in decode_telemetry(m.payload).readings)
            else:
                raise WireError(f"maintenance does not take {type(topic).__name__} messages")
        except WireError as e:
            session.add(RejectedEvent(received_ms=now_ms, topic=m.topic[:300], payload=m.payload,
                                      reason=str(e)))
            log.warning("maintenance: rejected a message on %s: %s", m.topic[:200], e)
            if stats:
                stats.rejected += 1
    for (site, device), readings in meters.items():
        pm.apply_meter_readings(session, site, device, readings)
    # Events of one batch are applied in arrival order; the lookups are fetched once.
    with session.no_autoflush:
        cache = BatchCache.prefetch(session, events)
        for site, device, anomaly in events:
            wo = apply_anomaly(session, site, device, anomaly, now_ms=now_ms, policy=policy, cache=cache)
            if stats:
                if wo is None:
                    stats.duplicates += 1
                else:
                    stats.applied += 1


def sweep(session: Session, now_ms: int, policy: Policy) -> SweepResult:
    """SLA timers, the closed loop, preventive maintenance and rounds (the caller commits)."""
    result = SweepResult()
    sweep_sla(session, now_ms, result)
    sweep_verify(session, now_ms, policy, result)
    pm.sweep_pm(session, now_ms, policy, result)
    pm.sweep_rounds(session, now_ms, policy, result)
    return result


class MaintenanceService:
    def __init__(self, settings: MaintenanceSettings, engine: Engine | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.engine = engine if engine is not None else open_engine(settings.database_url)
        self._owns_engine = engine is None
        self.policy = policy_of(settings)
        self.stats = Stats()
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: list[Message] = []
        self._stopping = False
        self._connected = threading.Event()
        self._worker: threading.Thread | None = None
        self._next_sweep = 0.0
        self._next_outbox = 0.0
        self._meter_filters: set[str] = set()
        self._client = make_client(settings.mqtt, settings.client_id, clean_session=False, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self, connect_timeout_s: float = 10.0) -> None:
        self._worker = threading.Thread(target=self._work, name="maintenance", daemon=True)
        self._worker.start()
        connect_in_background(self._client, self.settings.mqtt)
        wait_connected(self._connected, self.settings.mqtt, "maintenance", connect_timeout_s)

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def sweep_now(self) -> None:
        """Ask the worker to sweep at once (tests, and after a clock jump)."""
        with self._cond:
            self._next_sweep = 0.0
            self._cond.notify()

    def stop(self) -> None:
        """Stop taking messages, apply and ack what was received, then disconnect."""
        self._client.loop_stop()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join()
        self._client.loop_write()
        self._client.disconnect()
        self._client.loop_write()
        if self._owns_engine:
            self.engine.dispose()

    # -- paho callbacks (network thread) --------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("maintenance: broker refused the connection: %s", reason)
            return
        set_nodelay(client)
        sites = self.settings.sites or (None,)
        with self._cond:  # the meter devices' telemetry too (see _follow_meters)
            meters = sorted(self._meter_filters)
            self._next_sweep = 0.0  # sweep (and follow meters) as soon as connected
            self._cond.notify()
        client.subscribe([(alarm_filter(site), 1) for site in sites] + [(f, 1) for f in meters])
        log.info("maintenance: connected to %s:%s as %s", self.settings.mqtt.host, self.settings.mqtt.port,
                 self.settings.client_id)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: Any, _codes: Any, _p: Any) -> None:
        # Connected means subscribed: an event published after this reaches us.
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stopping:
            log.warning("maintenance: disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        topic = bytes(msg._topic).decode("utf-8", "backslashreplace")  # msg.topic raises on bad UTF-8
        with self._cond:
            self._pending.append(Message(msg.mid, msg.qos, topic, bytes(msg.payload)))
            if len(self._pending) >= self.settings.batch_max_messages:
                self._cond.notify()

    # -- worker thread ----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._stopping:
                    wait = min(self.settings.batch_max_age_s * 4,
                               max(0.0, min(self._next_sweep, self._next_outbox) - self._clock()))
                    self._cond.wait(timeout=max(wait, 0.01))
                if (self._pending and not self._stopping
                        and len(self._pending) < self.settings.batch_max_messages):
                    # Let a burst gather into one transaction.
                    self._cond.wait(timeout=self.settings.batch_max_age_s)
                batch = self._pending[: self.settings.batch_max_messages]
                del self._pending[: len(batch)]
                stopping = self._stopping
            if batch:
                if not self._retry(partial(self._apply, batch), give_up=lambda: self._stopping):
                    return
                for m in batch:
                    if m.qos > 0:
                        self._client.ack(m.mid, m.qos)
            if self._clock() >= self._next_sweep:
                self._next_sweep = self._clock() + self.settings.sweep_interval_s
                self._retry(self._sweep, give_up=lambda: True)
                self._next_outbox = 0.0
            if batch or self._clock() >= self._next_outbox:
                # Rows of this batch and the sweep, those the API wrote (another process)
                # and those the broker did not acknowledge last time.
                self._next_outbox = self._clock() + self.settings.outbox_interval_s
                self._publish_outbox()
            if stopping and not batch:
                with self._cond:
                    if not self._pending:
                        return

    def _apply(self, batch: list[Message]) -> None:
        now_ms = int(self._clock() * 1000)
        try:
            with Session(self.engine) as session, session.begin():
                apply_messages(session, batch, now_ms=now_ms, policy=self.policy, stats=self.stats)
        except IntegrityError:
            # A concurrent writer (the API) took the same key; apply one by one so only the
            # conflicting message is retried against the new state.
            if len(batch) == 1:
                raise
            for m in batch:
                self._apply([m])
            return
        except DBAPIError:
            raise  # an outage: retried by the caller
        except Exception as e:  # a bug must not stop the consumer: isolate the message that hits it
            if len(batch) > 1:
                for m in batch:
                    self._apply([m])
                return
            log.exception("maintenance: internal error on a message from %s", batch[0].topic[:200])
            with Session(self.engine) as session, session.begin():
                session.add(RejectedEvent(received_ms=now_ms, topic=batch[0].topic[:300],
                                          payload=batch[0].payload, reason=f"internal error: {e!r}"))
            self.stats.rejected += 1
        self.stats.messages += len(batch)
        self.stats.batches += 1

    def _sweep(self) -> None:
        with Session(self.engine) as session, session.begin():
            result = sweep(session, int(self._clock() * 1000), self.policy)
            devices = pm.meter_devices(session)
        if self.engine.dialect.name == "sqlite":
            # Keeps the planner's statistics fresh, so list filters use the right index
            # (PostgreSQL's autovacuum does this there).
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA optimize")
        self._follow_meters(devices)
        if result.breaches or result.verified or result.pm_created or result.rounds_missed:
            log.info("maintenance: sweep: %d SLA breaches, %d verified and closed, %d PM orders, "
                     "%d rounds missed", len(result.breaches), len(result.verified), len(result.pm_created),
                     len(result.rounds_missed))

    def _follow_meters(self, devices: set[tuple[str, str]]) -> None:
        """Subscribe to the telemetry of the devices meter schedules follow (and only those)."""
        sites = set(self.settings.sites)
        wanted = {f"{PREFIX}/{site}/+/{device}/telemetry" for site, device in devices
                  if not sites or site in sites}
        with self._cond:
            new, gone = wanted - self._meter_filters, self._meter_filters - wanted
            self._meter_filters = wanted
        if new:
            rc, _mid = self._client.subscribe([(f, 1) for f in sorted(new)])
            if rc != mqtt.MQTT_ERR_SUCCESS:  # not connected: the next sweep tries again
                with self._cond:
                    self._meter_filters -= new
        if gone:
            # If this fails (disconnected), the persistent session keeps delivering that
            # telemetry; with no schedule left for the device, it changes nothing.
            self._client.unsubscribe(sorted(gone))

    def _publish_outbox(self) -> None:
        if not self._connected.is_set():
            return
        try:
            with Session(self.engine) as session, session.begin():
                rows = list(session.scalars(select(Outbox).where(Outbox.sent_ms.is_(None))
                                            .order_by(Outbox.id).limit(100)))
                # All in flight at once (paho keeps them in order), then marked in order up
                # to the first the broker did not acknowledge: that one and those after it
                # stay unsent and go again next round, so one order's updates arrive in seq
                # order (a repeat of an older one can follow; consumers compare ``seq``).
                infos = [self._client.publish(row.topic, row.payload, qos=1) for row in rows]
                for row, info in zip(rows, infos, strict=True):
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        return
                    info.wait_for_publish(10)
                    if not info.is_published():
                        return
                    row.sent_ms = int(self._clock() * 1000)
                    self.stats.outbox_published += 1
        except (DBAPIError, RuntimeError, ValueError) as e:
            log.warning("maintenance: could not publish the outbox (%s); will retry", e)

    def _retry(self, attempt: Callable[[], None], give_up: Callable[[], bool]) -> bool:
        delay = 0.2
        while True:
            try:
                attempt()
                return True
            except (DBAPIError, IntegrityError) as e:
                self.stats.retries += 1
                log.error("maintenance: database write failed (%s); retrying", e)
                if give_up():
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 10.0)


def run(settings: MaintenanceSettings, stop: threading.Event) -> None:
    """``vigil maintenance``: run until ``stop`` is set."""
    service = MaintenanceService(settings)
    service.start()
    try:
        stop.wait()
    finally:
        service.stop()
        log.info("maintenance: stopped (%d messages, %d applied, %d replays, %d rejected)",
                 service.stats.messages, service.stats.applied, service.stats.duplicates,
                 service.stats.rejected)
