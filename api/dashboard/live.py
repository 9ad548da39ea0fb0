"""Live updates for open dashboard pages: bus messages in, small JSON events out.

Three parts, from pure to I/O:
- ``event_from_message(topic, payload)``: the sans-IO core. One bus message (an anomaly on
  ``_alarm``, a work order update or SLA breach on ``_maintenance``, an agent status or
  health) becomes one ``LiveEvent`` — a dict the browser understands, with the ``site`` it
  concerns so each stream shows only what its caller may see — or ``None`` for anything else;
- ``Hub``: the fan-out on the API's event loop. Each open stream has a bounded queue; a
  stream that cannot keep up loses its oldest events and is told to reload (``resync``),
  so one slow phone never holds memory or delays the others. It also keeps the latest
  health of every agent (retained on the bus), which the fleet page shows;
- ``BusFeed``: the thin paho adapter. Its network thread hands messages to the hub with
  ``loop.call_soon_threadsafe``, the one safe way in from another thread.

Invariants: a bad payload is logged and dropped, never raised into paho's thread; events
from the bus and events the API makes itself (an acknowledgement) go through the same hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as mqtt

from wire import MqttSettings, WireError, decode_status
from wire.agent import AgentHealth, decode_health
from wire.anomaly import decode_anomaly
from wire.mqtt import connect_in_background, make_client, set_nodelay
from wire.topics import (
    PREFIX,
    AlarmTopic,
    HealthTopic,
    StatusTopic,
    alarm_filter,
    health_filter,
    parse_topic,
    status_filter,
)
from wire.workorder import (
    SLA_SEGMENT,
    WORKORDER_SUFFIX,
    decode_sla_breach,
    decode_workorder_update,
    sla_filter,
    workorder_filter,
)

log = logging.getLogger(__name__)

LiveEvent = dict[str, Any]
QUEUE_SIZE: Final = 1000
FILTERS: Final = (alarm_filter(), workorder_filter(), sla_filter(), status_filter(), health_filter())


def event_from_message(topic: str, payload: bytes) -> LiveEvent | None:  # noqa: PLR0911 (one per kind)
    """The dashboard event for one bus message, or None if the dashboard does not show it.

    Raises ``WireError`` when the payload breaks the contract of its topic."""
    parts = topic.split("/")
    # _maintenance topics are not in wire.topics' parser (they are maintenance's own namespace).
    if len(parts) == 5 and topic.startswith(PREFIX + "/") and parts[3] == SLA_SEGMENT:
        if parts[4] == WORKORDER_SUFFIX:
            u = decode_workorder_update(payload)
            return {
                "type": "workorder",
                "site": u.site,
                "work_order": u.work_order,
                "seq": u.seq,
                "change": u.change,
                "state": u.state,
                "previous": u.previous,
                "priority": u.priority,
                "actor": u.actor,
                "equipment": u.equipment,
                "devices": list(u.devices),
                "fault": u.fault,
                "anomaly_id": u.anomaly_id,
                "ts_ms": u.ts_ms,
            }
        if parts[4] == "sla":
            b = decode_sla_breach(payload)
            return {
                "type": "sla",
                "site": parts[2],
                "work_order": b.work_order,
                "timer": b.timer,
                "priority": b.priority,
                "state": b.state,
                "title": b.title,
                "due_ms": b.due_ms,
                "ts_ms": b.breached_ms,
            }
        return None
    parsed = parse_topic(topic)
    if isinstance(parsed, AlarmTopic):
        a = decode_anomaly(payload)
        return {
            "type": "alarm",
            "site": parsed.site,
            "device": parsed.device,
            "id": a.id,
            "state": a.state,
            "severity": a.severity,
            "fault": a.fault,
            "summary": a.summary,
            "kind": a.kind,
            "started_ms": a.started_ms,
            "ts_ms": a.ts_ms,
            "metrics": list(a.metrics),
        }
    if isinstance(parsed, StatusTopic):
        s = decode_status(payload)
        return {
            "type": "agent",
            "site": parsed.site,
            "agent": parsed.agent,
            "state": s.state,
            "ts_ms": s.ts_ms,
        }
    if isinstance(parsed, HealthTopic):
        return health_event(parsed.site, parsed.agent, decode_health(payload))
    return None


def health_event(site: str, agent: str, h: AgentHealth) -> LiveEvent:
    """An agent's health report as the fleet page shows it (from the bus or from the store)."""
    return {
        "type": "health",
        "site": site,
        "agent": agent,
        "ts_ms": h.ts_ms,
        "outbox_depth": h.outbox_depth,
        "outbox_bytes": h.outbox_bytes,
        "oldest_unacked_age_s": h.oldest_unacked_age_s,
        "dropped": h.dropped,
        "poll_errors": h.poll_errors,
        "publish_p99_s": h.publish_p99_s,
        "version": h.version,
        "devices": {
            d: {"state": x.state, "since_ms": x.since_ms, "reason": x.reason} for d, x in h.devices.items()
        },
    }


@dataclass(eq=False)
class Subscription:
    """One open stream: the sites it may see (None: all) and its queue."""

    sites: frozenset[str] | None
    queue: asyncio.Queue[LiveEvent] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def wants(self, event: LiveEvent) -> bool:
        return self.sites is None or event.get("site") in self.sites


class Hub:
    """Fan-out of live events to open streams; lives on one event loop."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._ids = itertools.count(1)
        self.health: dict[tuple[str, str], LiveEvent] = {}  # latest per (site, agent)
        self.connected = False
        self.events = 0

    def subscribe(self, sites: frozenset[str] | None) -> Subscription:
        sub = Subscription(sites)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def streams(self) -> int:
        return len(self._subs)

    def publish(self, event: LiveEvent) -> None:
        """Hand ``event`` to every stream that may see it. Call on the hub's loop."""
        self.events += 1
        event.setdefault("seq", next(self._ids))
        if event.get("type") == "health":
            self.health[(str(event["site"]), str(event["agent"]))] = event
        for sub in self._subs:
            if not sub.wants(event):
                continue
            if sub.queue.full():
                # Too slow to keep up: drop what it has and tell the page to fetch afresh.
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                sub.queue.put_nowait({"type": "resync", "reason": "too many events queued"})
                continue
            sub.queue.put_nowait(event)


class BusFeed:
    """Subscribes to the dashboard's topics and feeds ``hub`` on ``loop``."""

    def __init__(
        self, settings: MqttSettings, hub: Hub, loop: asyncio.AbstractEventLoop, client_id: str | None = None
    ) -> None:
        self._settings = settings
        self._hub = hub
        self._loop = loop
        # A unique id per process: two API processes on one broker must not kick each other off.
        self._client = make_client(settings, client_id or f"vigil-api-live-{time.time_ns() % 10**9}")
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self.first_connect = threading.Event()

    def start(self) -> None:
        connect_in_background(self._client, self._settings)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        # The loop closed during shutdown: nothing is left to tell.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _set_connected(self, value: bool) -> None:
        self._hub.connected = value

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            log.warning(
                "live feed: broker %s:%s refused the connection: %s",
                self._settings.host,
                self._settings.port,
                rc,
            )
            return
        set_nodelay(client)
        # One SUBSCRIBE per filter: the demo's embedded broker (amqtt 0.12) drops some filters
        # of a multi-filter SUBSCRIBE. QoS 1 because an alarm missed is worse than one repeated
        # (the pages apply an event twice with the same result).
        for f in FILTERS:
            client.subscribe(f, 1)
        self._call(self._set_connected, True)
        self.first_connect.set()
        log.info("live feed: subscribed on %s:%s", self._settings.host, self._settings.port)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self._call(self._set_connected, False)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            event = event_from_message(msg.topic, bytes(msg.payload))
        except WireError as e:
            log.warning("live feed: dropped a message on %s: %s", msg.topic[:200], e)
            return
        if event is not None:
            self._call(self._hub.publish, event)
