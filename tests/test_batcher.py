"""The batcher core: flush triggers and ack order, with an explicit clock."""

from __future__ import annotations

from ingest.batcher import Ack, Batcher
from ingest.store import DeadLetter
from wire import Reading, Status, StatusTopic, Telemetry, TelemetryTopic

TOPIC = TelemetryTopic("s1", "a1", "d1")


def _msg(n: int, seq: int = 0) -> Telemetry:
    return Telemetry(v=1, seq=seq, readings=tuple(
        Reading(ts_ms=1_700_000_000_000 + i, metric="m", value=float(i)) for i in range(n)))


def test_flush_by_readings() -> None:
    b = Batcher(max_readings=10, max_messages=100, max_age_s=5)
    b.add_telemetry(TOPIC, _msg(6), mid=1, qos=1, generation=1, now=0.0)
    assert not b.flush_due(0.0)
    b.add_telemetry(TOPIC, _msg(4), mid=2, qos=1, generation=1, now=0.0)
    assert b.flush_due(0.0)


def test_flush_by_messages_and_age() -> None:
    b = Batcher(max_readings=1000, max_messages=2, max_age_s=0.5)
    assert b.due_at() is None and not b.flush_due(100.0)
    b.add_telemetry(TOPIC, _msg(1), mid=1, qos=1, generation=1, now=10.0)
    assert b.due_at() == 10.5
    assert not b.flush_due(10.4)
    assert b.flush_due(10.5)
    b.add_telemetry(TOPIC, _msg(1), mid=2, qos=1, generation=1, now=10.1)
    assert b.flush_due(10.1)


def test_acks_in_arrival_order_across_kinds_and_qos0_not_acked() -> None:
    b = Batcher(max_readings=1000, max_messages=100, max_age_s=1)
    b.add_telemetry(TOPIC, _msg(2), mid=7, qos=1, generation=3, now=0)
    b.add_status(StatusTopic("s1", "a1"), Status(v=1, state="online", ts_ms=1_700_000_000_000),
                 mid=8, qos=1, generation=3, now=0)
    b.add_telemetry(TOPIC, _msg(1), mid=0, qos=0, generation=3, now=0)
    b.add_dead_letter(DeadLetter(1, "x", b"y", "bad"), mid=9, qos=1, generation=3, now=0)
    batch = b.take()
    assert [a.mid for a in batch.acks] == [7, 8, 9]
    assert batch.acks[0] == Ack(7, 1, 3)
    assert batch.messages == 4 and batch.readings == 3
    assert len(batch.telemetry) == 2 and len(batch.statuses) == 1 and len(batch.dead_letters) == 1
    assert not b.take()  # taking leaves an empty batch
