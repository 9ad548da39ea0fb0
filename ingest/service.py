"""The ingest worker: MQTT in (paho, QoS 1, manual acks), batches out to the store.

Threads: paho's network loop decodes each message and hands it to the batcher; one writer
thread takes due batches, writes them durably, then acks their messages in order.

Invariants:
- a message is acked only after everything it carried is durable in the store: its
  readings, its status, or its dead letter (architecture.md, invariant 2);
- bad input never stops the worker: a payload or topic that does not satisfy the wire
  contract becomes a dead letter with the decoder's reason, and the messages around it
  are stored as usual;
- write errors are sorted as Telegraf's InfluxDB output sorts them (ingest.write_errors):
  429/5xx/timeouts and 401/403 are retried without limit while the broker holds the backlog
  (401/403 also alert: ``/healthz`` 503, a metric at 1); the readings a 400/422/413 refuses
  are dead-lettered and the rest written;
- after each durable write every agent in the batch gets one end-to-end ``wire.agent.Ack``
  naming the sequence numbers made durable (ingest.acks);
- every dead letter carries a reason code (ingest.validate.Code) and a human reason.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import msgspec
import paho.mqtt.client as mqtt

from ingest.accounting import Accounting, GapDecision
from ingest.acks import build_acks, seq_of
from ingest.batcher import Batch, Batcher
from ingest.births import Births
from ingest.metrics import MetricsServer, Snapshot
from ingest.settings import IngestSettings
from ingest.stats import IngestStats
from ingest.store import DeadLetter, Store, StoreError
from ingest.validate import Accepted, Code, InputError, Policy, check_message
from ingest.write_errors import RefusalSorter, RetryPolicy, StoreState, retry_until_written
from wire import Status, StatusTopic, Telemetry, TelemetryTopic, WireError, encode
from wire.agent import AgentHealth
from wire.ingest_events import (
    GapEvent,
    SeenSeqs,
    decode_seen,
    encode_event,
    gap_anomaly,
    gap_topic,
    seen_filter,
    seen_topic,
)
from wire.mqtt import connect_in_background, make_client, set_nodelay, wait_connected
from wire.topics import PREFIX, HealthTopic, health_filter, shared, status_filter, telemetry_filter

log = logging.getLogger("vigil.ingest")

Item = tuple[TelemetryTopic, Telemetry]
LETTER_LOG_PER_MINUTE = 100


def agent_of(topic: str) -> tuple[str, str]:
    """(site, agent) of a Vigil topic for accounting; ("", "") when the topic has none."""
    parts = topic.split("/")
    if len(parts) >= 5 and f"{parts[0]}/{parts[1]}" == PREFIX:
        return parts[2][:64], parts[3][:64]
    return "", ""


class IngestService:
    def __init__(self, settings: IngestSettings, store: Store, *, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.store = store
        self.stats = IngestStats()
        self._clock = clock
        self._policy = Policy(
            max_payload_bytes=settings.max_payload_bytes,
            max_age_ms=None if settings.ts_max_age_s is None else int(settings.ts_max_age_s * 1000),
            max_ahead_ms=None if settings.ts_max_ahead_s is None else int(settings.ts_max_ahead_s * 1000),
            sites=frozenset(settings.sites),
        )
        self.accounting = Accounting(gap_open_after_s=settings.gap_open_after_s)
        self._births = Births()
        self._tallies_ok = True
        # The store's state as the last write found it (for /healthz and the alert).
        self._store_ok = True
        self._store_problem = ""
        self._unauthorized = False
        self._letter_log_minute, self._letters_logged, self._letters_unlogged = -1, 0, 0
        self._metrics: MetricsServer | None = None
        if settings.metrics_port is not None:
            self._metrics = MetricsServer(settings.metrics_host, settings.metrics_port, self.snapshot)
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
        # Set when the broker granted this connection's subscriptions. Until a worker of the
        # group has subscribed once, Mosquitto has no subscription to queue telemetry for and
        # drops it (nobody subscribed); after that, the persistent session queues it.
        self._subscribed = threading.Event()
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
        self._client.on_subscribe = self._on_subscribed
        # Workers of a group tell each other which sequence numbers they received over a
        # connection of its own (clean session, QoS 1, automatic acks): on the data connection
        # the gossip would wait in the inflight window behind unacked telemetry, and at QoS 0
        # the broker drops it whenever that window is full, which under load is most of the time.
        self._gossip: mqtt.Client | None = None
        if settings.share_group:
            self._gossip = make_client(settings.mqtt, f"{settings.client_id[:58]}.seen", clean_session=True)
            self._gossip.on_connect = self._on_gossip_connect
            self._gossip.on_subscribe = self._on_gossip_subscribed
            self._gossip.on_message = self._on_gossip
        self._gossip_ready = threading.Event()
        if self._gossip is None:
            self._gossip_ready.set()

    # -- lifecycle ------------------------------------------------------------------
    @property
    def metrics_port(self) -> int | None:
        return self._metrics.port if self._metrics is not None else None

    def snapshot(self) -> Snapshot:
        """Accounting and health, copied under the lock (for /metrics, /healthz and tests)."""
        with self._cond:
            agents = {k: replace(a, gaps=list(a.gaps), dead_letters=dict(a.dead_letters))
                      for k, a in self.accounting.agents.items()}
            counters = {k: v for k, v in self.stats.snapshot().items()}
            return Snapshot(self.settings.client_id, agents, counters, self._store_ok, self._store_problem,
                            self._unauthorized)

    def start(self, connect_timeout_s: float = 10.0) -> None:
        if self._metrics is not None:
            self._metrics.start()
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        connect_in_background(self._client, self.settings.mqtt)
        if self._gossip is not None:
            connect_in_background(self._gossip, self.settings.mqtt)
        wait_connected(self._connected, self.settings.mqtt, "ingest", connect_timeout_s)

    def wait_connected(self, timeout_s: float) -> bool:
        """True once subscribed (and, in a group, hearing the other workers' sequence numbers)."""
        deadline = time.monotonic() + timeout_s
        connected = self._subscribed.wait(timeout_s)
        return connected and self._gossip_ready.wait(max(0.0, deadline - time.monotonic()))

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
        self._write_tallies(self._clock())  # the last figures (skipped if the store is down)
        self._client.loop_write()  # push queued acks out before saying goodbye
        self._client.disconnect()
        self._client.loop_write()
        if self._gossip is not None:
            self._gossip.disconnect()
            self._gossip.loop_stop()
        if self._metrics is not None:
            self._metrics.stop()
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
        # Telemetry is split over the group; statuses and health reports reach every worker
        # (plain subscriptions): each worker checks telemetry against its agent's latest birth
        # (ingest.births), and an agent's telemetry and its birth may go to different workers.
        # Writing a status or health report once per worker is harmless: the store keeps the
        # one with the greatest ts_ms.
        subs = [(shared(group, f) if group else f, 1) for f in map(telemetry_filter, sites)]
        subs += [(f, 1) for site in sites for f in (status_filter(site), health_filter(site))]
        client.subscribe(subs)
        log.info("ingest: connected to %s:%s as %s", self.settings.mqtt.host, self.settings.mqtt.port,
                 self.settings.client_id)
        self._connected.set()

    def _on_subscribed(self, _c: mqtt.Client, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        refused = [str(c) for c in codes if getattr(c, "is_failure", False)]
        if refused:
            log.error("ingest: the broker refused %d of the subscriptions (%s): check its ACL for %s",
                      len(refused), ", ".join(refused), self.settings.client_id)
        else:
            # Tests and benchmarks wait for this line before they publish.
            log.info("ingest: subscribed (%d filters) as %s", len(codes), self.settings.client_id)
        self._subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if not self._stopping:
            log.warning("ingest: disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = self._clock()
        raw_topic = bytes(msg._topic)  # msg.topic raises on bad UTF-8
        payload = bytes(msg.payload)
        with self._cond:
            gen = self._generation
            try:
                accepted = check_message(raw_topic, payload, int(now * 1000), self._policy)
            except InputError as e:
                self._dead_letter(msg, raw_topic, payload, e.code, e.reason, gen, now)
            except Exception as e:  # a bug must not kill paho's loop and stop all ingest
                log.exception("ingest: unexpected error on a message")
                self._dead_letter(msg, raw_topic, payload, Code.INTERNAL,
                                  f"internal error while decoding: {e!r}", gen, now)
            else:
                self._add(accepted, msg, gen, now)
            if self._batcher.flush_due(now):
                self._cond.notify()

    def _add(self, accepted: Accepted, msg: mqtt.MQTTMessage, gen: int, now: float) -> None:
        topic, message = accepted.topic, accepted.message
        if isinstance(topic, TelemetryTopic) and isinstance(message, Telemetry):
            n = len(message.readings) + sum(len(t.readings) for _, _, t in accepted.rejected)
            # Counted as received even when refused below: it did arrive, and its number must
            # not look missing to the gap accounting; its dead letter is counted once written.
            if self.accounting.received(topic.site, topic.agent, message.seq, n, now):
                self.stats.duplicates += 1
            unknown = self._births.unknown_device(topic)
            if unknown is not None:
                letter = DeadLetter(int(now * 1000), topic.format(), bytes(msg.payload), unknown,
                                    code=Code.UNKNOWN_DEVICE)
                self._batcher.add_dead_letter(letter, mid=msg.mid, qos=msg.qos, generation=gen, now=now,
                                              seq=((topic.site, topic.agent), message.seq))
                return
            self._batcher.add_telemetry(topic, message, mid=msg.mid, qos=msg.qos, generation=gen, now=now)
            for code, reason, part in accepted.rejected:
                self._batcher.add_split_letter(
                    DeadLetter(int(now * 1000), topic.format(), encode(part), reason, code=code))
        elif isinstance(topic, StatusTopic) and isinstance(message, Status):
            # At once, not when written: telemetry right behind a birth is checked against it.
            self._births.update(topic, message)
            self._batcher.add_status(topic, message, mid=msg.mid, qos=msg.qos, generation=gen, now=now)
        elif isinstance(topic, HealthTopic) and isinstance(message, AgentHealth):
            self._batcher.add_health(topic, message, mid=msg.mid, qos=msg.qos, generation=gen, now=now)

    def _dead_letter(self, msg: mqtt.MQTTMessage, raw_topic: bytes, payload: bytes, code: str, reason: str,
                     gen: int, now: float) -> None:
        topic = raw_topic.decode("utf-8", "backslashreplace")
        letter = DeadLetter(int(now * 1000), topic, payload, reason, code=code)
        self._batcher.add_dead_letter(letter, mid=msg.mid, qos=msg.qos, generation=gen, now=now,
                                      seq=seq_of(topic, payload))

    def _on_gossip_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe(seen_filter(), 1)

    def _on_gossip_subscribed(self, *_args: Any) -> None:
        self._gossip_ready.set()

    def _on_gossip(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._on_seen(bytes(msg.payload), self._clock())

    def _on_seen(self, payload: bytes, now: float) -> None:
        try:
            seen = decode_seen(payload)
        except WireError as e:
            log.warning("ingest: ignoring a bad seen-sequences message: %s", e)
            return
        if seen.worker == self.settings.client_id:
            return
        with self._cond:
            for site, agent, spans in seen.seen:
                for lo, hi in spans:
                    for seq in range(lo, min(hi, lo + 100_000) + 1):
                        self.accounting.seen_elsewhere(site, agent, seq, now)

    # -- writer thread ----------------------------------------------------------------
    def _write_loop(self) -> None:
        next_stats = self._clock() + self.settings.stats_interval_s
        next_seen = self._clock() + self.settings.seen_interval_s
        next_tally = self._clock() + self.settings.accounting_interval_s
        while True:
            now = self._clock()
            if now >= next_seen:
                next_seen = now + self.settings.seen_interval_s
                self._publish_accounting(now)
            if now >= next_tally:
                next_tally = now + self.settings.accounting_interval_s
                self._write_tallies(now)
            if self.settings.stats_interval_s and now >= next_stats:
                next_stats = now + self.settings.stats_interval_s
                self._log_stats()
            with self._cond:
                batch = None
                while True:
                    now = self._clock()
                    if self._batcher.flush_due(now) or (self._stopping and self._batcher.pending_messages):
                        batch = self._batcher.take()
                        break
                    if self._stopping:
                        return
                    if now >= min(next_seen, next_tally):
                        break  # the accounting ticks, at the top of the outer loop
                    due = self._batcher.due_at()
                    wait = min(1.0, next_seen - now, next_tally - now, due - now if due is not None else 1.0)
                    self._cond.wait(timeout=max(wait, 0.001))
            if batch is None:
                continue
            if not self._store(batch):
                return  # stopping with the store down: leave the batch unacked
            self._ack(batch)
            self._ack_agents(batch)

    def _publish_accounting(self, now: float) -> None:
        """Tell the group what arrived here, and publish gap events that fell due."""
        with self._cond:
            seen = self.accounting.drain_seen() if self.settings.share_group else []
            events = self.accounting.due_events(now) if self.settings.publish_gaps else []
        if seen:
            message = SeenSeqs(v=1, worker=self.settings.client_id,
                               seen=tuple((site, agent, tuple(spans)) for site, agent, spans in seen))
            if self._gossip is not None:
                self._gossip.publish(seen_topic(self.settings.client_id), encode_event(message), qos=1)
        for decision in events:
            self._publish_gap(decision, now)

    def _write_tallies(self, now: float) -> None:
        """Write this worker's per-agent accounting for the API (GET /api/v1/ingest/accounting).

        Best effort, never retried: the next interval writes newer figures, and data writes
        must not wait behind bookkeeping while the store is struggling (skipped while it is down).
        """
        with self._cond:
            if not self._store_ok:
                return
            tallies = self.accounting.tallies(self.settings.client_id, int(now * 1000))
        try:
            self.store.write_accounting(tallies)
        except StoreError as e:
            if self._tallies_ok:
                log.warning("ingest: could not write the accounting for the API (%s); retrying every %.0f s",
                            e, self.settings.accounting_interval_s)
            self._tallies_ok = False
        else:
            self._tallies_ok = True

    def _publish_gap(self, d: GapDecision, now: float) -> None:
        event = GapEvent(v=1, site=d.site, agent=d.agent, first_seq=d.first, last_seq=d.last,
                         state="open" if d.state == "open" else "closed", opened_ms=int(d.opened_at * 1000),
                         ts_ms=int(now * 1000), worker=self.settings.client_id)
        log.warning("ingest: sequence gap %s of %s/%s: messages %d..%d (%d) since %.0f s",
                    event.state, d.site, d.agent, d.first, d.last, event.missing, now - d.opened_at)
        self._client.publish(gap_topic(d.site, d.agent), encode_event(event), qos=1)
        alarm, anomaly = gap_anomaly(event)
        self._client.publish(alarm.format(), msgspec.json.encode(anomaly), qos=1)

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
        stored: dict[tuple[str, str], list[int]] = {}
        counted: set[tuple[TelemetryTopic, int]] = set()
        for topic, message in batch.telemetry:
            n = len(message.readings)
            st.readings += n
            oldest = min(r.ts_ms for r in message.readings) if n > 1 else message.readings[0].ts_ms
            st.latency.add(max(0.0, (now_ms - oldest) / 1000), n)
            totals = stored.setdefault((topic.site, topic.agent), [0, 0])
            if (topic, message.seq) not in counted:  # a message split by a refusal counts once
                counted.add((topic, message.seq))
                totals[0] += 1
            totals[1] += n
        with self._cond:
            for (site, agent), (messages, readings) in stored.items():
                self.accounting.stored(site, agent, messages, readings)
            for letter in batch.letters_written:
                self.accounting.dead_lettered(*agent_of(letter.topic), letter.code or Code.INTERNAL)
        return True

    def _write_contents(self, batch: Batch) -> None:
        if batch.telemetry:
            try:
                self.store.write(batch.telemetry)
            except StoreError as e:
                if e.retryable:
                    raise
                letters: list[DeadLetter] = []
                sorter = RefusalSorter(self.store.write, int(self._clock() * 1000))
                kept = sorter.sort(batch.telemetry, e, letters)
                self.stats.refused_splits += sorter.splits
                # Only now: a retryable failure while sorting starts the sorting over.
                batch.telemetry = kept
                batch.dead_letters.extend(letters)
        for topic, status in batch.statuses:
            self.store.write_status(topic, status)
        for health_topic, health in batch.healths:
            self.store.write_health(health_topic, health)
        if batch.dead_letters:
            self.store.write_dead_letters(batch.dead_letters)
            self._log_letters(batch.dead_letters)
            # Written once: a retry of a later step must not write them twice.
            batch.letters_written.extend(batch.dead_letters)
            batch.dead_letters = []

    def _log_letters(self, letters: Sequence[DeadLetter]) -> None:
        """One line per dead letter, at most LETTER_LOG_PER_MINUTE a minute (a flood of garbage
        must not flood the log too; the store has every one)."""
        minute = int(self._clock() // 60)
        if minute != self._letter_log_minute:
            if self._letters_unlogged:
                log.warning("ingest: %d more dead letters in the last minute were not logged; "
                            "`vigil ingest deadletters list` shows them", self._letters_unlogged)
            self._letter_log_minute, self._letters_logged, self._letters_unlogged = minute, 0, 0
        for letter in letters:
            if self._letters_logged >= LETTER_LOG_PER_MINUTE:
                self._letters_unlogged += 1
                continue
            self._letters_logged += 1
            log.warning("ingest: dead letter [%s] from %s: %s", letter.code, letter.topic[:200],
                        letter.reason[:500])

    def _retry(self, attempt: Callable[[], None]) -> bool:
        policy = RetryPolicy(self.settings.retry_initial_s, self.settings.retry_max_s,
                             self.settings.auth_alert_interval_s)
        return retry_until_written(attempt, policy, clock=self._clock, wait=self._retry_wait,
                                   report=self._report_store)

    def _retry_wait(self, seconds: float, now: float) -> bool:
        """Wait before the next attempt; False once stopping has run out of drain time."""
        with self._cond:
            if self._stopping and now >= self._drain_deadline:
                return False
            self._cond.wait(timeout=seconds)
        return True

    def _report_store(self, state: StoreState) -> None:
        if not state.ok:
            self.stats.write_retries += 1  # live: tests and /metrics watch it during an outage
        with self._cond:
            self._store_ok, self._store_problem = state.ok, state.problem
            self._unauthorized = state.unauthorized

    def _ack(self, batch: Batch) -> None:
        with self._cond:
            gen = self._generation
        for ack in batch.acks:
            if ack.generation == gen:
                self._client.ack(ack.mid, ack.qos)
            else:
                self.stats.acks_skipped += 1

    def _ack_agents(self, batch: Batch) -> None:
        """Tell each agent which of its messages this batch made durable (wire.agent.Ack).

        Published on the data connection at QoS 1: paho keeps it in its session and resends
        it after a reconnect. A lost one costs the agent a resend, never data.
        """
        if not self.settings.agent_acks or not batch.seqs:
            return
        for topic, payload in build_acks(batch.seqs, self.settings.client_id, int(self._clock() * 1000)):
            self._client.publish(topic, payload, qos=1)
        self.stats.agent_acks += len(batch.seqs)

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
