"""The analytics worker: telemetry and events from MQTT through the engine to the database and ``_alarm``.

Threads: paho's network loop decodes each message and queues it; one scoring thread takes
everything queued every ``BATCH_S`` (one engine call for all numeric readings; booleans,
states and device events go to ``analytics.events.Judge``), checks for late data and
quiet events every ``tick_s``, stores each anomaly event and publishes it on
``vigil/v1/{site}/_alarm/{device}`` at QoS 1, and snapshots its learned state every
``snapshot_interval_s`` and at stop (``analytics.state``; taken back at start). A training
thread fits the multivariate models on healthy history from the store (when the role was
given a ``HistorySource``), saves each with its version in the database and hands it to
the scoring thread; the newest stored versions are installed at start.

Equipment kinds come from the agents' births (``Status.devices``); a device no birth
announced gets a kind guessed from its id (``pump-03`` → pump), which is logged once.

Invariants:
- a device's telemetry and events reach one worker: through the shared group ``share_group``
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
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import paho.mqtt.client as mqtt
import sqlalchemy as sa

from analytics import AnalyticsError, db, state
from analytics.engine import Emitted, Engine, kind_of
from analytics.events import Judge
from analytics.history import HistorySource, train
from analytics.models import KindModel, save_model
from analytics.settings import AnalyticsSettings
from wire import (
    Event,
    EventTopic,
    StatusTopic,
    TelemetryTopic,
    WireError,
    decode_event,
    decode_status,
    decode_telemetry,
    parse_topic,
)
from wire import database as wire_database
from wire.mqtt import connect_in_background, make_client, set_nodelay, wait_connected
from wire.topics import AlarmTopic, event_filter, shared, status_filter, telemetry_filter

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
    states: int = 0  # boolean and state readings
    device_events: int = 0
    bad: int = 0
    events: int = 0  # anomaly events
    stored: int = 0
    published: int = 0
    guessed_kinds: int = 0  # devices whose kind no birth announced
    snapshots: int = 0
    models_trained: int = 0


def open_engine(url: str) -> sa.Engine:
    """An engine for ``url`` with the analytics tables at head."""
    return wire_database.open_engine(url, db.MIGRATIONS, AnalyticsError)


class AnalyticsService:
    def __init__(self, settings: AnalyticsSettings, database: sa.Engine | None = None,
                 clock: Any = time.time, history: HistorySource | None = None) -> None:
        self.settings = settings
        self.stats = Stats()
        self.engine = Engine(settings.detect)
        self.judge = Judge(settings.detect)
        self._db = database if database is not None else open_engine(settings.database_url)
        self._own_db = database is None
        self._clock = clock
        self._history = history
        self._lock = threading.Lock()
        self._queue: list[tuple[str, str, str, Any]] = []
        self._events_in: list[tuple[str, str, str, Event]] = []
        self._statuses: list[tuple[str, str, bool, int, dict[str, str]]] = []
        self._unsaved: list[Emitted] = []
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._saved_models = 0
        self._thread: threading.Thread | None = None
        self._trainer: threading.Thread | None = None
        # kinds announced in births, and what the trainer needs: (site, device) -> kind, and
        # kind -> (site, device) -> numeric metrics seen (written by the scoring thread only)
        self._kinds: dict[tuple[str, str], str] = {}
        self._numeric: dict[str, dict[tuple[str, str], set[str]]] = {}
        self._guess_logged = False
        self._new_models: list[KindModel] = []  # trained, waiting for the scoring thread
        self._client = make_client(settings.mqtt, settings.client_id, clean_session=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- start and stop ---------------------------------------------------------------------

    @property
    def state_path(self) -> Path | None:
        d = self.settings.state_dir
        if d is None:
            return None
        return d / f"state-{self.settings.worker_index}of{self.settings.worker_count}.npz"

    def _restore(self) -> None:
        """Learned state from the last snapshot, then the newest stored model of each kind."""
        path = self.state_path
        if path is not None and path.exists():
            try:
                engine, judge, skipped = state.restore(path.read_bytes(), self.settings.detect,
                                                       now_ms=int(self._clock() * 1000))
            except (OSError, AnalyticsError) as e:
                log.error("analytics: could not take back the state snapshot %s (%s); learning afresh",
                          path, e)
            else:
                self.engine, self.judge = engine, judge
                opened = len(engine.open_anomalies()) + len(judge.open_anomalies())
                log.info("analytics: took back the learned state of %d series and %d open anomalies "
                         "from %s%s", engine.series_count, opened, path,
                         f"; relearning {', '.join(skipped)}" if skipped else "")
                for (site, device, metric), sid in engine._series.items():
                    info = engine._info[int(engine._sdev[sid])]
                    self._kinds[(site, device)] = info.kind
                    self._numeric.setdefault(info.kind, {}).setdefault((site, device), set()).add(metric)
        if self._history is not None:
            self.engine.models.stream_training = False
        try:
            models, problems = db.latest_models(self._db)
        except sa.exc.SQLAlchemyError as e:
            log.error("analytics: could not read the stored models (%s); they will be retrained",
                      str(e).splitlines()[0][:200])
            return
        for p in problems:
            log.warning("analytics: %s", p)
        for m in models:
            self.engine.models.install(m)
            log.info("analytics: scoring %s with stored model version %d (%s, %d rows, trained %s)",
                     m.kind, m.version, m.source, m.rows,
                     time.strftime("%Y-%m-%d %H:%M", time.gmtime(m.trained_ms / 1000)))
        self._saved_models = len(self.engine.models.trained)

    def start(self, connect_timeout_s: float = 10.0) -> None:
        self._restore()
        self._thread = threading.Thread(target=self._loop, name="analytics", daemon=True)
        self._thread.start()
        if self._history is not None and self.settings.detect.models:
            self._trainer = threading.Thread(target=self._train_loop, name="analytics-train", daemon=True)
            self._trainer.start()
        connect_in_background(self._client, self.settings.mqtt)
        wait_connected(self._connected, self.settings.mqtt, "analytics", connect_timeout_s)

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._trainer is not None:
            self._trainer.join(30)
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
        subs = [(shared(group, f(s)) if group else f(s), 1) for s in sites
                for f in (telemetry_filter, event_filter)]
        subs += [(status_filter(s), 1) for s in sites]
        client.subscribe(subs)
        log.info("analytics: connected to %s:%s as %s", self.settings.mqtt.host, self.settings.mqtt.port,
                 self.settings.client_id)
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("analytics: disconnected from broker (%s); reconnecting", reason)

    def _mine(self, site: str, device: str) -> bool:
        n = self.settings.worker_count
        return n == 1 or owner(site, device, n) == self.settings.worker_index

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = parse_topic(msg.topic)
            if isinstance(topic, TelemetryTopic):
                if not self._mine(topic.site, topic.device):
                    return
                t = decode_telemetry(bytes(msg.payload))
                with self._lock:
                    self._queue.append((topic.site, topic.agent, topic.device, t.readings))
            elif isinstance(topic, EventTopic):
                if not self._mine(topic.site, topic.device):
                    return
                ev = decode_event(bytes(msg.payload))
                with self._lock:
                    self._events_in.append((topic.site, topic.agent, topic.device, ev))
            elif isinstance(topic, StatusTopic):
                s = decode_status(bytes(msg.payload))
                with self._lock:
                    self._statuses.append((topic.site, topic.agent, s.state == "online", s.ts_ms,
                                           dict(s.devices)))
        except WireError as e:
            self.stats.bad += 1
            if self.stats.bad <= 10 or self.stats.bad % 1000 == 0:
                log.warning("analytics: dropped a message on %s: %s (%d so far)", msg.topic[:120], e,
                            self.stats.bad)

    # -- scoring thread ------------------------------------------------------------------

    def _loop(self) -> None:
        next_tick = self._clock() + self.settings.tick_s
        next_stats = self._clock() + self.settings.stats_interval_s
        next_snapshot = self._clock() + self.settings.snapshot_interval_s
        while True:
            stopping = self._stop.wait(BATCH_S)
            try:
                self._pass()
                now = self._clock()
                if now >= next_tick:
                    next_tick = now + self.settings.tick_s
                    now_ms = int(now * 1000)
                    self._emit([*self.engine.tick(now_ms), *self.judge.tick(now_ms)])
                if self.settings.stats_interval_s and now >= next_stats:
                    next_stats = now + self.settings.stats_interval_s
                    log.info("analytics: %s; %d series", self.stats, self.engine.series_count)
                if stopping or now >= next_snapshot:
                    next_snapshot = now + self.settings.snapshot_interval_s
                    self._snapshot()
            except Exception:
                log.exception("analytics: scoring pass failed; continuing")
            if stopping:
                return

    def _snapshot(self) -> None:
        path = self.state_path
        if path is None or (self.engine.series_count == 0 and not self.judge.open_anomalies()):
            return
        try:
            state.save(path, state.snapshot(self.engine, self.judge, saved_ms=int(self._clock() * 1000)))
            self.stats.snapshots += 1
        except OSError as e:
            log.error("analytics: could not write the state snapshot %s: %s", path, e)

    def kind(self, site: str, device: str) -> str:
        """The equipment kind of a device: its agent's birth says, else a guess from its id."""
        k = self._kinds.get((site, device))
        if k is not None:
            return k
        k = kind_of(device)
        self._kinds[(site, device)] = k
        self.stats.guessed_kinds += 1
        if not self._guess_logged:
            self._guess_logged = True
            log.warning("analytics: %s/%s was not announced in its agent's birth (Status.devices); its "
                        "equipment kind is guessed from its id as %r. Logged once; stats count such "
                        "devices as guessed_kinds", site, device, k)
        return k

    def _pass(self) -> None:
        with self._lock:
            queue, self._queue = self._queue, []
            statuses, self._statuses = self._statuses, []
            device_events, self._events_in = self._events_in, []
            new_models, self._new_models = self._new_models, []
        for m in new_models:
            self.engine.models.install(m)
        for site, agent, online, ts, kinds in statuses:
            for device, kind in kinds.items():
                old = self._kinds.get((site, device))
                if old is not None and old != kind:
                    # the engine keeps the kind a device's series were registered with
                    log.info("analytics: %s/%s is a %s by its agent's birth, not %s; new series take "
                             "it, known ones keep theirs until the state is reset", site, device, kind, old)
                self._kinds[(site, device)] = kind
            self._emit(self.engine.agent_status(site, agent, online, ts))
        out: list[Emitted] = []
        # events first: when a panel's event and its state reading arrive together, the
        # anomaly opens with the panel's own words and the state joins it
        for site, agent, device, ev in device_events:
            self.stats.device_events += 1
            out += self.judge.event(site, agent, device, self.kind(site, device), ev.kind, ev.severity,
                                    ev.message, ev.ts_ms)
        if queue:
            sids: list[int] = []
            tss: list[int] = []
            xs: list[float] = []
            series = self.engine.series
            for site, agent, device, readings in queue:
                kind = self.kind(site, device)
                for r in readings:
                    v = r.value
                    if isinstance(v, float):
                        sid = self.engine.lookup(site, device, r.metric)
                        if sid is None:
                            sid = series(site, device, r.metric, r.unit, agent, kind)
                            with self._lock:  # the trainer copies it
                                self._numeric.setdefault(kind, {}).setdefault((site, device), set()).add(
                                    r.metric)
                        sids.append(sid)
                        tss.append(r.ts_ms)
                        xs.append(v)
                    elif r.quality != "bad":  # a state the device itself calls bad proves nothing
                        self.stats.states += 1
                        out += self.judge.reading(site, agent, device, kind, r.metric, v, r.ts_ms)
            self.stats.messages += len(queue)
            self.stats.readings += len(xs)
            out += self.engine.process(np.array(sids, np.int64), np.array(tss, np.int64),
                                       np.array(xs, np.float64), int(self._clock() * 1000))
        if out or self._unsaved:
            self._emit(out)
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
        """Models the bank fitted from the stream (no history source): stored by version."""
        trained = self.engine.models.trained
        while self._saved_models < len(trained):
            m = trained[self._saved_models]
            try:
                m.version = db.next_model_version(self._db, m.kind)
                db.save_model(self._db, m)
            except sa.exc.SQLAlchemyError as e:
                log.error("analytics: could not store the %s model (%s); will retry", m.kind,
                          str(e).splitlines()[0][:200])
                return
            self._saved_models += 1
            self.stats.models_trained += 1
            log.info("analytics: model for %s trained from the stream (version %d, %d rows)", m.kind,
                     m.version, m.rows)
            self._export(m)

    def _export(self, m: KindModel) -> None:
        if self.settings.model_dir is not None:
            try:
                save_model(m, self.settings.model_dir)
            except OSError as e:
                log.error("analytics: could not save the %s model in %s: %s", m.kind,
                          self.settings.model_dir, e)

    # -- training thread -------------------------------------------------------------------

    def _train_loop(self) -> None:
        wait = self.settings.model_first_train_s
        while not self._stop.wait(wait):
            try:
                missing = self.train_now()
            except Exception:
                log.exception("analytics: model training failed; will retry")
                missing = True
            wait = self.settings.model_retry_s if missing else self.settings.model_retrain_s

    def train_now(self) -> bool:
        """Fit every kind's model on healthy history now; True if some kind is still without."""
        assert self._history is not None
        with self._lock:  # the scoring thread adds to these; copy under the lock
            kinds = {kind: {dev: set(ms) for dev, ms in devs.items()}
                     for kind, devs in list(self._numeric.items())}
        s = self.settings
        now_ms = int(self._clock() * 1000)
        history_s = s.model_history_days * 86400
        try:
            unhealthy = db.unhealthy_windows(self._db, now_ms - int(history_s * 1000), now_ms)
        except sa.exc.SQLAlchemyError as e:
            log.error("analytics: cannot read past anomalies to exclude them from training (%s); "
                      "will retry", str(e).splitlines()[0][:200])
            return True
        missing = False
        for kind, devices in sorted(kinds.items()):
            if self._stop.is_set():
                return True
            try:
                version = db.next_model_version(self._db, kind)
                got = train(kind, self._history, devices, s.detect, now_ms=now_ms, history_s=history_s,
                            step_s=s.model_step_s, version=version, unhealthy=unhealthy)
            except Exception as e:  # the store is another package's: any failure is "not now"
                log.error("analytics: could not read the history of %s (%s: %s); will retry", kind,
                          type(e).__name__, str(e)[:200])
                missing = True
                continue
            if got.model is None:
                if "common numeric metric" not in got.reason:
                    missing = True
                log.info("analytics: no model yet for %s", got.reason)
                continue
            try:
                db.save_model(self._db, got.model)
            except sa.exc.SQLAlchemyError as e:
                log.error("analytics: could not store the %s model (%s); will retry", kind,
                          str(e).splitlines()[0][:200])
                missing = True
                continue
            self.stats.models_trained += 1
            self._export(got.model)
            with self._lock:
                self._new_models.append(got.model)
            log.info("analytics: model for %s version %d trained on %d healthy rows of history (%s)",
                     kind, got.model.version, got.model.rows, ", ".join(got.model.columns))
        return missing


def run(settings: AnalyticsSettings, stop_event: threading.Event,
        history: HistorySource | None = None) -> None:
    """``vigil analytics``: run until ``stop_event`` is set. ``history`` is where models are
    trained from (the time-series store, passed in by the composition root)."""
    service = AnalyticsService(settings, history=history)
    service.start()
    try:
        stop_event.wait()
    finally:
        service.stop()
