"""The one time-series store interface, served by InfluxDB and by the embedded file store.

Ingest writes through it; the API reads through it. Both implementations pass the same
contract suite (tests/test_store_contract.py).

Invariants:
- ``write`` returns only once the readings are durable (a 2xx from InfluxDB, or a
  committed transaction), so ingest may acknowledge the messages afterwards;
- a reading is identified by (site, device, metric, ts_ms): writing it again replaces it,
  so at-least-once delivery leaves no duplicates;
- numeric values are stored as floats, booleans as booleans, strings as strings;
- all times are epoch milliseconds; ranges are half-open ``[start_ms, end_ms)``;
- a failure raises ``StoreError``; ``retryable`` says whether the same write may succeed
  later (outage, overload) or never will (the data itself was refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from wire import Status, StatusTopic, Telemetry, TelemetryTopic
from wire.agent import AgentHealth
from wire.topics import HealthTopic


class StoreError(Exception):
    """A store operation failed; ``retryable`` tells ingest whether to back off and retry."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
        offending: Sequence[tuple[int, int]] = (),
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        # The server's HTTP status when there was one: ingest sorts refusals by it (400/422
        # bad data, 401/403 credentials, 413 too large).
        self.status = status
        # The server's Retry-After, in seconds: ingest waits at least this long.
        self.retry_after_s = retry_after_s
        # (message index, reading index) of the readings the server named as bad, when it
        # named any (InfluxDB 1.x's "unable to parse '<line>'"); empty: find them by splitting.
        self.offending = tuple(offending)

    @property
    def unauthorized(self) -> bool:
        """Credentials refused or missing rights: an operator must act; the data is kept."""
        return self.status in (401, 403)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be stored, kept with the reason a person can read."""

    received_ms: int
    topic: str
    payload: bytes
    reason: str
    # Stable name of the fault (ingest.validate.Code), for filters and alerting; "" for
    # letters written before codes existed.
    code: str = ""
    # Set by the store when read back: what ``mark_replayed`` takes. Not part of equality,
    # so a letter read back equals the one written.
    id: str = field(default="", compare=False)
    replayed_ms: int | None = field(default=None, compare=False)  # when it was last replayed


@dataclass(frozen=True, slots=True)
class DeviceSeen:
    """A device as last seen on the bus (until the asset ledger exists)."""

    site: str
    device: str
    agent: str
    last_seen_ms: int  # the newest edge timestamp stored for it


@dataclass(frozen=True, slots=True)
class AgentState:
    """An agent's last status message."""

    site: str
    agent: str
    state: str  # "online" | "offline"
    ts_ms: int
    boot: int
    reason: str


@dataclass(frozen=True, slots=True)
class AgentHealthRecord:
    """An agent's latest health report (``wire.agent.AgentHealth``) as stored."""

    site: str
    agent: str
    health: AgentHealth


class AgentTally(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One ingest worker's account of one agent since the worker started (ingest.accounting),
    written every ``accounting_interval_s`` so the API can show it; counters restart at 0
    with the worker, as Prometheus counters do."""

    site: str
    agent: str
    worker: str
    ts_ms: int  # when the worker wrote it
    received_messages: int = 0
    received_readings: int = 0
    stored_messages: int = 0
    stored_readings: int = 0
    duplicates: int = 0
    dead_letters: dict[str, int] = {}  # by reason code (ingest.validate.Code)
    gaps_opened: int = 0
    gaps_dropped: int = 0
    missing_messages: int = 0  # in the open gaps below
    # Open sequence gaps of what the whole group received, inclusive; the oldest first, at
    # most MAX_REPORTED_GAPS (missing_messages counts them all).
    open_gaps: tuple[tuple[int, int], ...] = ()


MAX_REPORTED_GAPS = 100


@dataclass(frozen=True, slots=True)
class Bucket:
    """One step of a series: aggregates of the numeric readings in [ts_ms, ts_ms + step)."""

    ts_ms: int
    mean: float
    min: float
    max: float
    count: int


@dataclass(frozen=True, slots=True)
class RawReading:
    ts_ms: int
    value: float | bool | str
    quality: str  # "good" | "uncertain" | "bad"


class Store(Protocol):
    # -- writes (ingest) ------------------------------------------------------------
    def write(self, batch: Sequence[tuple[TelemetryTopic, Telemetry]]) -> None:
        """Store every reading of every message and update the devices seen; durable on return."""

    def write_status(self, topic: StatusTopic, status: Status) -> None:
        """Record an agent's status message (birth, graceful offline, or last will)."""

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep messages that could not be stored, with their reasons."""

    def write_health(self, topic: HealthTopic, health: AgentHealth) -> None:
        """Record an agent's health report; the one with the greatest ``ts_ms`` is kept."""

    def write_accounting(self, tallies: Sequence[AgentTally]) -> None:
        """Replace the given workers' accounts of the given agents (latest ``ts_ms`` wins)."""

    # -- reads (API) ----------------------------------------------------------------
    def devices(self) -> list[DeviceSeen]:
        """Every device ever stored, with the agent it last came through."""

    def agents(self) -> list[AgentState]:
        """The latest status of every agent that has sent one."""

    def agent_health(self) -> list[AgentHealthRecord]:
        """The latest health report of every agent that has sent one, by (site, agent)."""

    def accounting(self) -> list[AgentTally]:
        """The latest account of every (worker, agent), sorted by site, agent, worker."""

    def metrics(self, site: str, device: str) -> list[str]:
        """The metric names stored for a device, sorted; empty if the device is unknown."""

    def series(
        self, site: str, device: str, metric: str, start_ms: int, end_ms: int, step_ms: int
    ) -> list[Bucket]:
        """Mean/min/max/count per step over numeric readings, only steps that have data,
        ascending; bucket boundaries are multiples of ``step_ms`` since the epoch."""

    def readings(
        self, site: str, device: str, metric: str, start_ms: int, end_ms: int, limit: int
    ) -> list[RawReading]:
        """The stored readings themselves, ascending by time, at most ``limit``."""

    def dead_letters(
        self, limit: int, *, code: str | None = None, topic_prefix: str | None = None
    ) -> list[DeadLetter]:
        """The newest dead letters first, at most ``limit``; only those of ``code`` and whose
        topic starts with ``topic_prefix`` when given. Each comes back with its ``id``."""

    def mark_replayed(self, ids: Sequence[str], replayed_ms: int) -> None:
        """Record that these dead letters were replayed (republished) at ``replayed_ms``."""

    def ping(self) -> None:
        """Raise StoreError if the store cannot be reached."""

    def close(self) -> None: ...
