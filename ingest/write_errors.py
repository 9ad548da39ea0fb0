"""What ingest does when a store write fails, sorted as Telegraf's InfluxDB output sorts it.

``StoreError.retryable`` (set by the store adapter from the HTTP status) decides the way:

- retryable (429, 5xx, timeouts, refused connections, and 401/403): ``retry_until_written``
  retries without limit, backing off exponentially and at least the server's Retry-After;
  nothing unwritten is acked meanwhile, so the broker holds the backlog. 401/403 is also an
  alert: a critical log every ``auth_alert_interval_s`` (the data is kept, acks stop);
- not retryable (400/422 bad data, 413 too large): ``RefusalSorter`` keeps every reading the
  store takes and dead-letters exactly the ones it refuses.

No socket or thread here: the writer passes the store's ``write``, its clock, how to wait
(so that stopping can interrupt a wait) and where to report the store's state.

Invariants of the sorting:
- readings the server names (InfluxDB 1.x's "unable to parse '<line>'", mapped back to
  (message, reading) by the adapter) are dead-lettered at once with the server's reason,
  and the rest rewritten;
- when the server names none, the write is halved (messages, then one message's readings)
  until each refused part stands alone: one bad reading costs only itself, at the price of
  about 2·log2(n) writes;
- a retryable error while sorting propagates: the writer retries the whole batch later,
  which is safe because a rewritten reading replaces itself (the store's identity rule);
- every dead letter it makes has code ``store_refused`` and the server's message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from ingest.store import DeadLetter, StoreError
from ingest.validate import Code
from wire import Telemetry, TelemetryTopic, encode

log = logging.getLogger("vigil.ingest")

Item = tuple[TelemetryTopic, Telemetry]


class RefusalSorter:
    """One sorting of one refused write; ``splits`` counts the refusals met (for the stats)."""

    def __init__(self, write: Callable[[Sequence[Item]], None], now_ms: int) -> None:
        self._write = write
        self._now_ms = now_ms
        self.splits = 0

    def write(self, items: Sequence[Item], letters: list[DeadLetter]) -> list[Item]:
        """Write ``items``; on a content refusal, sort it. Returns what was stored."""
        if not items:
            return []
        try:
            self._write(items)
        except StoreError as e:
            if e.retryable:
                raise
            return self.sort(items, e, letters)
        return list(items)

    def sort(self, items: Sequence[Item], error: StoreError, letters: list[DeadLetter]) -> list[Item]:
        """The store refused ``items`` for their content: keep what it takes, dead-letter the rest
        into ``letters``. Returns what was stored."""
        self.splits += 1
        if len(items) > 1 or error.offending:
            log.warning("ingest: store refused %d messages (%s); sorting out the refused readings",
                        len(items), str(error)[:300])
        if error.offending:
            return self._drop_named(items, error, letters)
        if len(items) > 1:
            mid = len(items) // 2
            return self.write(items[:mid], letters) + self.write(items[mid:], letters)
        topic, message = items[0]
        readings = message.readings
        if len(readings) > 1:
            mid = len(readings) // 2
            first = msgspec.structs.replace(message, readings=readings[:mid])
            second = msgspec.structs.replace(message, readings=readings[mid:])
            return self.write([(topic, first)], letters) + self.write([(topic, second)], letters)
        letters.append(self._letter(topic, message, error))
        return []

    def _drop_named(self, items: Sequence[Item], error: StoreError, letters: list[DeadLetter]) -> list[Item]:
        bad: dict[int, set[int]] = {}
        for mi, ri in error.offending:
            bad.setdefault(mi, set()).add(ri)
        rest: list[Item] = []
        for mi, (topic, message) in enumerate(items):
            refused = bad.get(mi)
            if not refused:
                rest.append((topic, message))
                continue
            readings = message.readings
            named = tuple(r for i, r in enumerate(readings) if i in refused)
            letters.append(self._letter(topic, msgspec.structs.replace(message, readings=named), error))
            good = tuple(r for i, r in enumerate(readings) if i not in refused)
            if good:
                rest.append((topic, msgspec.structs.replace(message, readings=good)))
        return self.write(rest, letters)

    def _letter(self, topic: TelemetryTopic, message: Telemetry, error: StoreError) -> DeadLetter:
        return DeadLetter(self._now_ms, topic.format(), encode(message), f"refused by the store: {error}",
                          code=Code.STORE_REFUSED)


@dataclass(frozen=True, slots=True)
class StoreState:
    """The store as the last write found it (``/healthz``, ``vigil_ingest_store_*`` metrics)."""

    ok: bool = True
    problem: str = ""
    unauthorized: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_s: float
    max_s: float
    auth_alert_interval_s: float


def retry_until_written(
    attempt: Callable[[], None],
    policy: RetryPolicy,
    *,
    clock: Callable[[], float],
    wait: Callable[[float, float], bool],
    report: Callable[[StoreState], None],
) -> bool:
    """Run ``attempt`` until it raises nothing; return whether it was written.

    ``wait(seconds, now)`` sleeps between attempts and returns False to give up (the worker
    is stopping and its drain time is over): then False is returned and nothing is acked.
    ``report`` is called after every failed attempt and once on recovery.
    """
    delay = policy.initial_s
    failing_since: float | None = None
    next_alert = 0.0
    while True:
        try:
            try:
                attempt()
            except StoreError:
                raise
            except Exception as bug:  # a bug must not kill the writer: keep the data, retry
                log.exception("ingest: unexpected error while writing; retrying")
                raise StoreError(f"internal error while writing: {bug!r}", retryable=True) from bug
        except StoreError as e:
            now = clock()
            if failing_since is None:
                failing_since = now
                log.error("ingest: store write failed (%s); retrying until it succeeds", e)
            report(StoreState(False, str(e)[:1000], e.unauthorized))
            if e.unauthorized and now >= next_alert:
                next_alert = now + policy.auth_alert_interval_s
                log.critical("ALERT ingest: the store refuses ingest's credentials (HTTP %s): %s. "
                             "Nothing is lost: messages stay unacked with the broker until the "
                             "credentials are fixed (store.influx_token)", e.status, e)
            if not wait(max(delay, e.retry_after_s or 0.0), now):
                log.error("ingest: stopping with the store unavailable; the unwritten "
                          "messages stay unacked with the broker")
                return False
            delay = min(delay * 2, policy.max_s)
            continue
        if failing_since is not None:
            log.warning("ingest: store writes recovered after %.1f s", clock() - failing_since)
            report(StoreState())
        return True
