"""The Store on InfluxDB: line protocol to ``/api/v2/write``, InfluxQL over ``/query`` (never Flux).

Schema (one database = the configured bucket):

    <metric>             tags device, site[, unit]   fields value (float) | value_bool | value_text,
                                                     [quality (string, only when not "good")]
                                                     time = reading ts_ms
    _vigil_device        tags device, site           fields agent, last_seen_ms (int)
                                                     time = start of the UTC day of the write
    _vigil_agent_status  tags agent, site            fields state, boot (int), reason
                                                     time = status ts_ms
    _vigil_agent_health  tags agent, site            fields payload (wire.agent.AgentHealth as JSON)
                                                     time = the report's ts_ms
    _vigil_ingest_accounting  tags agent, site, worker  fields payload (ingest.store.AgentTally as JSON)
                                                     time = start of the UTC day of the write
    _vigil_dead_letter   no tags                     fields code, topic, reason, and payload (UTF-8
                                                     text) or payload_b64 (base64, when not UTF-8);
                                                     replayed_ms (int) merged in when replayed
                                                     time = received_ms in ns plus a sub-ms counter

Why this shape:
- a metric is a measurement, so a chart reads one small measurement; ``_vigil_`` names
  cannot collide because metric names must start with a letter (wire.payloads);
- the value's field name carries its type (lineproto): no "field type conflict" partial
  writes when two devices report one metric name with different types, and ``series``
  aggregates ``value`` alone, so it never meets a string or a boolean;
- one ``_vigil_device`` point per device per day keeps "devices seen" to a few points a
  device, however often it reports; ``devices()`` takes ``max(last_seen_ms)`` over them and
  the agent of the newest. Within a day the point is overwritten on each write, so the
  value written is the maximum of the batch and of what this store already knows (seeded
  from today's points at the first write): an older batch delivered late never moves it back;
- dead-letter payloads are stored exactly: as text when they are UTF-8 (most are JSON a
  person wants to read), else base64; never ``backslashreplace``, which cannot be undone.
  Letters of the same millisecond get distinct nanoseconds so none overwrites another.

Invariants:
- a reading lands on the point (metric, site, device[, unit], ts_ms): a redelivered
  reading replaces itself. Caveats of InfluxDB's merge of same-time points: rewriting a
  reading with a different unit makes a second point (another series), and one rewritten
  with quality "good" after "bad" keeps the old quality field;
- every failure is ``StoreError`` with the HTTP ``status``: 401/403/404 (credentials, no
  bucket: a setup fault), 408/429/5xx, timeouts and unreachable servers are retryable, with
  the server's ``Retry-After``; other 4xx (400 bad data, 413 too large, 422) are not, and
  carry the server's own message. A 400 that names the line it could not parse (1.x's
  ``unable to parse '<line>'``) also says which reading that was (``offending``), so ingest
  dead-letters that reading alone. influxdb-client's retries are off: ingest owns backing off;
- the database is created on open with ``CREATE DATABASE`` (idempotent on 1.x). A server
  that cannot be reached at open does not fail the open: creation is tried again before the
  next operation, whose failure is then retryable. A refusal (2.x/3.x do not create buckets
  that way, or the user is not an admin) is tolerated, except 401: bad credentials fail
  the open;
- every identifier and string in InfluxQL is quoted and escaped here, although ids are
  restricted by the wire contract.
"""

from __future__ import annotations

import base64
import itertools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import httpx
import msgspec
import urllib3
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from ingest.store import StoreSettings, lineproto
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
from wire import Status, StatusTopic, Telemetry, TelemetryTopic, encode
from wire.agent import AgentHealth, decode_health
from wire.payloads import MAX_PAYLOAD_BYTES
from wire.topics import HealthTopic

log = logging.getLogger(__name__)

DAY_MS: Final = 86_400_000
INTERNAL_PREFIX: Final = "_vigil_"
_TALLY_DECODER: Final = msgspec.json.Decoder(AgentTally)


# -- InfluxQL quoting ---------------------------------------------------------------------------
# InfluxQL's scanner reads the same escapes in quoted identifiers and string literals:
# \\ \" \' and \n; a raw newline ends the statement with an error.


def _escape(text: str, quote: str) -> str:
    return text.replace("\\", "\\\\").replace(quote, "\\" + quote).replace("\n", "\\n")


def ident(name: str) -> str:
    """A double-quoted InfluxQL identifier."""
    return '"' + _escape(name, '"') + '"'


def literal(text: str) -> str:
    """A single-quoted InfluxQL string literal."""
    return "'" + _escape(text, "'") + "'"


# -- /query replies ------------------------------------------------------------------------------


class _Series(msgspec.Struct):
    name: str = ""
    tags: dict[str, str] = {}
    columns: list[str] = []
    values: list[list[Any]] = []


class _Result(msgspec.Struct):
    series: list[_Series] = []
    error: str | None = None


class _Reply(msgspec.Struct):
    results: list[_Result] = []
    error: str | None = None


_REPLY: Final = msgspec.json.Decoder(_Reply)


def _rows(series: _Series) -> list[dict[str, Any]]:
    return [dict(zip(series.columns, row, strict=False)) for row in series.values]


def _retryable(status: int) -> bool:
    # Telegraf's split: overload and server faults pass; bad data will not. Credentials and
    # a missing bucket (401/403/404) are a setup fault, not the data's: retrying keeps the
    # data unacked with the broker until an operator fixes it, where dead-lettering it would
    # throw good readings aside (a 401 at open still stops the process at start).
    return status in (401, 403, 404, 408, 429) or status >= 500


_UNABLE_TO_PARSE: Final = re.compile(r"unable to parse '(.*?)': ", re.S)


def named_lines(message: str) -> list[str]:
    """The lines an InfluxDB 1.x refusal names (``unable to parse '<line>': <why>``), in order."""
    return _UNABLE_TO_PARSE.findall(message)


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds only; an HTTP date is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None


def _server_message(body: bytes | str | None) -> str:
    """The message in an InfluxDB error body: 1.x says {"error"}, 2.x/3.x {"message"}."""
    if not body:
        return "(empty reply)"
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "replace")
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        decoded = None
    if isinstance(decoded, dict):
        for key in ("error", "message"):
            if isinstance(decoded.get(key), str):
                return str(decoded[key])[:1000]
    return raw.decode("utf-8", "replace").strip()[:1000]


def _clip_payload(letter: DeadLetter) -> tuple[bytes, str]:
    """Keep at most MAX_PAYLOAD_BYTES of a payload (a person reads the start), saying so."""
    if len(letter.payload) <= MAX_PAYLOAD_BYTES:
        return letter.payload, letter.reason
    note = f" (payload truncated: first {MAX_PAYLOAD_BYTES} of {len(letter.payload)} bytes kept)"
    return letter.payload[:MAX_PAYLOAD_BYTES], letter.reason + note


class InfluxStore:
    """The Store on InfluxDB 1.8+/2.x/3.x (and 1.6 behind the nginx mapping of services.md)."""

    def __init__(self, settings: StoreSettings, *, clock: Callable[[], float] = time.time) -> None:
        if not settings.influx_url:
            raise StoreError("InfluxStore needs influx_url", retryable=False)
        self._url = settings.influx_url.rstrip("/")
        self._bucket = settings.influx_bucket
        self._clock = clock
        token = settings.influx_token.get_secret_value() if settings.influx_token else None
        headers = {"Authorization": f"Token {token}"} if token else {}
        options: dict[str, Any] = {"token": token} if token else {}
        self._client = InfluxDBClient(
            url=self._url,
            org=settings.influx_org,
            timeout=int(settings.timeout_s * 1000),
            retries=False,  # ingest owns retrying; a hidden retry would hold its writer thread
            **options,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._org = settings.influx_org
        self._http = httpx.Client(base_url=self._url, headers=headers, timeout=settings.timeout_s)
        # One writer at a time: the device cache must see writes in the order they land.
        self._write_lock = threading.Lock()
        self._last_seen: dict[tuple[str, str], int] = {}
        self._last_seen_day = -1  # the UTC day whose points seeded _last_seen
        # Sub-millisecond offsets for dead letters: a counter (next() is atomic under the GIL)
        # from a random start, so letters of one millisecond differ within and across processes.
        self._letter_seq = itertools.count(random.randrange(1_000_000))
        self._database_ready = False
        try:
            self._ensure_database()
        except StoreError as e:
            if not e.retryable:
                self.close()
                raise
            log.warning("InfluxDB not reachable at open; will create the database later: %s", e)

    # -- plumbing ----------------------------------------------------------------------------

    def _ensure_database(self) -> None:
        if self._database_ready:
            return
        try:
            r = self._http.post("/query", data={"q": f"CREATE DATABASE {ident(self._bucket)}"})
        except httpx.HTTPError as e:
            raise StoreError(f"InfluxDB at {self._url} unreachable: {e}", retryable=True) from None
        if r.status_code == 401:
            raise StoreError(
                f"InfluxDB at {self._url} refused the credentials (HTTP 401): "
                f"{_server_message(r.content)}; check influx_token",
                retryable=False,
            )
        if _retryable(r.status_code):
            raise StoreError(
                f"InfluxDB at {self._url} failed (HTTP {r.status_code}): {_server_message(r.content)}",
                retryable=True,
            )
        refusal = None if r.status_code == 200 else _server_message(r.content)
        if refusal is None:
            try:
                reply = _REPLY.decode(r.content)
            except msgspec.DecodeError:
                refusal = "the reply is not InfluxDB's JSON"
            else:
                refusal = reply.error or next((res.error for res in reply.results if res.error), None)
        if refusal is not None:
            # 2.x/3.x create buckets by their own APIs, and a non-admin 1.x user may not
            # create databases; writing will tell whether the bucket is really there.
            log.info("CREATE DATABASE %s refused (%s); assuming it exists", self._bucket, refusal)
        self._database_ready = True

    def _post(self, body: bytes, precision: str, what: str,
              owners: Sequence[tuple[int, int]] | None = None, lines: Sequence[str] = ()) -> None:
        try:
            # The library annotates the precision as its enum class, whose members are strings.
            self._write_api.write(bucket=self._bucket, org=self._org, record=body,
                                  write_precision=cast(WritePrecision, precision))
        except ApiException as e:
            status = int(e.status or 0)
            message = _server_message(e.body) if e.body else str(e.reason)
            hint = " (split the batch)" if status == 413 else ""
            if status == 404:  # the database went away: create it again before the retry
                self._database_ready = False
            offending: list[tuple[int, int]] = []
            if owners is not None and status in (400, 422):
                where = {line: i for i, line in enumerate(lines)}
                for named in named_lines(message):
                    i = where.get(named)
                    if i is not None and i < len(owners):
                        offending.append(owners[i])
            raise StoreError(
                f"InfluxDB at {self._url} refused {what} (HTTP {status}){hint}: {message}",
                # Status 0 is the library's wrapper of a TLS failure: the data was not refused.
                retryable=_retryable(status) or status == 0,
                status=status,
                retry_after_s=retry_after(getattr(e, "retry_after", None)),
                offending=offending,
            ) from None
        except (urllib3.exceptions.HTTPError, OSError, InfluxDBError) as e:
            raise StoreError(f"InfluxDB at {self._url} unreachable while writing {what}: {e}",
                             retryable=True) from None

    def _query(self, q: str, epoch: str = "ms") -> list[_Series]:
        """Run one InfluxQL statement; return its series (empty when nothing matched)."""
        self._ensure_database()
        try:
            r = self._http.get("/query", params={"db": self._bucket, "q": q, "epoch": epoch})
        except httpx.HTTPError as e:
            raise StoreError(f"InfluxDB at {self._url} unreachable while querying: {e}",
                             retryable=True) from None
        if r.status_code != 200:
            raise StoreError(
                f"InfluxDB at {self._url} refused the query (HTTP {r.status_code}): "
                f"{_server_message(r.content)}; query: {q}",
                retryable=_retryable(r.status_code),
                status=r.status_code,
                retry_after_s=retry_after(r.headers.get("Retry-After")),
            )
        try:
            reply = _REPLY.decode(r.content)
        except msgspec.DecodeError as e:
            raise StoreError(f"{self._url}/query did not answer InfluxDB's JSON: {e}",
                             retryable=False) from None
        error = reply.error or next((res.error for res in reply.results if res.error), None)
        if error is not None:
            raise StoreError(f"InfluxDB refused the query: {error}; query: {q}", retryable=False)
        return reply.results[0].series if reply.results else []

    @staticmethod
    def _time_range(start_ms: int, end_ms: int) -> str:
        return f"time >= {max(start_ms, 0)}ms AND time < {min(end_ms, lineproto.MAX_INFLUX_TS_MS + 1)}ms"

    def _where_series(self, site: str, device: str, start_ms: int, end_ms: int) -> str:
        return (f'WHERE "site" = {literal(site)} AND "device" = {literal(device)} '
                f"AND {self._time_range(start_ms, end_ms)}")

    # -- writes ------------------------------------------------------------------------------

    def write(self, batch: Sequence[tuple[TelemetryTopic, Telemetry]]) -> None:
        if not batch:
            return
        lines: list[str] = []
        owners: list[tuple[int, int]] = []  # line -> (message, reading), to name a refused reading
        newest: dict[tuple[str, str], tuple[str, int]] = {}
        for mi, (topic, message) in enumerate(batch):
            try:
                ts = lineproto.reading_lines(topic.site, topic.device, message.readings, lines)
            except ValueError as e:
                raise StoreError(f"telemetry on {topic.format()} cannot be stored: {e}",
                                 retryable=False, status=400) from None
            owners.extend((mi, ri) for ri in range(len(message.readings)))
            if not ts:
                continue  # no readings (only possible for a message built in code)
            key = (topic.site, topic.device)
            before = newest.get(key)
            newest[key] = (topic.agent, ts if before is None else max(ts, before[1]))
        if not lines:
            return
        with self._write_lock:
            self._ensure_database()
            day_start = int(self._clock() * 1000) // DAY_MS * DAY_MS
            if day_start // DAY_MS != self._last_seen_day:
                self._seed_last_seen(day_start)
            seen = {key: max(ts, self._last_seen.get(key, 0)) for key, (_, ts) in newest.items()}
            for (site, device), (agent, _) in newest.items():
                lines.append(lineproto.device_line(site, device, agent, seen[(site, device)], day_start))
            self._post("\n".join(lines).encode(), WritePrecision.MS, f"{len(lines)} lines", owners, lines)
            self._last_seen.update(seen)

    def _seed_last_seen(self, day_start: int) -> None:
        """What today's ``_vigil_device`` points already say, so a late, older batch never lowers them.

        Best effort: a refusal (a server whose InfluxQL lacks something) only costs that
        protection, so it is logged and the write goes on; an outage is raised as usual.
        """
        try:
            series = self._query(
                f'SELECT max("last_seen_ms") AS "last_seen_ms" FROM "{INTERNAL_PREFIX}device" '
                f'WHERE time >= {day_start}ms GROUP BY "site", "device"'
            )
        except StoreError as e:
            if e.retryable:
                raise
            log.warning("cannot read today's devices seen; writing without them: %s", e)
            series = []
        for s in series:
            for row in _rows(s):
                key = (s.tags.get("site", ""), s.tags.get("device", ""))
                self._last_seen[key] = max(int(row["last_seen_ms"]), self._last_seen.get(key, 0))
        self._last_seen_day = day_start // DAY_MS

    def write_status(self, topic: StatusTopic, status: Status) -> None:
        line = lineproto.status_line(topic.site, topic.agent, status.state, status.boot, status.reason,
                                     status.ts_ms)
        self._ensure_database()
        self._post(line.encode(), WritePrecision.MS, f"the status of {topic.format()}")

    def write_health(self, topic: HealthTopic, health: AgentHealth) -> None:
        line = lineproto.health_line(topic.site, topic.agent, encode(health).decode(), health.ts_ms)
        self._ensure_database()
        self._post(line.encode(), WritePrecision.MS, f"the health of {topic.format()}")

    def write_accounting(self, tallies: Sequence[AgentTally]) -> None:
        if not tallies:
            return
        # One point per worker and agent per day, overwritten at each write (as _vigil_device):
        # the API wants the latest account, not a history of them.
        day = max(t.ts_ms for t in tallies) // DAY_MS * DAY_MS
        lines = [lineproto.accounting_line(t.site, t.agent, t.worker, msgspec.json.encode(t).decode(), day)
                 for t in tallies]
        self._ensure_database()
        self._post("\n".join(lines).encode(), WritePrecision.MS, f"{len(lines)} accounting points")

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        lines = []
        for letter in letters:
            payload, reason = _clip_payload(letter)
            try:
                field, text = "payload", payload.decode("utf-8")
            except UnicodeDecodeError:
                field, text = "payload_b64", base64.b64encode(payload).decode("ascii")
            ts_ns = letter.received_ms * 1_000_000 + next(self._letter_seq) % 1_000_000
            lines.append(lineproto.dead_letter_line(letter.topic, field, text, reason, ts_ns, letter.code))
        self._ensure_database()
        self._post("\n".join(lines).encode(), WritePrecision.NS, f"{len(lines)} dead letters")

    # -- reads -------------------------------------------------------------------------------

    def devices(self) -> list[DeviceSeen]:
        series = self._query(
            f'SELECT last("agent") AS "agent", max("last_seen_ms") AS "last_seen_ms" '
            f'FROM "{INTERNAL_PREFIX}device" GROUP BY "site", "device"'
        )
        found = [
            DeviceSeen(site=s.tags.get("site", ""), device=s.tags.get("device", ""),
                       agent=str(row["agent"]), last_seen_ms=int(row["last_seen_ms"]))
            for s in series
            for row in _rows(s)
        ]
        return sorted(found, key=lambda d: (d.site, d.device))

    def agents(self) -> list[AgentState]:
        series = self._query(
            f'SELECT "state", "boot", "reason" FROM "{INTERNAL_PREFIX}agent_status" '
            f'GROUP BY "site", "agent" ORDER BY time DESC LIMIT 1'
        )
        found = [
            AgentState(site=s.tags.get("site", ""), agent=s.tags.get("agent", ""), state=str(row["state"]),
                       ts_ms=int(row["time"]), boot=int(row["boot"] or 0), reason=str(row["reason"] or ""))
            for s in series
            for row in _rows(s)
        ]
        return sorted(found, key=lambda a: (a.site, a.agent))

    def agent_health(self) -> list[AgentHealthRecord]:
        series = self._query(
            f'SELECT "payload" FROM "{INTERNAL_PREFIX}agent_health" '
            f'GROUP BY "site", "agent" ORDER BY time DESC LIMIT 1'
        )
        found = [
            AgentHealthRecord(site=s.tags.get("site", ""), agent=s.tags.get("agent", ""),
                              health=decode_health(str(row["payload"]).encode()))
            for s in series
            for row in _rows(s)
        ]
        return sorted(found, key=lambda a: (a.site, a.agent))

    def accounting(self) -> list[AgentTally]:
        series = self._query(
            f'SELECT "payload" FROM "{INTERNAL_PREFIX}ingest_accounting" '
            f'GROUP BY "site", "agent", "worker" ORDER BY time DESC LIMIT 1'
        )
        found = [_TALLY_DECODER.decode(str(row["payload"]).encode()) for s in series for row in _rows(s)]
        return sorted(found, key=lambda t: (t.site, t.agent, t.worker))

    def metrics(self, site: str, device: str) -> list[str]:
        series = self._query(
            f'SHOW MEASUREMENTS WHERE "site" = {literal(site)} AND "device" = {literal(device)}'
        )
        names = {str(row[0]) for s in series for row in s.values}
        return sorted(n for n in names if not n.startswith(INTERNAL_PREFIX))

    def series(
        self, site: str, device: str, metric: str, start_ms: int, end_ms: int, step_ms: int
    ) -> list[Bucket]:
        if step_ms <= 0:
            raise ValueError(f"step_ms must be positive, got {step_ms}")
        if end_ms <= start_ms:
            return []
        # GROUP BY time() buckets start at multiples of the step since the epoch (InfluxQL's
        # preset boundaries), as the embedded store's floor(ts/step)*step; fill(none) drops
        # the empty ones.
        series = self._query(
            f'SELECT mean("value"), min("value"), max("value"), count("value") FROM {ident(metric)} '
            f"{self._where_series(site, device, start_ms, end_ms)} GROUP BY time({step_ms}ms) fill(none)"
        )
        return [
            Bucket(ts_ms=int(row[0]), mean=float(row[1]), min=float(row[2]), max=float(row[3]),
                   count=int(row[4]))
            for s in series
            for row in s.values
            if row[4]
        ]

    def readings(
        self, site: str, device: str, metric: str, start_ms: int, end_ms: int, limit: int
    ) -> list[RawReading]:
        if limit <= 0 or end_ms <= start_ms:
            return []  # LIMIT 0 would mean "no limit" to InfluxQL
        series = self._query(
            f'SELECT "value", "value_bool", "value_text", "quality" FROM {ident(metric)} '
            f"{self._where_series(site, device, start_ms, end_ms)} ORDER BY time ASC LIMIT {int(limit)}"
        )
        found: list[RawReading] = []
        for s in series:
            for row in _rows(s):
                number, flag, text = row.get("value"), row.get("value_bool"), row.get("value_text")
                # JSON writes a float without a fraction as an integer: make it a float again.
                value: float | bool | str
                if number is not None:
                    value = float(number)
                elif flag is not None:
                    value = bool(flag)
                elif text is not None:
                    value = str(text)
                else:
                    continue
                quality = str(row.get("quality") or "good")
                found.append(RawReading(ts_ms=int(row["time"]), value=value, quality=quality))
        return found

    def dead_letters(
        self, limit: int, *, code: str | None = None, topic_prefix: str | None = None
    ) -> list[DeadLetter]:
        if limit <= 0:
            return []
        where = []
        if code is not None:
            where.append(f'"code" = {literal(code)}')
        if topic_prefix:
            # A regex anchored at the start, every character escaped: a prefix matches literally.
            pattern = re.escape(topic_prefix).replace("/", "\\/")
            where.append(f'"topic" =~ /^{pattern}/')
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        # Nanoseconds: the letter's id is its exact point time (letters of one millisecond
        # differ below it), which mark_replayed writes to again.
        series = self._query(
            f'SELECT "topic", "payload", "payload_b64", "reason", "code", "replayed_ms" '
            f'FROM "{INTERNAL_PREFIX}dead_letter" {clause}ORDER BY time DESC LIMIT {int(limit)}',
            epoch="ns",
        )
        found = []
        for s in series:
            for row in _rows(s):
                b64 = row.get("payload_b64")
                payload = base64.b64decode(b64) if b64 is not None else str(row.get("payload") or "").encode()
                ts_ns = int(row["time"])
                replayed = row.get("replayed_ms")
                found.append(DeadLetter(received_ms=ts_ns // 1_000_000, topic=str(row.get("topic") or ""),
                                        payload=payload, reason=str(row.get("reason") or ""),
                                        code=str(row.get("code") or ""), id=str(ts_ns),
                                        replayed_ms=None if replayed is None else int(replayed)))
        return found

    def mark_replayed(self, ids: Sequence[str], replayed_ms: int) -> None:
        if not ids:
            return
        try:
            # A point at the letter's own time with one more field: InfluxDB merges it in.
            lines = [f"{INTERNAL_PREFIX}dead_letter replayed_ms={int(replayed_ms)}i {int(i)}" for i in ids]
        except ValueError:
            raise StoreError(f"dead-letter ids of the InfluxDB store are integers, got {list(ids)[:5]}",
                             retryable=False) from None
        self._ensure_database()
        self._post("\n".join(lines).encode(), WritePrecision.NS, f"{len(lines)} replay marks")

    def ping(self) -> None:
        try:
            r = self._http.get("/ping")
        except httpx.HTTPError as e:
            raise StoreError(f"InfluxDB at {self._url} unreachable: {e}", retryable=True) from None
        if not r.is_success:
            raise StoreError(f"InfluxDB at {self._url}/ping answered HTTP {r.status_code}",
                             retryable=_retryable(r.status_code))

    def close(self) -> None:
        self._write_api.close()  # type: ignore[no-untyped-call]  # the library leaves it unannotated
        self._client.close()  # type: ignore[no-untyped-call]
        self._http.close()
