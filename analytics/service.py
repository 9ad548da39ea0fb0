"""The analytics worker: telemetry from MQTT through the engine to the database and ``_alarm``.

Threads: paho's network loop decodes each message and queues its numeric readings; one
scoring thread takes everything queued every ``BATCH_S`` (one engine call for all of it),
checks for late data every ``tick_s``, stores each anomaly event and publishes it on
``vigil/v1/{site}/_alarm/{device}`` at QoS 1.

Invariants:
- a device's telemetry reaches one worker: through the shared group ``share_group``
  (``$share/analytics/...``) on a broker that hashes topics to members (EMQX
  ``hash_topic``), or, with ``worker_count`` N > 1 (Mosquitto), unshared to every worker,
  each keeping the devices whose stable hash (``owner``) is its ``worker_index``; agent
  statuses are never shared: every worker hears every agent go offline;
- a bad message is logged with the decoder's reason and dropped; it costs nothing else;
- an event is stored before it is published; an event the database refused is kept and
  retried on the next pass, so a database outage delays anomalies but loses none.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import paho.mqtt.client as mqtt
import sqlalchemy as sa

from analytics import AnalyticsError, db
from analytics.engine import Emitted, Engine
from analytics.models import save_model
from analytics.settings import AnalyticsSettings
from wire import StatusTopic, TelemetryTopic, WireError, decode_status, decode_telemetry, parse_topic
from wire import database as wire_database
from wire.mqtt import connect_in_background, make_client, set_nodelay, wait_connected
from wire.topics import AlarmTopic, shared, status_filter, telemetry_filter

log = logging.getLogger("vigil.analytics")


def owner(site: str, device: str, workers: int) -> int:
    """The worker (0..workers-1) that keeps this device: a hash stable across processes and
    restarts (CRC-32, not Python's salted ``hash``)."""
    return zlib.crc32(f"{site}/{device}".encode()) % workers

BATCH_S = 0.2


@dataclass
class Stats:
    messages: int = 0
    readings: int = 0
    bad: int = 0
    events: int = 0
    stored: int = 0
    published: int = 0


def open_engine(url: str) -> sa.Engine:
    """An engine for ``url`` with the analytics tables at head."""
    return wire_database.open_engine(url, db.MIGRATIONS, AnalyticsError)


class AnalyticsService:
    def __init__(self, settings: AnalyticsSettings, database: sa.Engine | None = None,
                 clock: Any = time.time) -> None:
        self.settings = settings
        self.stats = Stats()
        self.engine = Engine(settings.detect)
        self._db = database if database is not None else open_engine(settings.database_url)
        self._own_db = database is None
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: list[tuple[str, str, str, Any]] = []
        self._statuses: list[tuple[str, str, bool, int]] = []
        self._unsaved: list[Emitted] = []
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._saved_models = 0
        self._thread: threading.Thread | None = None
        self._client = make_client(settings.mqtt, settings.client_id, clean_session=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self, connect_timeout_s: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._loop, name="analytics", daemon=True)
        self._thread.start()
        connect_in_background(self._client, self.settings.mqtt)
        wait_connected(self._connected, self.settings.mqtt, "analytics", connect_timeout_s)

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self._client.disconnect()
        self._client.loop_stop()
        if self._own_db:
            self._db.dispose()
        log.info("analytics: stopped; %s", self.stats)

    # -- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("analytics: broker refused the connection: %s", reason)
            return
        set_nodelay(client)
        # hash-partitioned workers (Mosquitto) hear everything and keep their slice
        group = self.settings.share_group if self.settings.worker_count == 1 else None
        sites = self.settings.sites or (None,)
        subs = [(shared(group, telemetry_filter(s)) if group else telemetry_filter(s), 1) for s in sites]
        subs += [(status_filter(s), 1) for s in sites]
        client.subscribe(subs)
        log.info("analytics: connected to %s:%s as %s", self.settings.mqtt.host, self.settings.mqtt.port,
                 self.settings.client_id)
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("analytics: disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = parse_topic(msg.topic)
            if isinstance(topic, TelemetryTopic):
                n = self.settings.worker_count
                if n > 1 and owner(topic.site, topic.device, n) != self.settings.worker_index:
                    return
                t = decode_telemetry(bytes(msg.payload))
                with self._lock:
                    self._queue.append((topic.site, topic.agent, topic.device, t.readings))
            elif isinstance(topic, StatusTopic):
                s = decode_status(bytes(msg.payload))
                with self._lock:
                    self._statuses.append((topic.site, topic.agent, s.state == "online", s.ts_ms))
        except WireError as e:
            self.stats.bad += 1
            if self.stats.bad <= 10 or self.stats.bad % 1000 == 0:
                log.warning("analytics: dropped a message on %s: %s (%d so far)", msg.topic[:120], e,
                            self.stats.bad)

    # -- scoring thread ------------------------------------------------------------------

    def _loop(self) -> None:
        next_tick = self._clock() + self.settings.tick_s
        next_stats = self._clock() + self.settings.stats_interval_s
        while True:
            stopping = self._stop.wait(BATCH_S)
            try:
                self._pass()
                now = self._clock()
                if now >= next_tick:
                    next_tick = now + self.settings.tick_s
                    self._emit(self.engine.tick(int(now * 1000)))
                if self.settings.stats_interval_s and now >= next_stats:
                    next_stats = now + self.settings.stats_interval_s
                    log.info("analytics: %s; %d series", self.stats, self.engine.series_count)
            except Exception:
                log.exception("analytics: scoring pass failed; continuing")
            if stopping:
                return

    def _pass(self) -> None:
        with self._lock:
            queue, self._queue = self._queue, []
            statuses, self._statuses = self._statuses, []
        for site, agent, online, ts in statuses:
            self._emit(self.engine.agent_status(site, agent, online, ts))
        if queue:
            sids: list[int] = []
            tss: list[int] = []
            xs: list[float] = []
            series = self.engine.series
            for site, agent, device, readings in queue:
                for r in readings:
                    v = r.value
                    if isinstance(v, float):
                        sids.append(series(site, device, r.metric, r.unit, agent))
                        tss.append(r.ts_ms)
                        xs.append(v)
            self.stats.messages += len(queue)
            self.stats.readings += len(xs)
            events = self.engine.process(np.array(sids, np.int64), np.array(tss, np.int64),
                                         np.array(xs, np.float64), int(self._clock() * 1000))
            self._emit(events)
        elif self._unsaved:
            self._emit([])
        self._save_models()

    def _emit(self, events: list[Emitted]) -> None:
        pending = [*self._unsaved, *events]
        self._unsaved = []
        self.stats.events += len(events)
        for i, e in enumerate(pending):
            try:
                if db.save(self._db, e.site, e.device, e.anomaly):
                    self.stats.stored += 1
            except sa.exc.SQLAlchemyError as err:
                log.error("analytics: database refused anomaly %s (%s); will retry", e.anomaly.id,
                          str(err).splitlines()[0][:200])
                self._unsaved = pending[i:]
                return
            self._client.publish(AlarmTopic(e.site, e.device).format(), msgspec.json.encode(e.anomaly),
                                 qos=self.settings.publish_qos)
            self.stats.published += 1
            a = e.anomaly
            log.info("analytics: %s %s %s/%s: %s", a.state, a.severity, e.site, e.device, a.summary)

    def _save_models(self) -> None:
        trained = self.engine.models.trained
        while self._saved_models < len(trained):
            m = trained[self._saved_models]
            self._saved_models += 1
            log.info("analytics: model for %s trained (version %d, %d rows)", m.kind, m.version, m.rows)
            if self.settings.model_dir is not None:
                try:
                    save_model(m, self.settings.model_dir)
                except OSError as e:
                    log.error("analytics: could not save the %s model in %s: %s", m.kind,
                              self.settings.model_dir, e)


def run(settings: AnalyticsSettings, stop_event: threading.Event) -> None:
    """``vigil analytics``: run until ``stop_event`` is set."""
    service = AnalyticsService(settings)
    service.start()
    try:
        stop_event.wait()
    finally:
        service.stop()
