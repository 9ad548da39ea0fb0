"""The Store in one SQLite file: what runs when no InfluxDB is configured (the demo, a laptop).

Tables (STRICT, so a value is stored exactly as the type it was given):

    series(id, site, device, metric, unit)         one row per metric of a device; lists metrics()
    readings(series_id, ts_ms, value, quality)     WITHOUT ROWID, primary key (series_id, ts_ms)
    devices(site, device, agent, last_seen_ms)     primary key (site, device)
    agent_status(site, agent, state, ts_ms, boot, reason)
    dead_letters(id, received_ms, topic, payload, reason, code, replayed_ms)
    agent_health(site, agent, ts_ms, payload)      the latest wire.agent.AgentHealth, as JSON
    ingest_accounting(worker, site, agent, ts_ms, payload)   the latest AgentTally, as JSON

Schema 2 added ``dead_letters.code`` and ``replayed_ms`` (columns added in place to a
schema-1 file on open; old letters get code ""). Schema 3 added ``agent_health`` and ``ingest_accounting``.

Invariants:
- a reading is identified by (site, device, metric, ts_ms): ``INSERT OR REPLACE`` makes a
  redelivered reading replace itself, quality included;
- ``value`` is REAL for numbers, INTEGER 0/1 for booleans, TEXT for strings; ``series``
  aggregates only REAL values; ``quality`` is NULL for "good" (most readings);
- a batch is one transaction: ``write`` returns after COMMIT, or raises StoreError and
  nothing of the batch is stored. The file is in WAL mode with ``synchronous=FULL``: the WAL
  is synced at every commit, so a returned write survives a power cut as well as a process
  crash. NORMAL would survive only a process crash, and buys nothing here: with one commit
  per batch the sync is one fsync per batch (measured with 5,000-reading batches: about
  440,000 readings/s either way);
- one writer connection behind a lock (SQLite has one writer anyway); each reading thread
  gets its own connection, and WAL lets those read while a batch is being written, so the
  API never waits for ingest;
- ``devices.last_seen_ms`` only grows; ``agent_status`` keeps the status with the greatest
  ``ts_ms`` (the later write on a tie, as InfluxDB's same-time overwrite does);
- readings after 2262-04-11 are refused as InfluxDB refuses them (the wire contract admits edge
  clocks up to 2286), so a device with a wrong clock is dead-lettered whichever store runs;
- dead-letter payloads are kept as bytes, up to MAX_PAYLOAD_BYTES (a longer one keeps its
  start, and its reason says so), as in the InfluxDB store.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import msgspec

from ingest.store.base import (
    AgentHealthRecord,
    AgentState,
    AgentTally,
    Bucket,
    DeadLetter,
    DeviceSeen,
    RawReading,
    StoreError,
)
from ingest.store.lineproto import MAX_INFLUX_TS_MS
from wire import Status, StatusTopic, Telemetry, TelemetryTopic, encode
from wire.agent import AgentHealth, decode_health
from wire.payloads import MAX_PAYLOAD_BYTES
from wire.topics import HealthTopic

SCHEMA_VERSION: Final = 3
_TALLY_DECODER: Final = msgspec.json.Decoder(AgentTally)
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS series (
  id INTEGER PRIMARY KEY,
  site TEXT NOT NULL,
  device TEXT NOT NULL,
  metric TEXT NOT NULL,
  unit TEXT,
  UNIQUE (site, device, metric)
) STRICT;
CREATE TABLE IF NOT EXISTS readings (
  series_id INTEGER NOT NULL,
  ts_ms INTEGER NOT NULL,
  value ANY NOT NULL,
  quality TEXT,
  PRIMARY KEY (series_id, ts_ms)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
  site TEXT NOT NULL,
  device TEXT NOT NULL,
  agent TEXT NOT NULL,
  last_seen_ms INTEGER NOT NULL,
  PRIMARY KEY (site, device)
) STRICT;
CREATE TABLE IF NOT EXISTS agent_status (
  site TEXT NOT NULL,
  agent TEXT NOT NULL,
  state TEXT NOT NULL,
  ts_ms INTEGER NOT NULL,
  boot INTEGER NOT NULL,
  reason TEXT NOT NULL,
  PRIMARY KEY (site, agent)
) STRICT;
CREATE TABLE IF NOT EXISTS dead_letters (
  id INTEGER PRIMARY KEY,
  received_ms INTEGER NOT NULL,
  topic TEXT NOT NULL,
  payload BLOB NOT NULL,
  reason TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters (received_ms, id);
CREATE TABLE IF NOT EXISTS agent_health (
  site TEXT NOT NULL,
  agent TEXT NOT NULL,
  ts_ms INTEGER NOT NULL,
  payload BLOB NOT NULL,
  PRIMARY KEY (site, agent)
) STRICT;
CREATE TABLE IF NOT EXISTS ingest_accounting (
  worker TEXT NOT NULL,
  site TEXT NOT NULL,
  agent TEXT NOT NULL,
  ts_ms INTEGER NOT NULL,
  payload BLOB NOT NULL,
  PRIMARY KEY (worker, site, agent)
) STRICT;
"""

_INSERT_READING: Final = (
    "INSERT OR REPLACE INTO readings (series_id, ts_ms, value, quality) VALUES (?, ?, ?, ?)"
)
_UPSERT_DEVICE: Final = """
INSERT INTO devices (site, device, agent, last_seen_ms) VALUES (?, ?, ?, ?)
ON CONFLICT (site, device) DO UPDATE SET
  agent = excluded.agent,
  last_seen_ms = max(devices.last_seen_ms, excluded.last_seen_ms)
"""
_UPSERT_STATUS: Final = """
INSERT INTO agent_status (site, agent, state, ts_ms, boot, reason) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (site, agent) DO UPDATE SET
  state = excluded.state, ts_ms = excluded.ts_ms, boot = excluded.boot, reason = excluded.reason
WHERE excluded.ts_ms >= agent_status.ts_ms
"""
_UPSERT_HEALTH: Final = """
INSERT INTO agent_health (site, agent, ts_ms, payload) VALUES (?, ?, ?, ?)
ON CONFLICT (site, agent) DO UPDATE SET ts_ms = excluded.ts_ms, payload = excluded.payload
WHERE excluded.ts_ms >= agent_health.ts_ms
"""
_UPSERT_TALLY: Final = """
INSERT INTO ingest_accounting (worker, site, agent, ts_ms, payload) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (worker, site, agent) DO UPDATE SET ts_ms = excluded.ts_ms, payload = excluded.payload
WHERE excluded.ts_ms >= ingest_accounting.ts_ms
"""
_SERIES: Final = """
SELECT (r.ts_ms / :step) * :step AS bucket, avg(r.value), min(r.value), max(r.value), count(*)
FROM readings AS r JOIN series AS s ON s.id = r.series_id
WHERE s.site = :site AND s.device = :device AND s.metric = :metric
  AND r.ts_ms >= :start AND r.ts_ms < :end AND typeof(r.value) = 'real'
GROUP BY bucket ORDER BY bucket
"""
_READINGS: Final = """
SELECT r.ts_ms, r.value, r.quality
FROM readings AS r JOIN series AS s ON s.id = r.series_id
WHERE s.site = ? AND s.device = ? AND s.metric = ? AND r.ts_ms >= ? AND r.ts_ms < ?
ORDER BY r.ts_ms LIMIT ?
"""


def _error(action: str, path: Path, e: sqlite3.Error) -> StoreError:
    # "database is locked", a full disk, an I/O error: the same write may pass later.
    # Anything else (a corrupt file, a constraint) will not.
    retryable = isinstance(e, sqlite3.OperationalError)
    return StoreError(f"embedded store {path}: {action} failed: {e}", retryable=retryable)


class EmbeddedStore:
    """The Store in a SQLite file at ``path`` (created with its folder if missing)."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.RLock()  # the writer connection and the series cache
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        # (site, device) -> metric -> (series id, unit); filled as series are met, so a
        # batch resolves its series ids with dictionary look-ups, not queries.
        self._series_ids: dict[tuple[str, str], dict[str, tuple[int, str | None]]] = {}
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
            version = int(self._writer.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"embedded store {self._path} has schema {version}, newer than this Vigil's "
                    f"{SCHEMA_VERSION}: upgrade Vigil or point it at another file",
                    retryable=False,
                )
            mode = self._writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"embedded store {self._path}: cannot use WAL mode (got {mode})",
                                 retryable=False)
            self._writer.executescript(SCHEMA)
            columns = {row[1] for row in self._writer.execute("PRAGMA table_info(dead_letters)")}
            if "code" not in columns:
                self._writer.execute("ALTER TABLE dead_letters ADD COLUMN code TEXT NOT NULL DEFAULT ''")
            if "replayed_ms" not in columns:
                self._writer.execute("ALTER TABLE dead_letters ADD COLUMN replayed_ms INTEGER")
            self._writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as e:
            self._close_writer()
            error = _error("opening", self._path, e)
            # Only another process holding the file passes; a path that cannot be opened
            # (a folder, no permission, not a database) is a setting to fix.
            error.retryable = "locked" in str(e) or "busy" in str(e)
            raise error from None
        except StoreError:
            self._close_writer()
            raise
        except OSError as e:
            raise StoreError(f"embedded store {self._path}: cannot create its folder: {e}",
                             retryable=False) from None

    def _close_writer(self) -> None:
        writer: sqlite3.Connection | None = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode (isolation_level=None): transactions are begun and ended here,
        # explicitly. check_same_thread=False only so close() may close every connection.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError(f"embedded store {self._path} is closed", retryable=False)
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            with self._lock:
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"embedded store {self._path} is closed", retryable=False)
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # SQLite may have rolled back already (a full disk)
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise _error(action, self._path, e) from None

    # -- writes ------------------------------------------------------------------------------

    def write(self, batch: Sequence[tuple[TelemetryTopic, Telemetry]]) -> None:
        if not batch:
            return
        with self._lock:
            with self._transaction(f"writing {len(batch)} messages") as conn:
                rows: list[tuple[int, int, float | bool | str, str | None]] = []
                devices: dict[tuple[str, str], tuple[str, int]] = {}
                # Series met for the first time in this batch are only cached after COMMIT,
                # so a rolled-back batch leaves no id in the cache that the file lacks.
                new_ids: dict[tuple[str, str], dict[str, tuple[int, str | None]]] = {}
                append = rows.append
                for topic, message in batch:
                    key = (topic.site, topic.device)
                    known = self._series_ids.get(key, {})
                    fresh = new_ids.setdefault(key, {})
                    newest = 0
                    for r in message.readings:
                        entry = fresh.get(r.metric) or known.get(r.metric)
                        if entry is None or (r.unit is not None and r.unit != entry[1]):
                            entry = self._series(conn, key, r.metric, r.unit, entry)
                            fresh[r.metric] = entry
                        value = r.value
                        if type(value) is int:  # a Reading built in code; numbers are floats
                            value = float(value)
                        append((entry[0], r.ts_ms, value, None if r.quality == "good" else r.quality))
                        newest = max(newest, r.ts_ms)
                    if newest > MAX_INFLUX_TS_MS:
                        raise StoreError(
                            f"telemetry on {topic.format()} cannot be stored: ts_ms {newest} is after "
                            f"{MAX_INFLUX_TS_MS} (2262-04-11): the device's clock is wrong",
                            retryable=False,
                        )
                    if newest:
                        before = devices.get(key)
                        devices[key] = (topic.agent, newest if before is None else max(newest, before[1]))
                conn.executemany(_INSERT_READING, rows)
                conn.executemany(_UPSERT_DEVICE, [(*key, agent, ts) for key, (agent, ts) in devices.items()])
            # After COMMIT (the end of the block above) and still under the lock.
            for key, entries in new_ids.items():
                if entries:
                    self._series_ids.setdefault(key, {}).update(entries)

    @staticmethod
    def _series(
        conn: sqlite3.Connection,
        key: tuple[str, str],
        metric: str,
        unit: str | None,
        entry: tuple[int, str | None] | None,
    ) -> tuple[int, str | None]:
        """The series id of a metric, creating the series or recording its new unit."""
        site, device = key
        if entry is not None:  # a known series whose unit changed
            conn.execute("UPDATE series SET unit = ? WHERE id = ?", (unit, entry[0]))
            return entry[0], unit
        row = conn.execute(
            "INSERT INTO series (site, device, metric, unit) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (site, device, metric) DO UPDATE SET unit = coalesce(excluded.unit, series.unit) "
            "RETURNING id, unit",
            (site, device, metric, unit),
        ).fetchone()
        return int(row[0]), row[1]

    def write_status(self, topic: StatusTopic, status: Status) -> None:
        with self._transaction(f"writing the status of {topic.format()}") as conn:
            conn.execute(_UPSERT_STATUS, (topic.site, topic.agent, status.state, status.ts_ms, status.boot,
                                          status.reason))

    def write_health(self, topic: HealthTopic, health: AgentHealth) -> None:
        with self._transaction(f"writing the health of {topic.format()}") as conn:
            conn.execute(_UPSERT_HEALTH, (topic.site, topic.agent, health.ts_ms, encode(health)))

    def write_accounting(self, tallies: Sequence[AgentTally]) -> None:
        if not tallies:
            return
        rows = [(t.worker, t.site, t.agent, t.ts_ms, msgspec.json.encode(t)) for t in tallies]
        with self._transaction(f"writing {len(rows)} accounting rows") as conn:
            conn.executemany(_UPSERT_TALLY, rows)

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        rows = []
        for letter in letters:
            payload, reason = letter.payload, letter.reason
            if len(payload) > MAX_PAYLOAD_BYTES:
                reason += f" (payload truncated: first {MAX_PAYLOAD_BYTES} of {len(payload)} bytes kept)"
                payload = payload[:MAX_PAYLOAD_BYTES]
            rows.append((letter.received_ms, letter.topic, bytes(payload), reason, letter.code))
        with self._transaction(f"writing {len(rows)} dead letters") as conn:
            conn.executemany(
                "INSERT INTO dead_letters (received_ms, topic, payload, reason, code) VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    def mark_replayed(self, ids: Sequence[str], replayed_ms: int) -> None:
        try:
            keys = [(replayed_ms, int(i)) for i in ids]
        except ValueError:
            raise StoreError(f"dead-letter ids of the embedded store are integers, got {list(ids)[:5]}",
                             retryable=False) from None
        with self._transaction(f"marking {len(keys)} dead letters replayed") as conn:
            conn.executemany("UPDATE dead_letters SET replayed_ms = ? WHERE id = ?", keys)

    # -- reads -------------------------------------------------------------------------------

    def _fetch(self, action: str, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise _error(action, self._path, e) from None

    def devices(self) -> list[DeviceSeen]:
        rows = self._fetch("listing devices",
                           "SELECT site, device, agent, last_seen_ms FROM devices ORDER BY site, device")
        return [DeviceSeen(site=str(s), device=str(d), agent=str(a), last_seen_ms=int(ts))
                for s, d, a, ts in rows]

    def agents(self) -> list[AgentState]:
        rows = self._fetch(
            "listing agents",
            "SELECT site, agent, state, ts_ms, boot, reason FROM agent_status ORDER BY site, agent",
        )
        return [
            AgentState(site=str(s), agent=str(a), state=str(st), ts_ms=int(ts), boot=int(b), reason=str(r))
            for s, a, st, ts, b, r in rows
        ]

    def agent_health(self) -> list[AgentHealthRecord]:
        rows = self._fetch("listing agent health",
                           "SELECT site, agent, payload FROM agent_health ORDER BY site, agent")
        return [AgentHealthRecord(site=str(s), agent=str(a), health=decode_health(bytes(p)))
                for s, a, p in rows]

    def accounting(self) -> list[AgentTally]:
        rows = self._fetch("listing ingest accounting",
                           "SELECT payload FROM ingest_accounting ORDER BY site, agent, worker")
        return [_TALLY_DECODER.decode(bytes(p)) for (p,) in rows]

    def metrics(self, site: str, device: str) -> list[str]:
        rows = self._fetch("listing metrics", "SELECT metric FROM series WHERE site = ? AND device = ?",
                           (site, device))
        return sorted(str(m) for (m,) in rows)

    def series(
        self, site: str, device: str, metric: str, start_ms: int, end_ms: int, step_ms: int
    ) -> list[Bucket]:
        if step_ms <= 0:
            raise ValueError(f"step_ms must be positive, got {step_ms}")
        if end_ms <= start_ms:
            return []
        params: dict[str, object] = {"step": int(step_ms), "site": site, "device": device, "metric": metric,
                                     "start": int(start_ms), "end": int(end_ms)}
        rows = self._fetch("aggregating a series", _SERIES, params)
        return [Bucket(ts_ms=int(b), mean=float(mean), min=float(lo), max=float(hi), count=int(n))
                for b, mean, lo, hi, n in rows]

    def readings(
        self, site: str, device: str, metric: str, start_ms: int, end_ms: int, limit: int
    ) -> list[RawReading]:
        if limit <= 0 or end_ms <= start_ms:
            return []  # SQLite reads a negative LIMIT as "no limit"
        rows = self._fetch("reading a series", _READINGS, (site, device, metric, start_ms, end_ms, limit))
        found = []
        for ts, value, quality in rows:
            # Booleans come back from SQLite as the integers 0 and 1.
            typed = bool(value) if type(value) is int else value
            found.append(RawReading(ts_ms=int(ts), value=typed, quality=str(quality or "good")))
        return found

    def dead_letters(
        self, limit: int, *, code: str | None = None, topic_prefix: str | None = None
    ) -> list[DeadLetter]:
        if limit <= 0:
            return []
        where: list[str] = []
        params: list[object] = []
        if code is not None:
            where.append("code = ?")
            params.append(code)
        if topic_prefix:
            # substr, not LIKE: a prefix may hold % or _ and must match literally.
            where.append("substr(topic, 1, ?) = ?")
            params += [len(topic_prefix), topic_prefix]
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._fetch(
            "listing dead letters",
            f"SELECT received_ms, topic, payload, reason, code, id, replayed_ms FROM dead_letters {clause}"
            "ORDER BY received_ms DESC, id DESC LIMIT ?",
            (*params, limit),
        )
        return [DeadLetter(received_ms=int(ts), topic=str(t), payload=bytes(p), reason=str(r), code=str(c),
                           id=str(i), replayed_ms=None if rp is None else int(rp))
                for ts, t, p, r, c, i, rp in rows]

    def ping(self) -> None:
        self._fetch("checking the file", "SELECT count(*) FROM series")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for conn in [*self._readers, self._writer]:
                conn.close()
            self._readers.clear()
