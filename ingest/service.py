"""The ingest worker: MQTT in (paho, QoS 1, manual acks), batches out to the store.

Threads: paho's network loop decodes each message and hands it to the batcher; one writer
thread takes due batches, writes them durably, then acks their messages in order.

Invariants:
- a message is acked only after everything it carried is durable in the store: its
  readings, its status, or its dead letter (architecture.md, invariant 2);
- bad input never stops the worker: a payload or topic that does not satisfy the wire
  contract becomes a dead letter with the decoder's reason, and the messages around it
  are stored as usual;
- a store outage is retried without limit (exponential backoff); the broker holds the
  backlog meanwhile, because nothing unwritten is acked;
- a batch the store refuses for its content is retried message by message, so one bad
  message costs only itself: it becomes a dead letter with the store's reason.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from ingest.batcher import Batch, Batcher
from ingest.settings import IngestSettings
from ingest.stats import IngestStats
from ingest.store import DeadLetter, Store, StoreError
from wire import (
    StatusTopic,
    Telemetry,
    TelemetryTopic,
    WireError,
    decode_status,
    decode_telemetry,
    encode,
    parse_topic,
)
from wire.mqtt import make_client, set_nodelay
from wire.topics import shared, status_filter, telemetry_filter

log = logging.getLogger("vigil.ingest")


class IngestService:
    def __init__(self, settings: IngestSettings, store: Store, *, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.store = store
        self.stats = IngestStats()
        self._clock = clock
        self._batcher = Batcher(
            max_readings=settings.batch_max_readings,
            max_messages=settings.batch_max_messages,
            max_age_s=settings.batch_max_age_s,
        )
        self._cond = threading.Condition()
        self._stopping = False
        self._drain_deadline = 0.0
        self._generation = 0
        self._connected = threading.Event()
        self._writer: threading.Thread | None = None
        self._client = make_client(
            settings.mqtt,
            settings.client_id,
            clean_session=False,
            manual_ack=True,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- lifecycle ------------------------------------------------------------------
    def start(self, connect_timeout_s: float = 10.0) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        mq = self.settings.mqtt
        self._client.connect_async(mq.host, mq.port, keepalive=mq.keepalive_s)
        self._client.loop_start()
        if not self._connected.wait(connect_timeout_s):
            log.warning("ingest: broker %s:%s not reachable yet; retrying in the background",
                        mq.host, mq.port)

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop taking messages, write and ack what was received, then disconnect.

        Messages still unwritten after ``drain_s`` (store down) stay unacked: the broker
        redelivers them to this client id next time.
        """
        # Stop the network loop first so no message arrives after the final flush; acks
        # are then sent by the writer directly on the still-open socket.
        self._client.loop_stop()
        with self._cond:
            self._stopping = True
            self._drain_deadline = self._clock() + drain_s
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()
        self._client.loop_write()  # push queued acks out before saying goodbye
        self._client.disconnect()
        self._client.loop_write()
        self._log_stats()

    # -- paho callbacks (network thread) ----------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("ingest: broker refused the connection: %s", reason)
            return
        set_nodelay(client)
        with self._cond:
            self._generation += 1
        group = self.settings.share_group
        sites = self.settings.sites or (None,)
        filters = [f for site in sites for f in (telemetry_filter(site), status_filter(site))]
        client.subscribe([(shared(group, f) if group else f, 1) for f in filters])
        log.info("ingest: connected to %s:%s as %s", self.settings.mqtt.host, self.settings.mqtt.port,
                 self.settings.client_id)
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stopping:
            log.warning("ingest: disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = self._clock()
        payload = bytes(msg.payload)
        with self._cond:
            gen = self._generation
            try:
                topic = parse_topic(msg.topic)
                if isinstance(topic, TelemetryTopic):
                    self._batcher.add_telemetry(
                        topic, decode_telemetry(payload), mid=msg.mid, qos=msg.qos, generation=gen, now=now
                    )
                elif isinstance(topic, StatusTopic):
                    self._batcher.add_status(
                        topic, decode_status(payload), mid=msg.mid, qos=msg.qos, generation=gen, now=now
                    )
                else:
                    raise WireError(f"ingest does not take {type(topic).__name__} messages")
            except (WireError, UnicodeDecodeError) as e:
                self._dead_letter(msg, payload, str(e), gen, now)
            except Exception as e:  # a bug must not kill paho's loop and stop all ingest
                log.exception("ingest: unexpected error on a message")
                self._dead_letter(msg, payload, f"internal error while decoding: {e!r}", gen, now)
            if self._batcher.flush_due(now):
                self._cond.notify()

    def _dead_letter(self, msg: mqtt.MQTTMessage, payload: bytes, reason: str, gen: int, now: float) -> None:
        topic = bytes(msg._topic).decode("utf-8", "backslashreplace")  # msg.topic raises on bad UTF-8
        letter = DeadLetter(int(now * 1000), topic, payload, reason)
        self._batcher.add_dead_letter(letter, mid=msg.mid, qos=msg.qos, generation=gen, now=now)

    # -- writer thread ----------------------------------------------------------------
    def _write_loop(self) -> None:
        next_stats = self._clock() + self.settings.stats_interval_s
        while True:
            with self._cond:
                while True:
                    now = self._clock()
                    if self._batcher.flush_due(now) or (self._stopping and self._batcher.pending_messages):
                        break
                    if self._stopping:
                        return
                    due = self._batcher.due_at()
                    self._cond.wait(timeout=min(1.0, due - now) if due is not None else 1.0)
                batch = self._batcher.take()
            if not self._store(batch):
                return  # stopping with the store down: leave the batch unacked
            self._ack(batch)
            if self.settings.stats_interval_s and self._clock() >= next_stats:
                next_stats = self._clock() + self.settings.stats_interval_s
                self._log_stats()

    def _store(self, batch: Batch) -> bool:
        """Write the batch durably; return False only when stopping gave up on the store."""
        ok = self._retry(lambda: self._write_contents(batch))
        if not ok:
            return False
        st = self.stats
        st.batches += 1
        st.messages += batch.messages
        st.statuses += len(batch.statuses)
        st.dead_letters += len(batch.dead_letters)
        now_ms = self._clock() * 1000
        for _topic, message in batch.telemetry:
            n = len(message.readings)
            st.readings += n
            oldest = min(r.ts_ms for r in message.readings) if n > 1 else message.readings[0].ts_ms
            st.latency.add(max(0.0, (now_ms - oldest) / 1000), n)
        return True

    def _write_contents(self, batch: Batch) -> None:
        if batch.telemetry:
            try:
                self.store.write(batch.telemetry)
            except StoreError as e:
                if e.retryable:
                    raise
                self._write_one_by_one(batch, e)
        for topic, status in batch.statuses:
            self.store.write_status(topic, status)
        if batch.dead_letters:
            self.store.write_dead_letters(batch.dead_letters)
            for letter in batch.dead_letters:
                log.warning("ingest: dead letter from %s: %s", letter.topic[:200], letter.reason)
            # Written once: a retry of a later step must not write them twice.
            batch.dead_letters = []

    def _write_one_by_one(self, batch: Batch, error: StoreError) -> None:
        """The store refused the batch for its content: find the messages it refuses."""
        log.warning("ingest: store refused a batch of %d messages (%s); writing them one by one",
                    len(batch.telemetry), error)
        kept: list[tuple[TelemetryTopic, Telemetry]] = []
        now_ms = int(self._clock() * 1000)
        for item in batch.telemetry:
            try:
                self.store.write([item])
                kept.append(item)
            except StoreError as e:
                if e.retryable:
                    raise
                topic, message = item
                batch.dead_letters.append(DeadLetter(now_ms, topic.format(), encode(message),
                                                     f"refused by the store: {e}"))
        batch.telemetry = kept

    def _retry(self, attempt: Callable[[], None]) -> bool:
        delay = self.settings.retry_initial_s
        failing_since: float | None = None
        while True:
            try:
                attempt()
            except StoreError as e:
                now = self._clock()
                if failing_since is None:
                    failing_since = now
                    log.error("ingest: store write failed (%s); retrying until it succeeds", e)
                self.stats.write_retries += 1
                with self._cond:
                    if self._stopping and now >= self._drain_deadline:
                        log.error("ingest: stopping with the store unavailable; the unwritten "
                                  "messages stay unacked with the broker")
                        return False
                    self._cond.wait(timeout=delay)
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            if failing_since is not None:
                log.warning("ingest: store writes recovered after %.1f s", self._clock() - failing_since)
            return True

    def _ack(self, batch: Batch) -> None:
        with self._cond:
            gen = self._generation
        for ack in batch.acks:
            if ack.generation == gen:
                self._client.ack(ack.mid, ack.qos)
            else:
                self.stats.acks_skipped += 1

    def _log_stats(self) -> None:
        log.info("ingest stats %s", json.dumps(self.stats.snapshot()))


def run(settings: IngestSettings, stop_event: threading.Event, store: Store | None = None) -> None:
    """Run one ingest worker until ``stop_event`` is set (the ``vigil ingest`` role)."""
    from ingest.store import open_store

    own = store is None
    st = open_store(settings.store) if store is None else store
    service = IngestService(settings, st)
    try:
        service.start()
        stop_event.wait()
        service.stop()
    finally:
        if own:
            st.close()
