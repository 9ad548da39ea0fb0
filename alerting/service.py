"""The alerting service (``vigil alerting``): the bus in, pages out.

In: anomaly events (``_alarm``), agent status (retained; the last will says offline),
device events (fire alarm, door forced, tamper, leak), work-order SLA breaches
(``_maintenance/sla``), work order state changes (``_maintenance/workorder``: an order in
progress silences its devices' alarms, see ``alerting.workorders``), and device topics for
the asset hierarchy (which agent a device sits under).

Threads: paho's network loop queues each message; one worker thread feeds them to the
engine, ticks it, commits what changed, then acks the messages and hands notifications to
the dispatcher, whose sender threads deliver them and record every attempt.

Invariants:
- a message is acked to the broker (QoS 1, manual acks) only after the incident it made
  or changed is committed (architecture.md, invariant 2); a message that breaks the
  contract is logged with the decoder's reason and acked, and the messages around it are
  handled as usual;
- a notification is handed to the dispatcher only after its ack/resolve links are
  committed, so every link in a message works;
- acks and resolves from the API reach the engine through ``alerting_command`` within
  ``sync_interval_s``; they stop pending deliveries at once;
- the broker unreachable for ``broker_down_after_s`` is an incident of its own, which the
  device-offline flood after it is folded into;
- a work order update is committed to ``alerting_work_order`` (with the incidents it
  changed) before it is acked, and the orders in progress are loaded back at start, so a
  restart neither forgets a silence nor revives one (persistent session + database, not
  retained messages: see README).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import Engine as Database
from sqlalchemy.exc import SQLAlchemyError

from alerting import store
from alerting.channels import Channel, build_channels
from alerting.config import OnCallConfig, load_config
from alerting.dispatch import AttemptRecord, Dispatcher
from alerting.engine import Alert, Decision, Engine, Incident, Notify, Stop
from alerting.links import make_link
from alerting.outbox import Message, Outbox
from alerting.settings import AlertingSettings
from alerting.signals import (
    SYSTEM_SITE,
    broker_alert,
    from_anomaly,
    from_event,
    from_sla_breach,
    from_status,
)
from alerting.workorders import WorkOrderBoard
from wire import EventTopic, StatusTopic, TelemetryTopic, WireError, decode_event, decode_status, parse_topic
from wire.anomaly import decode_anomaly
from wire.mqtt import connect_in_background, make_client, set_nodelay, wait_connected
from wire.topics import AlarmTopic, alarm_filter, check_id, event_filter, status_filter, telemetry_filter
from wire.workorder import (
    SLA_SEGMENT,
    WORKORDER_SUFFIX,
    WorkOrderUpdate,
    decode_sla_breach,
    decode_workorder_update,
    sla_filter,
    workorder_filter,
)

log = logging.getLogger("vigil.alerting")


@dataclass(frozen=True, slots=True)
class _Item:
    mid: int
    qos: int
    generation: int
    topic: str
    payload: bytes


def compose(inc: Incident, note: Notify, ack_url: str | None, resolve_url: str | None) -> tuple[str, str]:
    """The message a phone shows: a title that says what and where, then enough to act on."""
    title = inc.title
    lines = [f"Site {inc.site}, building {inc.building}. Severity {inc.severity}."]
    if note.update:
        lines.insert(0, "Update: a more severe alert joined this incident.")
    for entry in list(inc.alerts.values())[:8]:
        a = entry.alert
        what = f"{a.device}: " if a.device else ""
        mark = " (cleared)" if entry.cleared else ""
        lines.append(f"- {what}{a.summary}{mark}")
    if len(inc.alerts) > 8:
        lines.append(f"- ... and {len(inc.alerts) - 8} more")
    if inc.folded:
        lines.append(f"{inc.folded} offline alarm(s) beneath it are folded into this page.")
    if note.step or note.round:
        lines.append(f"Escalation step {note.step + 1}, round {note.round + 1}: not acknowledged yet.")
    if ack_url:
        lines.append(f"Acknowledge: {ack_url}")
    if resolve_url:
        lines.append(f"Resolve: {resolve_url}")
    lines.append(f"Incident {inc.id}")
    return title, "\n".join(lines)


class AlertingService:
    def __init__(self, settings: AlertingSettings, db: Database, config: OnCallConfig, *,
                 clock: Callable[[], float] = time.time, channels: dict[str, Channel] | None = None) -> None:
        self.settings = settings
        self.db = db
        self.config = config
        self._clock = clock
        self.engine = Engine(config, inhibit_hold_ms=int(settings.inhibit_hold_s * 1000))
        self.board = WorkOrderBoard()
        outbox = Outbox(config.channels, retry_s=settings.retry_s, cycle_s=settings.cycle_s,
                        cycle_max_s=settings.cycle_max_s, give_up_ms=int(settings.give_up_s * 1000))
        chans = channels if channels is not None else build_channels(config.channels)
        self.dispatcher = Dispatcher(outbox, chans, on_attempt=self._record_attempt, clock=clock,
                                     workers=settings.send_workers)
        self._secret = settings.signing_secret.get_secret_value().encode()
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._learned: set[tuple[str, str, str]] = set()
        self._new_learned: list[tuple[str, str, str]] = []
        self._generation = 0
        self._stopping = False
        self._connected = threading.Event()
        self._down_since: float | None = clock()
        self._broker_alerted = False
        self._next_sync = 0.0
        self._unacked: list[_Item] = []
        self._pending_notes: list[Notify] = []
        self._outgoing: list[tuple[Message, Any]] = []
        self._worker: threading.Thread | None = None
        self.handled = 0
        self.rejected = 0
        self._client = make_client(settings.mqtt, settings.client_id, clean_session=False, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, connect_timeout_s: float = 10.0) -> None:
        now_ms = self._now_ms()
        with self.db.begin() as conn:
            store.publish_config(conn, self.config, now_ms)
            sites = (*self.settings.sites, SYSTEM_SITE) if self.settings.sites else ()
            restored = store.load_live(conn, sites)
            orders = store.load_work_orders(conn, self.settings.sites)
        for inc in restored:
            self.engine.restore(inc)
        for order in orders:
            for change in self.board.restore(order):
                self.engine.set_work_order(change.site, change.device, change.work_order, now_ms)
        if restored or orders:
            log.info("alerting: %d live incidents and %d work orders in progress restored", len(restored),
                     len(orders))
        self._sync(now_ms)
        self.dispatcher.start()
        self._worker = threading.Thread(target=self._work_loop, name="alerting-worker", daemon=True)
        self._worker.start()
        connect_in_background(self._client, self.settings.mqtt)
        wait_connected(self._connected, self.settings.mqtt, "alerting", connect_timeout_s)

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        self._client.loop_stop()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(30)
        self._client.loop_write()
        self._client.disconnect()
        self.dispatcher.stop()

    # -- paho callbacks (network thread) -------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("alerting: broker refused the connection: %s", reason)
            return
        set_nodelay(client)
        sites = self.settings.sites or (None,)
        filters = (alarm_filter, status_filter, event_filter, sla_filter, workorder_filter)
        subs = [(f(site), 1) for site in sites for f in filters]
        if self.settings.learn_hierarchy:
            subs += [(telemetry_filter(site), 0) for site in sites]
        with self._cond:
            self._generation += 1
            self._down_since = None
            self._cond.notify()
        client.subscribe(subs)
        log.info("alerting: connected to %s:%s as %s", self.settings.mqtt.host, self.settings.mqtt.port,
                 self.settings.client_id)
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        with self._cond:
            if not self._stopping:
                log.warning("alerting: disconnected from the broker (%s); reconnecting", reason)
                self._down_since = self._clock()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        topic = bytes(msg._topic).decode("utf-8", "backslashreplace")  # msg.topic raises on bad UTF-8
        if topic.endswith("/telemetry"):
            try:
                t = parse_topic(topic)
            except WireError:
                return
            if isinstance(t, TelemetryTopic) and (t.site, t.agent, t.device) not in self._learned:
                self._learned.add((t.site, t.agent, t.device))
                with self._cond:
                    self._new_learned.append((t.site, t.agent, t.device))
            return
        with self._cond:
            self._queue.append(_Item(msg.mid, msg.qos, self._generation, topic, bytes(msg.payload)))
            self._cond.notify()

    # -- the worker ----------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _work_loop(self) -> None:
        while True:
            with self._cond:
                if not self._queue and not self._stopping:
                    due = self.engine.next_due_ms()
                    now = self._now_ms()
                    wait_ms = min(500, max(0, (due - now) if due is not None else 500))
                    self._cond.wait(wait_ms / 1000)
                items = [self._queue.popleft() for _ in range(min(len(self._queue), 500))]
                learned, self._new_learned = self._new_learned, []
                stopping = self._stopping and not self._queue
            try:
                self.step(items, learned)
            except Exception:  # the worker must survive a bug; the message stays unacked
                log.exception("alerting: unexpected error in the worker")
                time.sleep(1.0)
            if stopping:
                return

    def step(self, items: list[_Item], learned: list[tuple[str, str, str]]) -> None:
        """One round: handle messages, tick, commit, then ack and send."""
        now_ms = self._now_ms()
        for site, agent, device in learned:
            self.engine.learn(site, agent, device)
        stops: list[Stop] = []
        for item in items:
            alert = self._translate(item)
            if isinstance(alert, WorkOrderUpdate):
                for decision in self._work_order(alert, now_ms):
                    stops.extend(a for a in decision.actions if isinstance(a, Stop))
                self.handled += 1
            elif alert is not None:
                decision = self.engine.handle(alert, now_ms)
                stops.extend(a for a in decision.actions if isinstance(a, Stop))
                self.handled += 1
        self._unacked.extend(items)
        stops.extend(self._broker_check(now_ms))
        for stop in stops:  # an alert cleared and resolved its incident: no more deliveries
            self.dispatcher.cancel(stop.incident_id)
        if now_ms >= self._next_sync:
            self._sync(now_ms)
        notes = self._pending_notes + [a for a in self.engine.tick(now_ms) if isinstance(a, Notify)]
        if not self._commit(notes, now_ms):
            self._pending_notes = notes  # the engine moved on; these still go out after a commit
            return
        self._pending_notes = []
        with self._cond:
            gen = self._generation
        for item in self._unacked:
            if item.generation == gen and item.qos > 0:
                self._client.ack(item.mid, item.qos)
        self._unacked = []
        for message, methods in self._outgoing:
            self.dispatcher.submit(message, methods)
        self._outgoing = []

    def _work_order(self, update: WorkOrderUpdate, now_ms: int) -> list[Decision]:
        """Feed one work order update to the board, and the devices it (un)silences to the engine."""
        if update.seq > 1 and not self.board.knows(update.site, update.work_order):
            # Not in memory (only orders in progress are loaded at start): its stored seq
            # tells whether this update is stale.
            try:
                with self.db.connect() as conn:
                    stored = store.get_work_order(conn, update.site, update.work_order)
            except SQLAlchemyError as e:
                log.error("alerting: cannot read work order %d (%s); applying its update as new",
                          update.work_order, e)
                stored = None
            if stored is not None:
                self.board.restore(stored)
        outcome, changes = self.board.apply(update)
        decisions: list[Decision] = []
        for change in changes:
            decisions.extend(self.engine.set_work_order(change.site, change.device, change.work_order,
                                                        now_ms))
        if outcome == "applied":
            log.info("alerting: work order %d on %s is %s (devices: %s)", update.work_order, update.site,
                     update.state, ", ".join(update.devices) or "none")
        return decisions

    def _translate(self, item: _Item) -> Alert | WorkOrderUpdate | None:
        try:
            parts = item.topic.split("/")
            if len(parts) == 5 and parts[3] == SLA_SEGMENT and parts[4] == "sla":
                site = check_id("site", parts[2])
                return from_sla_breach(site, decode_sla_breach(item.payload), self.config)
            if len(parts) == 5 and parts[3] == SLA_SEGMENT and parts[4] == WORKORDER_SUFFIX:
                site = check_id("site", parts[2])
                update = decode_workorder_update(item.payload)
                if update.site != site:
                    raise WireError(f"work order update for site {update.site!r} published under "
                                    f"site {site!r}")
                return update
            topic = parse_topic(item.topic)
            if isinstance(topic, AlarmTopic):
                anomaly = decode_anomaly(item.payload)
                return from_anomaly(topic, anomaly, self.config,
                                    self.engine.hierarchy.get((topic.site, topic.device)))
            if isinstance(topic, StatusTopic):
                return from_status(topic, decode_status(item.payload), self.config)
            if isinstance(topic, EventTopic):
                return from_event(topic, decode_event(item.payload), self.config)
            raise WireError(f"alerting does not take {type(topic).__name__} messages")
        except WireError as e:
            self.rejected += 1
            log.warning("alerting: ignored a message on %s: %s", item.topic[:200], e)
            return None

    def _broker_check(self, now_ms: int) -> list[Stop]:
        mq = self.settings.mqtt
        with self._cond:
            down = self._down_since
        limit_s = self.settings.broker_down_after_s
        if down is not None and not self._broker_alerted and now_ms >= (down + limit_s) * 1000:
            self._broker_alerted = True
            log.error("alerting: the broker %s:%s has been unreachable for %.0f s", mq.host, mq.port, limit_s)
            self.engine.handle(broker_alert(mq.host, mq.port, True, now_ms), now_ms)
        elif down is None and self._broker_alerted:
            self._broker_alerted = False
            d = self.engine.handle(broker_alert(mq.host, mq.port, False, now_ms), now_ms)
            return [a for a in d.actions if isinstance(a, Stop)]
        return []

    def _sync(self, now_ms: int) -> None:
        """Apply acks/resolves from the API and reload silences and overrides."""
        self._next_sync = now_ms + self.settings.sync_interval_s * 1000
        try:
            with self.db.begin() as conn:
                commands = store.pending_commands(conn)
                for c in commands:
                    if c.incident_id not in self.engine.incidents:
                        continue
                    act = self.engine.ack if c.action == "ack" else self.engine.resolve
                    d = act(c.incident_id, c.by, now_ms)
                    for a in d.actions:
                        if isinstance(a, Stop):
                            stopped = self.dispatcher.cancel(a.incident_id)
                            log.info("alerting: incident %s %s; %d pending deliveries stopped",
                                     a.incident_id, a.reason, stopped)
                store.mark_done(conn, [c.id for c in commands], now_ms)
                self.engine.set_silences((sid, rule) for sid, rule, _ in store.silences(conn, now_ms))
                rows = store.overrides(conn, now_ms)
                self.engine.overrides = {r: [o for _, o in lst] for r, lst in rows.items()}
        except SQLAlchemyError as e:
            log.error("alerting: cannot read commands, silences and overrides: %s", e)

    def _commit(self, notes: list[Notify], now_ms: int) -> bool:
        incidents, changed = self.engine.take_dirty()
        orders = self.board.take_dirty()
        outgoing: list[tuple[Message, Any]] = []
        base = self.settings.public_base_url
        ttl_ms = int(self.settings.link_ttl_s * 1000)
        try:
            with self.db.begin() as conn:
                store.save_incidents(conn, incidents, changed)
                store.save_work_orders(conn, orders)
                for note in notes:
                    inc = self.engine.incidents.get(note.incident_id)
                    person = self.config.people.get(note.person)
                    if inc is None or person is None:
                        log.error("alerting: cannot notify %s: not in the on-call file", note.person)
                        continue
                    urls: list[str] = []
                    for action in ("ack", "resolve"):
                        link = make_link(self._secret, inc.id, action, note.person, now_ms + ttl_ms)
                        store.add_link(conn, link, now_ms)
                        urls.append(f"{base}/api/v1/alerting/links/{link.token}")
                    title, body = compose(inc, note, urls[0], urls[1])
                    message = Message(inc.id, note.person, title, body, note.life_safety)
                    outgoing.append((message, person.contacts))
        except SQLAlchemyError as e:
            log.error("alerting: cannot write incidents (%s); retrying, messages stay unacked", e)
            for inc in incidents:  # write them again next round
                self.engine.mark_dirty(inc.id, changed.get(inc.id, set()))
            self.board.mark_dirty(orders)
            return False
        self._outgoing.extend(outgoing)
        return True

    def _record_attempt(self, record: AttemptRecord) -> None:
        with self.db.begin() as conn:
            store.add_attempt(conn, record)


def run(settings: AlertingSettings, stop_event: threading.Event) -> None:
    """Run the alerting service until ``stop_event`` is set (the ``vigil alerting`` role)."""
    from alerting.db import open_engine

    config = load_config(settings.oncall_file)
    db = open_engine(settings.database_url)
    service = AlertingService(settings, db, config)
    try:
        service.start()
        stop_event.wait()
        service.stop()
    finally:
        db.dispose()
