"""Sans-IO batching of received messages into durable writes, and the order of their acks.

The batcher owns no socket, thread or clock: the adapter (``ingest.service``) feeds it what
arrived with ``now`` and asks whether a flush is due.

Invariants:
- a batch holds entries in the order they were received, and ``Batch.acks`` lists the
  QoS > 0 messages in that order: the broker sees acks only after the batch is durable,
  in the order it delivered (MQTT 3.1.1 section 4.6);
- a flush is due when the batch reaches ``max_readings`` readings, or ``max_messages``
  messages (keep this at or below the broker's inflight window for this client, or the
  broker stops sending while the batch waits for its age limit), or when its oldest entry
  is ``max_age_s`` old;
- every entry carries the connection generation it arrived on. A message whose connection
  has since dropped will be redelivered by the broker on the new one; its old packet id
  must not be acked on the new connection (it could ack an unrelated message).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.store import DeadLetter
from wire import Status, StatusTopic, Telemetry, TelemetryTopic
from wire.agent import AgentHealth
from wire.topics import HealthTopic


@dataclass(frozen=True, slots=True)
class Ack:
    mid: int
    qos: int
    generation: int


@dataclass(slots=True)
class Batch:
    telemetry: list[tuple[TelemetryTopic, Telemetry]] = field(default_factory=list)
    statuses: list[tuple[StatusTopic, Status]] = field(default_factory=list)
    healths: list[tuple[HealthTopic, AgentHealth]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    letters_written: list[DeadLetter] = field(default_factory=list)  # set by the writer once durable
    acks: list[Ack] = field(default_factory=list)
    # Telemetry sequence numbers per (site, agent) this batch holds, stored or dead-lettered
    # once it is durable: what ingest acknowledges end to end (ingest.acks).
    seqs: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    readings: int = 0
    messages: int = 0
    first_at: float = 0.0

    def __bool__(self) -> bool:
        return self.messages > 0


class Batcher:
    def __init__(self, *, max_readings: int, max_messages: int, max_age_s: float) -> None:
        self.max_readings = max_readings
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self._batch = Batch()

    def _note(self, mid: int, qos: int, generation: int, now: float) -> None:
        b = self._batch
        if not b.messages:
            b.first_at = now
        b.messages += 1
        if qos > 0:
            b.acks.append(Ack(mid, qos, generation))

    def add_telemetry(
        self, topic: TelemetryTopic, message: Telemetry, *, mid: int, qos: int, generation: int, now: float
    ) -> None:
        self._batch.telemetry.append((topic, message))
        self._batch.readings += len(message.readings)
        self._batch.seqs.setdefault((topic.site, topic.agent), []).append(message.seq)
        self._note(mid, qos, generation, now)

    def add_status(
        self, topic: StatusTopic, status: Status, *, mid: int, qos: int, generation: int, now: float
    ) -> None:
        self._batch.statuses.append((topic, status))
        self._note(mid, qos, generation, now)

    def add_health(
        self, topic: HealthTopic, health: AgentHealth, *, mid: int, qos: int, generation: int, now: float
    ) -> None:
        self._batch.healths.append((topic, health))
        self._note(mid, qos, generation, now)

    def add_dead_letter(
        self,
        letter: DeadLetter,
        *,
        mid: int,
        qos: int,
        generation: int,
        now: float,
        seq: tuple[tuple[str, str], int] | None = None,
    ) -> None:
        """A message refused whole; ``seq`` ((site, agent), seq) when it still names its telemetry
        sequence number, so the agent is told it is durably kept and stops resending it."""
        self._batch.dead_letters.append(letter)
        if seq is not None:
            self._batch.seqs.setdefault(seq[0], []).append(seq[1])
        self._note(mid, qos, generation, now)

    def add_split_letter(self, letter: DeadLetter) -> None:
        """A dead letter split off a message already added (its ack goes with that message)."""
        self._batch.dead_letters.append(letter)

    @property
    def pending_messages(self) -> int:
        return self._batch.messages

    def due_at(self) -> float | None:
        """When the current batch must be flushed by age; None when it is empty."""
        return self._batch.first_at + self.max_age_s if self._batch.messages else None

    def flush_due(self, now: float) -> bool:
        b = self._batch
        if not b.messages:
            return False
        return (
            b.readings >= self.max_readings
            or b.messages >= self.max_messages
            or now - b.first_at >= self.max_age_s
        )

    def take(self) -> Batch:
        batch, self._batch = self._batch, Batch()
        return batch
