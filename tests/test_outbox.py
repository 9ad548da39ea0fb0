"""The edge outbox (edge.outbox), without a network: an explicit clock, on disk and in memory.

One suite, run on both storage modes (style.md: "both outboxes"); durability across a
reopen and across a process killed without closing is checked on disk only.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.errors import EdgeError
from edge.outbox import Outbox, OutboxLimits, Outgoing
from wire import Reading, Telemetry, decode_telemetry, encode

T0 = 1_800_000_000_000
ROOT = Path(__file__).resolve().parent.parent
TOPIC = "vigil/v1/s1/a1/d{}/telemetry"

OpenOutbox = Callable[..., Outbox]


def payload(seq: int, ts_ms: int = T0) -> bytes:
    return encode(
        Telemetry(v=1, seq=seq, readings=(Reading(ts_ms=ts_ms + seq, metric="x", value=float(seq)),))
    )


def msgs(box: Outbox, n: int, device: int = 0) -> list[tuple[int, str, bytes]]:
    first = box.next_seq
    return [(s, TOPIC.format(device), payload(s)) for s in range(first, first + n)]


@pytest.fixture(params=["disk", "memory"])
def open_box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenOutbox]:
    boxes: list[Outbox] = []

    def make(now_ms: int = T0, **limits: float) -> Outbox:
        path = tmp_path / "a.outbox" if request.param == "disk" else None
        box = Outbox(path, identity="s1/a1", now_ms=now_ms, limits=OutboxLimits(**limits))  # type: ignore[arg-type]
        boxes.append(box)
        return box

    yield make
    for b in boxes:
        b.close()


def seqs(out: list[Outgoing]) -> list[int]:
    return [o.seq for o in out]


def test_live_messages_are_stored_sent_and_deleted_by_acks(open_box: OpenOutbox) -> None:
    box = open_box()
    live = box.add(msgs(box, 3), T0, online=True)
    assert seqs(live) == [0, 1, 2] and not any(o.historical for o in live)
    assert live[0].payload == payload(0)  # sent exactly as stored
    assert box.stats().depth == 3 and box.stats().in_flight == 3 and box.take_replay(T0) == []
    assert box.acked([(0, 1)], T0 + 250) == 2
    assert box.take_latencies() == [0.25, 0.25]
    # Acks are at-least-once: repeats, overlaps and numbers never used are ignored.
    assert box.acked([(0, 1), (1, 2), (2, 10**9)], T0 + 300) == 1
    s = box.stats()
    assert (s.depth, s.bytes, s.in_flight, s.oldest_queued_ms) == (0, 0, 0, None)


def test_a_message_numbered_out_of_order_is_refused(open_box: OpenOutbox) -> None:
    box = open_box()
    with pytest.raises(EdgeError, match="numbered 5, expected 0"):
        box.add([(5, TOPIC.format(0), payload(5))], T0, online=True)
    assert box.next_seq == 0


def test_offline_backlog_is_replayed_in_order_marked_historical_within_the_window(
    open_box: OpenOutbox,
) -> None:
    box = open_box(replay_window=4, replay_batch=3)
    assert box.add(msgs(box, 10), T0, online=False) == []
    first = box.take_replay(T0 + 1000)
    assert seqs(first) == [0, 1, 2]  # replay_batch per call
    assert seqs(box.take_replay(T0 + 1000)) == [3]  # window of 4 unacknowledged replays is full
    assert box.take_replay(T0 + 1000) == []
    m = decode_telemetry(first[0].payload)
    assert m.historical and m.seq == 0 and first[0].topic == TOPIC.format(0)
    # Live messages bypass the window, and are not historical.
    live = box.add(msgs(box, 1), T0 + 1000, online=True)
    assert seqs(live) == [10] and not decode_telemetry(live[0].payload).historical
    box.acked([(0, 3)], T0 + 2000)
    assert seqs(box.take_replay(T0 + 2000)) == [4, 5, 6]
    box.acked([(4, 6), (10, 10)], T0 + 3000)
    assert seqs(box.take_replay(T0 + 3000)) == [7, 8, 9]
    box.acked([(7, 9)], T0 + 3000)
    assert box.stats().depth == 0 and not box.has_backlog()


def test_in_flight_messages_are_resent_after_a_disconnect_and_after_the_ack_timeout(
    open_box: OpenOutbox,
) -> None:
    box = open_box(resend_after_s=30)
    box.add(msgs(box, 4), T0, online=True)
    assert box.disconnected() == 4  # the broker may have lost them with its connection
    assert seqs(box.take_replay(T0 + 10)) == [0, 1, 2, 3]
    box.acked([(0, 0)], T0 + 20)
    box.expire(T0 + 20_000)
    assert box.take_replay(T0 + 20_000) == []  # not late yet
    box.add(msgs(box, 1), T0 + 25_000, online=True)  # seq 4, sent live
    box.expire(T0 + 31_000)  # 1..3 were sent at T0+10: late; 4 is not
    assert seqs(box.take_replay(T0 + 31_000)) == [1, 2, 3]
    box.send_failed(4)  # the client refused it
    assert seqs(box.take_replay(T0 + 31_000)) == [4]


def test_the_bound_drops_the_oldest_first_and_counts_every_drop(
    open_box: OpenOutbox, caplog: pytest.LogCaptureFixture
) -> None:
    box = open_box(max_messages=5)
    box.add(msgs(box, 4), T0, online=False)
    box.add(msgs(box, 4), T0 + 1, online=False)
    s = box.stats()
    assert (s.depth, s.dropped) == (5, 3)
    assert seqs(box.take_replay(T0 + 2)) == [3, 4, 5, 6, 7]  # 0..2, the oldest, went
    assert s.dropped_bytes == sum(len(payload(i)) for i in range(3))
    assert sum("dropping the oldest" in r.getMessage() for r in caplog.records) == 1  # once per episode


def test_the_byte_bound_and_the_age_bound(open_box: OpenOutbox) -> None:
    size = len(payload(0))
    box = open_box(max_bytes=size * 3, max_age_s=60)
    box.add(msgs(box, 5), T0, online=False)
    assert (box.stats().depth, box.stats().dropped) == (3, 2)
    box.add(msgs(box, 1), T0 + 30_000, online=False)  # seq 5
    box.expire(T0 + 61_000)  # 2..4 older than 60 s; 5 is not
    s = box.stats()
    assert (s.depth, s.dropped, s.oldest_queued_ms) == (1, 5, T0 + 30_000)


def test_events_are_kept_until_the_broker_has_them(open_box: OpenOutbox) -> None:
    box = open_box()
    a = box.add_event("vigil/v1/s1/a1/door/event", b'{"e":1}', T0)
    b = box.add_event("vigil/v1/s1/a1/door/event", b'{"e":2}', T0)
    assert [e[0] for e in box.events_to_send()] == [a, b]
    assert box.events_to_send() == []  # handed over once per connection
    box.event_delivered(a)
    box.disconnected()
    assert [(e[0], e[2]) for e in box.events_to_send()] == [(b, b'{"e":2}')]
    box.event_delivered(b)
    assert box.stats().events_pending == 0


def test_sequence_numbers_boot_epoch_and_backlog_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "a.outbox"
    box = Outbox(path, identity="s1/a1", now_ms=T0)
    assert box.boot == T0
    box.add(msgs(box, 5), T0, online=True)
    box.acked([(0, 1)], T0)
    box.add_event("vigil/v1/s1/a1/door/event", b'{"e":1}', T0)
    box.close()
    again = Outbox(path, identity="s1/a1", now_ms=T0 - 10_000)  # the clock stepped back
    assert again.boot == T0 + 1  # still grows
    assert again.next_seq == 5 and again.recovered == 3
    assert seqs(again.take_replay(T0)) == [2, 3, 4]  # in flight before: backlog now
    assert len(again.events_to_send()) == 1
    again.acked([(2, 4)], T0)
    again.close()
    third = Outbox(path, identity="s1/a1", now_ms=T0)
    assert third.next_seq == 5 and third.stats().depth == 0  # an empty outbox keeps the number
    third.close()
    with pytest.raises(EdgeError, match="belongs to agent 's1/a1', not 's1/a2'"):
        Outbox(path, identity="s1/a2", now_ms=T0)


def test_what_was_added_survives_the_process_being_killed(tmp_path: Path) -> None:
    path = tmp_path / "k.outbox"
    child = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from edge.outbox import Outbox
        from tests.test_outbox import msgs, T0
        box = Outbox(Path({str(path)!r}), identity="s1/a1", now_ms=T0)
        for i in range(50):
            box.add(msgs(box, 10), T0 + i, online=True)
        os._exit(0)  # no close, no checkpoint: what kill -9 leaves
    """)
    subprocess.run([sys.executable, "-c", child], check=True, cwd=ROOT, timeout=60)
    box = Outbox(path, identity="s1/a1", now_ms=T0)
    assert box.next_seq == 500 and box.stats().depth == 500
    assert seqs(box.take_replay(T0))[:3] == [0, 1, 2]
    box.close()


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_messages must be at least 1"):
        OutboxLimits(max_messages=0)


def test_a_bound_smaller_than_one_round_sends_only_what_it_kept(open_box: OpenOutbox) -> None:
    box = open_box(max_messages=2)
    live = box.add(msgs(box, 5), T0, online=True)
    assert seqs(live) == [3, 4] and box.stats().dropped == 3
    assert box.stats().in_flight == 2 and not box.has_backlog()
