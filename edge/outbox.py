"""The agent's durable outbox (store-and-forward): telemetry is kept on disk until ingest
says it is stored, then deleted; after an outage the backlog is replayed in order.

One SQLite database in WAL mode per agent. The runtime (``edge.runtime``) calls it from
its scheduler thread only, with ``now_ms`` (wall clock, epoch ms): it hands it each
round's telemetry before publishing (``add``), asks what to replay (``take_replay``),
and feeds it the acknowledgements ingest publishes (``acked``, ``wire.agent.Ack``). It
never touches the network, so its decisions are unit-tested with an explicit clock.

Invariants:
- a telemetry message is written (committed) before it is published: ``add`` returns
  the messages to send only once they are in the database, stamped with the agent's
  sequence number and the edge time it was queued; a message is never re-stamped;
- sequence numbers continue across restarts (``next_seq`` is stored in the same
  transaction as the messages that use it) and the boot epoch grows on every open
  (``boot``: at least the open time in ms and one more than the stored one), so
  ``(boot, seq)`` and a restart are visible on the bus;
- a message leaves the outbox only when (a) an ``Ack`` covers its sequence number,
  (b) it is dropped by the bound (``max_messages``, ``max_bytes``, ``max_age_s``),
  oldest first, every drop counted in ``dropped``; nothing else deletes it;
- each message is in one of two states: *in flight* (handed to the client at
  ``sent_ms``, awaiting ingest's ack) or *backlog* (to send). A message in flight for
  longer than ``resend_after_s``, or in flight when the connection drops, goes back to
  the backlog: at-least-once, a duplicate lands on the same stored point;
- a message is sent live (``historical=False``) only at ``add`` time while connected;
  every later send is from the backlog, in sequence order, with ``historical=True``
  and at most ``replay_window`` such sends awaiting an ack (so the replay runs at the
  rate ingest stores, and live messages, which bypass the window, keep flowing);
- payloads are added as msgspec encodes a live ``Telemetry`` (``historical`` omitted,
  a JSON object ending in ``}``); the historical copy appends the field, rather than
  decoding and re-encoding each replayed message;
- events (door forced, fire alarm) are kept in their own table from when they are
  queued until the broker acknowledges them (PUBACK), and re-sent on every connect and
  after a restart: ingest's ``Ack`` names telemetry sequence numbers only, so events are
  protected against network outages and agent crashes, but not against a broker that
  loses an acknowledged message (see README);
- ``:memory:`` (``path=None``) gives the same behaviour without durability, for the
  simulator and tests.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge.errors import EdgeError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_HISTORICAL_SUFFIX = b',"historical":true}'
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topics (id INTEGER PRIMARY KEY, topic TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY, queued_ms INTEGER NOT NULL, topic_id INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, queued_ms INTEGER NOT NULL, topic_id INTEGER NOT NULL, payload BLOB NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """Bounds and pacing of an outbox (``edge.settings.OutboxSettings`` fills it)."""

    max_messages: int = 2_000_000
    max_bytes: int = 512 * 1024 * 1024
    max_age_s: float = 7 * 86_400.0
    resend_after_s: float = 30.0
    replay_window: int = 5_000
    replay_batch: int = 1_000
    max_events: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_messages", "max_bytes", "replay_window", "replay_batch", "max_events"):
            if getattr(self, name) < 1:
                raise ValueError(f"outbox {name} must be at least 1, got {getattr(self, name)}")
        if self.max_age_s <= 0 or self.resend_after_s <= 0:
            raise ValueError("outbox max_age_s and resend_after_s must be positive")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to hand to the MQTT client now."""

    seq: int
    topic: str
    payload: bytes
    historical: bool


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int  # telemetry messages held (in flight or backlog)
    bytes: int  # their payload bytes
    in_flight: int
    backlog: int
    oldest_queued_ms: int | None
    dropped: int  # messages dropped by the bounds since open
    dropped_bytes: int
    events_pending: int
    events_dropped: int
    next_seq: int


class Outbox:
    """One agent's outbox; see the module docstring for the invariants."""

    def __init__(
        self,
        path: Path | None,
        *,
        identity: str,
        now_ms: int,
        limits: OutboxLimits = OutboxLimits(),
        synchronous: Literal["normal", "full"] = "normal",
    ) -> None:
        self.path = path
        self.limits = limits
        where = ":memory:" if path is None else str(path)
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN ... COMMIT), one per call.
            self._db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a crash of the process (kill -9), not
            # necessarily a power cut; FULL also fsyncs every commit (see README).
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.executescript(_SCHEMA)
            self._open(identity, now_ms)
        except sqlite3.Error as e:
            raise EdgeError(f"outbox {where}: cannot open it: {e}") from None

    def _open(self, identity: str, now_ms: int) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        version = meta.get("schema", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            db.execute("ROLLBACK")
            raise EdgeError(
                f"outbox {self.path}: schema version {version}, this agent reads {SCHEMA_VERSION}"
            )
        owner = meta.get("identity", identity)
        if owner != identity:
            db.execute("ROLLBACK")
            # Sequence numbers belong to one agent: continuing another's would mislead ingest.
            raise EdgeError(
                f"outbox {self.path} belongs to agent {owner!r}, not {identity!r}: "
                "give each agent its own file"
            )
        self.boot = max(now_ms, int(meta.get("boot", -1)) + 1)
        last = db.execute("SELECT max(seq) FROM messages").fetchone()[0]
        self._next_seq = max(int(meta.get("next_seq", 0)), -1 if last is None else last + 1)
        db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [
                ("schema", SCHEMA_VERSION),
                ("identity", identity),
                ("boot", self.boot),
                ("next_seq", self._next_seq),
            ],
        )
        db.execute("COMMIT")
        self._topics: dict[str, int] = {t: i for i, t in db.execute("SELECT id, topic FROM topics")}
        self._topic_names: dict[int, str] = {i: t for t, i in self._topics.items()}
        depth, size = db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM messages"
        ).fetchone()
        self._depth, self._bytes = int(depth), int(size)
        self._events = int(db.execute("SELECT count(*) FROM events").fetchone()[0])
        # Everything found at open is backlog: this process sent none of it.
        self._inflight: dict[int, int] = {}  # seq -> sent_ms, in send order
        self._hist_inflight: set[int] = set()
        # Every seq <= _cursor is in flight, acknowledged or dropped: the replay scans above it.
        self._cursor = -1
        self._events_sent: set[int] = set()
        self.dropped = 0
        self._last_dropped = -1
        self.dropped_bytes = 0
        self.events_dropped = 0
        self._dropping = False
        self._latencies: deque[float] = deque(maxlen=100_000)
        self._next_expiry_ms = 0
        self.recovered = self._depth  # messages found at open, for the start-up log

    # -- telemetry ----------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The sequence number the next telemetry message must carry."""
        return self._next_seq

    def add(self, messages: Sequence[tuple[int, str, bytes]], now_ms: int, *, online: bool) -> list[Outgoing]:
        """Store ``(seq, topic, payload)`` messages, numbered from ``next_seq`` without gaps;
        return those to publish live now (all of them when ``online``, else none)."""
        if not messages:
            return []
        seq0 = self._next_seq
        rows = []
        size = 0
        for i, (seq, topic, payload) in enumerate(messages):
            if seq != seq0 + i:
                raise EdgeError(
                    f"outbox: message numbered {seq}, expected {seq0 + i} (numbers must not skip)"
                )
            if not payload.endswith(b"}"):
                raise EdgeError(f"outbox: message {seq} is not a JSON object")
            rows.append((seq, now_ms, self._topic_id(topic), payload))
            size += len(payload)
        last = seq0 + len(messages) - 1
        try:
            db = self._db
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO messages (seq, queued_ms, topic_id, payload) VALUES (?, ?, ?, ?)", rows
            )
            db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (last + 1,))
            db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise EdgeError(f"outbox {self.path}: cannot store {len(rows)} message(s): {e}") from None
        self._next_seq = last + 1
        self._depth += len(rows)
        self._bytes += size
        self._enforce_size()
        if not online:
            return []
        out = []
        for seq, topic, payload in messages:
            if seq <= self._last_dropped:
                continue  # a bound smaller than one round dropped it already: nothing to send
            self._inflight[seq] = now_ms
            out.append(Outgoing(seq, topic, payload, historical=False))
        if self._cursor == seq0 - 1:  # no backlog below these: the replay need not scan them
            self._cursor = last
        return out

    def take_replay(self, now_ms: int, limit: int | None = None) -> list[Outgoing]:
        """Backlog messages to send now, oldest first, marked historical; within the window
        and at most ``limit`` (the room the caller's client has)."""
        budget = min(self.limits.replay_batch, self.limits.replay_window - len(self._hist_inflight))
        if limit is not None:
            budget = min(budget, limit)
        out: list[Outgoing] = []
        if budget <= 0 or self._depth <= len(self._inflight):
            return out
        while budget > 0:
            rows = self._db.execute(
                "SELECT seq, topic_id, payload FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._cursor, budget + 64),
            ).fetchall()
            if not rows:
                break
            for seq, topic_id, payload in rows:
                self._cursor = seq
                if seq in self._inflight:
                    continue
                self._inflight[seq] = now_ms
                self._hist_inflight.add(seq)
                out.append(
                    Outgoing(seq, self._topic_names[topic_id], payload[:-1] + _HISTORICAL_SUFFIX, True)
                )
                budget -= 1
                if budget == 0:
                    break
        return out

    def acked(self, ranges: Iterable[tuple[int, int]], now_ms: int) -> int:
        """Delete the messages ingest stored; return how many were still held."""
        removed = 0
        try:
            db = self._db
            db.execute("BEGIN")
            for lo, top in ranges:
                hi = min(top, self._next_seq - 1)
                if lo > hi:
                    continue
                for seq, size, queued_ms in db.execute(
                    "DELETE FROM messages WHERE seq BETWEEN ? AND ? "
                    "RETURNING seq, length(payload), queued_ms",
                    (lo, hi),
                ).fetchall():
                    removed += 1
                    self._bytes -= size
                    if self._inflight.pop(seq, None) is not None and seq not in self._hist_inflight:
                        self._latencies.append(max(0, now_ms - queued_ms) / 1000.0)
                    self._hist_inflight.discard(seq)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise EdgeError(f"outbox {self.path}: cannot apply an acknowledgement: {e}") from None
        self._depth -= removed
        return removed

    def send_failed(self, seq: int) -> None:
        """The client refused a message handed to it: back to the backlog."""
        self._requeue((seq,))

    def disconnected(self) -> int:
        """The connection dropped: whatever was in flight may be lost with the broker; resend it."""
        n = len(self._inflight)
        self._requeue(list(self._inflight))
        self._events_sent.clear()
        return n

    def expire(self, now_ms: int) -> None:
        """Resend what waited too long for an ack; drop what is older than ``max_age_s``.
        Cheap to call every tick: it does its work at most once a second."""
        if now_ms < self._next_expiry_ms:
            return
        self._next_expiry_ms = now_ms + 1000
        cutoff = now_ms - int(self.limits.resend_after_s * 1000)
        late = []
        for seq, sent_ms in self._inflight.items():  # in send order: stop at the first recent one
            if sent_ms > cutoff:
                break
            late.append(seq)
        if late:
            log.info(
                "outbox: %d message(s) not acknowledged within %.0f s, sending them again",
                len(late),
                self.limits.resend_after_s,
            )
            self._requeue(late)
        oldest = self.oldest_queued_ms()
        limit_ms = now_ms - int(self.limits.max_age_s * 1000)
        if oldest is not None and oldest < limit_ms:
            self._drop(
                "SELECT seq, length(payload) FROM messages WHERE queued_ms < ? ORDER BY seq",
                (limit_ms,),
                "older than max_age_s",
            )

    def oldest_queued_ms(self) -> int | None:
        row = self._db.execute("SELECT queued_ms FROM messages ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def take_latencies(self) -> list[float]:
        """Queue-to-ack seconds of live messages acknowledged since the last call."""
        out = list(self._latencies)
        self._latencies.clear()
        return out

    def has_backlog(self) -> bool:
        return bool(self._depth > len(self._inflight))

    def can_replay(self) -> bool:
        """True if there is backlog and room in the replay window."""
        return self.has_backlog() and len(self._hist_inflight) < self.limits.replay_window

    # -- events -------------------------------------------------------------------------

    def add_event(self, topic: str, payload: bytes, now_ms: int) -> int:
        """Store an event until the broker acknowledges it; return its id."""
        try:
            db = self._db
            db.execute("BEGIN")
            cur = db.execute(
                "INSERT INTO events (queued_ms, topic_id, payload) VALUES (?, ?, ?)",
                (now_ms, self._topic_id(topic), payload),
            )
            db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise EdgeError(f"outbox {self.path}: cannot store an event: {e}") from None
        self._events += 1
        event_id = int(cur.lastrowid or 0)
        if self._events > self.limits.max_events:
            dropped = self._db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?) RETURNING id",
                (self._events - self.limits.max_events,),
            ).fetchall()
            self._events -= len(dropped)
            self.events_dropped += len(dropped)
            log.error("outbox: %d event(s) dropped, over max_events %d", len(dropped), self.limits.max_events)
        return event_id

    def events_to_send(self) -> list[tuple[int, str, bytes]]:
        """Stored events not handed to the client on this connection yet, oldest first."""
        if len(self._events_sent) >= self._events:
            return []
        out = []
        for event_id, topic_id, payload in self._db.execute(
            "SELECT id, topic_id, payload FROM events ORDER BY id"
        ):
            if event_id not in self._events_sent:
                self._events_sent.add(event_id)
                out.append((int(event_id), self._topic_names[topic_id], bytes(payload)))
        return out

    def event_send_failed(self, event_id: int) -> None:
        """The client refused an event: offer it again with the next ``events_to_send``."""
        self._events_sent.discard(event_id)

    def event_delivered(self, event_id: int) -> None:
        """The broker acknowledged an event: it is no longer ours to keep."""
        deleted = self._db.execute("DELETE FROM events WHERE id = ?", (event_id,)).rowcount
        self._events -= deleted
        self._events_sent.discard(event_id)

    # -- bookkeeping ----------------------------------------------------------------------

    def stats(self) -> OutboxStats:
        return OutboxStats(
            depth=self._depth,
            bytes=self._bytes,
            in_flight=len(self._inflight),
            backlog=self._depth - len(self._inflight),
            oldest_queued_ms=self.oldest_queued_ms(),
            dropped=self.dropped,
            dropped_bytes=self.dropped_bytes,
            events_pending=self._events,
            events_dropped=self.events_dropped,
            next_seq=self._next_seq,
        )

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error as e:
            log.warning("outbox %s: close failed: %s", self.path, e)

    def _topic_id(self, topic: str) -> int:
        topic_id = self._topics.get(topic)
        if topic_id is None:
            # Autocommit: a topic row is harmless on its own if the messages' transaction fails.
            topic_id = int(
                self._db.execute("INSERT INTO topics (topic) VALUES (?) RETURNING id", (topic,)).fetchone()[0]
            )
            self._topics[topic] = topic_id
            self._topic_names[topic_id] = topic
        return topic_id

    def _requeue(self, seqs: Iterable[int]) -> None:
        low = None
        for seq in seqs:
            if self._inflight.pop(seq, None) is not None:
                self._hist_inflight.discard(seq)
                low = seq if low is None else min(low, seq)
        if low is not None:
            self._cursor = min(self._cursor, low - 1)

    def _enforce_size(self) -> None:
        over_n = self._depth - self.limits.max_messages
        over_b = self._bytes - self.limits.max_bytes
        if over_n <= 0 and over_b <= 0:
            if self._dropping:
                self._dropping = False
                log.info("outbox: back under its bounds; %d message(s) dropped since start", self.dropped)
            return
        # Oldest first: walk from the lowest seq until both bounds hold again.
        b = 0
        last = None
        rows = self._db.execute("SELECT seq, length(payload) FROM messages ORDER BY seq")
        for n, (seq, size) in enumerate(rows):
            if n >= over_n and b >= over_b:
                break
            b += size
            last = seq
        if last is not None:
            self._drop(
                "SELECT seq, length(payload) FROM messages WHERE seq <= ? ORDER BY seq",
                (last,),
                "over max_messages/max_bytes",
            )

    def _drop(self, select: str, args: tuple[int, ...], why: str) -> None:
        rows = self._db.execute(select, args).fetchall()
        if not rows:
            return
        try:
            self._db.execute("BEGIN")
            self._db.execute(
                f"DELETE FROM messages WHERE seq IN ({select.replace('seq, length(payload)', 'seq')})", args
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise EdgeError(f"outbox {self.path}: cannot drop old messages: {e}") from None
        size = sum(r[1] for r in rows)
        self._depth -= len(rows)
        self._bytes -= size
        self.dropped += len(rows)
        self._last_dropped = max(self._last_dropped, rows[-1][0])
        self.dropped_bytes += size
        for seq, _ in rows:  # gone: nothing to resend, whatever its state was
            self._inflight.pop(seq, None)
            self._hist_inflight.discard(seq)
        if not self._dropping:
            self._dropping = True
            log.error(
                "outbox: dropping the oldest messages (%s): %d so far, messages %d..%d now; "
                "counted in the agent's health (dropped)",
                why,
                self.dropped,
                rows[0][0],
                rows[-1][0],
            )

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")


__all__ = ["Outbox", "OutboxLimits", "OutboxStats", "Outgoing"]
