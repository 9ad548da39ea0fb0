"""The delivery adapter: runs the outbox's attempts through the channels and records each.

``run_due(now_ms)`` sends everything due, in the calling thread (the timeline tests drive
it with a simulated clock); ``start()`` runs the same in a background loop with a small
pool of sender threads, so one slow SMTP server does not hold up every other page.

Invariants:
- every attempt, whatever its outcome, produces exactly one ``AttemptRecord`` handed to
  ``on_attempt`` (the service writes them to the database);
- ``cancel`` (acknowledged, resolved) stops future attempts at once; one already in flight
  finishes and is recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from alerting.channels import Channel
from alerting.config import Contact
from alerting.errors import ChannelError
from alerting.outbox import Attempt, Message, Outbox

log = logging.getLogger("vigil.alerting.dispatch")


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    incident_id: str
    person: str
    channel: str
    target: str  # the address with credentials masked
    number: int
    method_index: int
    ok: bool
    result: str  # delivered, retry, failover, cycle, gave_up, cancelled
    error: str
    ts_ms: int
    duration_ms: int


class Dispatcher:
    def __init__(self, outbox: Outbox, channels: dict[str, Channel], *,
                 on_attempt: Callable[[AttemptRecord], None] = lambda _r: None,
                 clock: Callable[[], float] = time.time, workers: int = 4) -> None:
        self.outbox = outbox
        self.channels = channels
        self.on_attempt = on_attempt
        self._clock = clock
        self._workers = workers
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def submit(self, message: Message, methods: tuple[Contact, ...]) -> int:
        with self._cond:
            job = self.outbox.add(message, methods, self._now_ms())
            self._cond.notify()
        return job

    def cancel(self, incident_id: str) -> int:
        with self._cond:
            return self.outbox.cancel(incident_id)

    @property
    def pending(self) -> int:
        with self._cond:
            return self.outbox.pending

    # -- synchronous driving (tests, simulated clock) ---------------------------------
    def run_due(self, now_ms: int) -> list[AttemptRecord]:
        with self._cond:
            attempts = self.outbox.due(now_ms)
        return [self._send(a, lambda: now_ms) for a in attempts]

    # -- background loop ----------------------------------------------------------------
    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="alerting-send")
        self._thread = threading.Thread(target=self._loop, name="alerting-dispatch", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        assert self._pool is not None
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = self._now_ms()
                attempts = self.outbox.due(now)
                if not attempts:
                    due = self.outbox.next_due_ms()
                    wait = 1.0 if due is None else max(0.0, min(1.0, (due - now) / 1000))
                    self._cond.wait(wait)
                    continue
            for a in attempts:
                self._pool.submit(self._send_and_wake, a)

    def _send_and_wake(self, attempt: Attempt) -> None:
        try:
            self._send(attempt, self._now_ms)
        finally:
            with self._cond:
                self._cond.notify()

    def _send(self, attempt: Attempt, now_ms: Callable[[], int]) -> AttemptRecord:
        channel = self.channels.get(attempt.channel)
        started = time.perf_counter()
        error, retryable = "", True
        if channel is None:
            error, retryable = f"no channel named {attempt.channel!r}", False
        else:
            try:
                channel.send(attempt.to, attempt.message.title, attempt.message.body)
            except ChannelError as e:
                error, retryable = str(e), e.retryable
            except Exception as e:  # a bug in a plugin must cost one attempt, not the dispatcher
                log.exception("alerting: channel %s raised", attempt.channel)
                error = f"internal error in channel {attempt.channel}: {e!r}"
        duration_ms = int((time.perf_counter() - started) * 1000)
        ok = not error
        ts = now_ms()
        with self._cond:
            result = self.outbox.report(attempt, ok, ts, retryable=retryable)
        target = channel.describe(attempt.to) if channel is not None else attempt.to.split("://")[0]
        record = AttemptRecord(attempt.message.incident_id, attempt.message.person, attempt.channel, target,
                               attempt.number, attempt.method_index, ok, result, error, ts, duration_ms)
        if not ok:
            log.warning("alerting: delivery to %s via %s failed (%s); %s", attempt.message.person,
                        attempt.channel, error, result)
        try:
            self.on_attempt(record)
        except Exception:  # recording must not stop deliveries; the log has it
            log.exception("alerting: could not record a delivery attempt: %s", record)
        return record
