"""Delivery bookkeeping: which contact method to try next, when, and what counts as done.
Sans-IO: ``due(now)`` hands out attempts, ``report(...)`` takes their outcome; sending is
the adapter's job (``alerting.dispatch``).

Invariants:
- a person's contact methods are tried in their order of preference; each gets its
  ``attempts`` tries (backing off ``retry_s``, doubling) before falling over to the next;
- when every method has failed, the whole list is tried again after ``cycle_s`` (doubling
  up to ``cycle_max_s``) until one delivers, the incident is acknowledged or resolved
  (``cancel``), or ``give_up_ms`` has passed: an outage of the receiver delays a page, it
  does not lose it;
- a permanent failure (bad address, refused credentials) skips the method's other tries;
- each channel has a token bucket (``rate_per_min``): an attempt without a token waits for
  one; life-safety messages never wait and take no token;
- a job has at most one attempt in flight; ``report`` for a cancelled job is ignored.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

from alerting.config import ChannelConfig, Contact


@dataclass(frozen=True, slots=True)
class Message:
    incident_id: str
    person: str
    title: str
    body: str
    life_safety: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    job_id: int
    number: int  # 1, 2, ... over the whole job
    method_index: int
    channel: str
    to: str
    message: Message


@dataclass(slots=True)
class _Job:
    id: int
    message: Message
    methods: tuple[Contact, ...]
    first_ms: int
    next_ms: int
    method: int = 0
    tries: int = 0  # on the current method
    cycle: int = 0
    number: int = 0
    in_flight: bool = False


@dataclass(slots=True)
class TokenBucket:
    per_min: float
    tokens: float = -1.0
    at_ms: int = 0

    def _refill(self, now_ms: int) -> None:
        if self.tokens < 0:
            self.tokens, self.at_ms = self.per_min, now_ms
            return
        self.tokens = min(self.per_min, self.tokens + (now_ms - self.at_ms) * self.per_min / 60_000)
        self.at_ms = now_ms

    def take(self, now_ms: int) -> bool:
        self._refill(now_ms)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def available_at(self, now_ms: int) -> int:
        self._refill(now_ms)
        missing = max(0.0, 1 - self.tokens)
        return now_ms + int(missing * 60_000 / self.per_min) + 1


Result = Literal["delivered", "retry", "failover", "cycle", "gave_up", "cancelled"]


@dataclass
class Outbox:
    channels: dict[str, ChannelConfig]
    retry_s: float = 2.0
    cycle_s: float = 30.0
    cycle_max_s: float = 300.0
    give_up_ms: int = 24 * 3_600_000
    _jobs: dict[int, _Job] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def add(self, message: Message, methods: tuple[Contact, ...], now_ms: int) -> int:
        job = _Job(next(self._ids), message, methods, now_ms, now_ms)
        self._jobs[job.id] = job
        return job.id

    def cancel(self, incident_id: str) -> int:
        """Drop every job of the incident (acknowledged or resolved); returns how many."""
        gone = [j.id for j in self._jobs.values() if j.message.incident_id == incident_id]
        for jid in gone:
            del self._jobs[jid]
        return len(gone)

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def next_due_ms(self) -> int | None:
        times = [j.next_ms for j in self._jobs.values() if not j.in_flight]
        return min(times) if times else None

    def due(self, now_ms: int) -> list[Attempt]:
        out: list[Attempt] = []
        for job in sorted((j for j in self._jobs.values() if not j.in_flight and j.next_ms <= now_ms),
                          key=lambda j: (not j.message.life_safety, j.next_ms, j.id)):
            method = job.methods[job.method]
            if not job.message.life_safety:
                bucket = self._bucket(method.channel)
                if not bucket.take(now_ms):
                    job.next_ms = bucket.available_at(now_ms)
                    continue
            job.in_flight = True
            job.number += 1
            out.append(Attempt(job.id, job.number, job.method, method.channel, method.to, job.message))
        return out

    def report(self, attempt: Attempt, ok: bool, now_ms: int, *, retryable: bool = True) -> Result:
        job = self._jobs.get(attempt.job_id)
        if job is None:
            return "cancelled"
        job.in_flight = False
        if ok:
            del self._jobs[job.id]
            return "delivered"
        job.tries += 1
        method = job.methods[job.method]
        if retryable and job.tries < method.attempts:
            job.next_ms = now_ms + int(self.retry_s * 1000 * 2 ** (job.tries - 1))
            return "retry"
        job.method, job.tries = job.method + 1, 0
        if job.method < len(job.methods):
            job.next_ms = now_ms
            return "failover"
        if now_ms - job.first_ms >= self.give_up_ms:
            del self._jobs[job.id]
            return "gave_up"
        job.method = 0
        job.cycle += 1
        job.next_ms = now_ms + int(min(self.cycle_s * 2 ** (job.cycle - 1), self.cycle_max_s) * 1000)
        return "cycle"

    def _bucket(self, channel: str) -> TokenBucket:
        bucket = self._buckets.get(channel)
        if bucket is None:
            cfg = self.channels.get(channel)
            bucket = self._buckets[channel] = TokenBucket(cfg.rate_per_min if cfg else 30.0)
        return bucket
