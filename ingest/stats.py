"""Counters and the latency histogram of one ingest worker (sans-IO, no locks: the adapter
updates them from its writer thread only and reads a snapshot).

Latency is from a reading's edge timestamp to the moment its write was durable, which for
InfluxDB is also the moment it became queryable. It is recorded per message for its
oldest reading, weighted by the message's reading count, so the figure never flatters.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Bucket upper edges in seconds, roughly x1.25 apart from 1 ms to ~1 h.
_EDGES: tuple[float, ...] = tuple(0.001 * 1.25**i for i in range(68))


@dataclass(slots=True)
class LatencyHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(_EDGES) + 1))
    total: int = 0

    def add(self, seconds: float, weight: int = 1) -> None:
        self.counts[bisect.bisect_left(_EDGES, seconds)] += weight
        self.total += weight

    def quantile(self, q: float) -> float:
        """Upper edge of the bucket holding quantile q (0 when empty)."""
        if not self.total:
            return 0.0
        rank = q * self.total
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return _EDGES[min(i, len(_EDGES) - 1)]
        return _EDGES[-1]


@dataclass(slots=True)
class IngestStats:
    messages: int = 0
    readings: int = 0
    statuses: int = 0
    dead_letters: int = 0
    batches: int = 0
    write_retries: int = 0
    acks_skipped: int = 0  # acks dropped because their connection had gone (redelivered)
    duplicates: int = 0  # messages whose sequence number had been received already
    refused_splits: int = 0  # writes retried in parts because the store refused their content
    agent_acks: int = 0  # end-to-end acks published to agents (wire.agent.Ack), one per agent per batch
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def snapshot(self) -> dict[str, float]:
        return {
            "messages": self.messages,
            "readings": self.readings,
            "statuses": self.statuses,
            "dead_letters": self.dead_letters,
            "batches": self.batches,
            "write_retries": self.write_retries,
            "acks_skipped": self.acks_skipped,
            "duplicates": self.duplicates,
            "refused_splits": self.refused_splits,
            "agent_acks": self.agent_acks,
            "latency_p50_s": self.latency.quantile(0.5),
            "latency_p99_s": self.latency.quantile(0.99),
        }
