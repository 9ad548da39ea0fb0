"""End-to-end acknowledgements to agents (``wire.agent.Ack``), sans-IO.

The writer collects, per agent, the telemetry sequence numbers a batch carried; once the
batch is durable (stored, or dead-lettered) ``build_acks`` turns them into one ``Ack`` per
agent with the numbers merged into inclusive ranges. One message per agent per batch keeps
the cost independent of the reading rate: at 200,000 readings/s in batches of thousands,
a few dozen small publishes a second.

Invariants:
- only sequence numbers of messages whose every reading is durable (written, or in a
  durable dead letter) are passed in: the agent deletes what an ``Ack`` covers;
- ranges are sorted, disjoint and merged (``[5, 9]`` not ``[5, 7], [8, 9]``), and one ``Ack``
  never holds more than ``MAX_ACK_RANGES`` of them: more are split into several acks;
- ``seq_of`` never raises: a payload too broken to name its ``seq`` simply is not acked
  (the agent resends it, and it is dead-lettered again: the dead-letter store shows it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from wire.agent import MAX_ACK_RANGES, Ack
from wire.errors import WireError
from wire.payloads import Seq
from wire.topics import AckTopic, TelemetryTopic, parse_topic

AgentKey = tuple[str, str]  # (site, agent)


def to_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged inclusive ranges covering exactly ``seqs`` (duplicates allowed)."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


def build_acks(stored: Mapping[AgentKey, Iterable[int]], worker: str, ts_ms: int) -> list[tuple[str, bytes]]:
    """(topic, payload) of the acks telling each agent which of its sequence numbers are durable."""
    out: list[tuple[str, bytes]] = []
    for (site, agent), seqs in stored.items():
        ranges = to_ranges(seqs)
        topic = AckTopic(site, agent).format()
        for i in range(0, len(ranges), MAX_ACK_RANGES):
            ack = Ack(v=1, worker=worker, ts_ms=ts_ms, ranges=tuple(ranges[i:i + MAX_ACK_RANGES]))
            out.append((topic, msgspec.json.encode(ack)))
    return out


class _SeqOnly(msgspec.Struct):
    """The one field a dead-lettered telemetry payload needs for its ack (others ignored)."""

    seq: Seq


_SEQ_DECODER = msgspec.json.Decoder(_SeqOnly)


def seq_of(topic: str, payload: bytes) -> tuple[AgentKey, int] | None:
    """((site, agent), seq) of a telemetry message refused as a whole, if it still names them.

    A message dead-lettered for its content (a wrong type, a NaN, a duplicate key, readings
    all outside the time window) is durably kept; acknowledging it stops the agent from
    resending the same refused message forever.
    """
    try:
        parsed = parse_topic(topic)
        if not isinstance(parsed, TelemetryTopic):
            return None
        return (parsed.site, parsed.agent), _SEQ_DECODER.decode(payload).seq
    except (WireError, msgspec.DecodeError, ValueError, TypeError):
        return None
