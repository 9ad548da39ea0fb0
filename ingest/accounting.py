"""Per-agent accounting of one ingest worker: received, stored, duplicates, sequence gaps, dead letters.

Sans-IO: the adapter calls it with what happened and ``now``; it returns decisions (gap
events to publish, sequence ranges to tell the other workers) and never touches a socket.
Not thread-safe: the adapter holds its lock around every call.

Sequence numbers (``Telemetry.seq``) count an agent session's messages from 0. For each
agent the worker keeps the lowest and highest number seen and the open gaps between, as
inclusive ranges. A number above ``high + 1`` opens a gap; one inside a gap fills it; one
below ``low`` lowers it (this worker joined after the agent started, or the message came
late) and the numbers between become a *silent* gap: unseen here but not known missing, so
they fill without counting as duplicates and are never reported. Any other number
is a duplicate (a redelivery).

Numbers continue across agent restarts (the edge outbox persists them, ``Status.boot`` is
the boot epoch), so a restart is not a reset: the messages a restarted agent replays from
its outbox (``Telemetry.historical``) fill the gaps its absence left, and a gap still open
after the replay is a real loss.

Workers of one shared-subscription group each receive part of every agent's stream, so
each tells the others what it received (``drain_seen`` → ``wire.ingest_events.SeenSeqs``)
and records theirs with ``seen_elsewhere``: gaps are then gaps in what the *group*
received, and a redelivery to another worker still counts as a duplicate.

Invariants:
- open gaps of an agent never overlap and are kept sorted; at most ``max_gaps`` per agent
  (beyond that the oldest is dropped and counted in ``gaps_dropped``: memory stays bounded
  whatever a broken agent sends);
- a gap is reported "open" once, when it has been open ``gap_open_after_s``, and "closed"
  once, when it is filled after having been reported; a gap filled before it was reported
  (a reordering, another worker's share) is never reported at all.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ingest.store.base import MAX_REPORTED_GAPS, AgentTally


@dataclass(slots=True)
class Gap:
    first: int
    last: int
    opened_at: float
    reported: bool = False
    # The range as opened: events name it, so "closed" matches its "open" even after the
    # gap was filled piecemeal (a piece filled in the middle splits it in two).
    origin: tuple[int, int] = (0, 0)
    # Below the first number this worker saw: unseen, but not known to be missing (other
    # workers had them before this one started). Filled quietly, never reported.
    silent: bool = False


@dataclass(slots=True)
class GapDecision:
    """A gap event to publish: ``state`` "open" (overdue) or "closed" (filled after reporting)."""

    site: str
    agent: str
    first: int
    last: int
    state: str
    opened_at: float


@dataclass(slots=True)
class AgentAccount:
    received_messages: int = 0
    received_readings: int = 0
    stored_messages: int = 0
    stored_readings: int = 0
    duplicates: int = 0
    dead_letters: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    gaps_opened: int = 0
    gaps_dropped: int = 0
    high: int | None = None
    low: int | None = None
    gaps: list[Gap] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return sum(g.last - g.first + 1 for g in self.gaps if not g.silent)

    @property
    def open_gaps(self) -> list[Gap]:
        return [g for g in self.gaps if not g.silent]


class Accounting:
    def __init__(self, *, gap_open_after_s: float, max_gaps: int = 1000) -> None:
        self.gap_open_after_s = gap_open_after_s
        self.max_gaps = max_gaps
        self.agents: dict[tuple[str, str], AgentAccount] = {}
        self._closed: list[GapDecision] = []
        self._seen: dict[tuple[str, str], list[int]] = defaultdict(list)

    def _account(self, site: str, agent: str) -> AgentAccount:
        key = (site, agent)
        acct = self.agents.get(key)
        if acct is None:
            acct = self.agents[key] = AgentAccount()
        return acct

    # -- what happened --------------------------------------------------------------------

    def received(self, site: str, agent: str, seq: int, readings: int, now: float) -> bool:
        """A telemetry message arrived at this worker; True if it is a duplicate."""
        acct = self._account(site, agent)
        acct.received_messages += 1
        acct.received_readings += readings
        self._seen[(site, agent)].append(seq)
        duplicate = self._track(site, agent, acct, seq, now)
        if duplicate:
            acct.duplicates += 1
        return duplicate

    def seen_elsewhere(self, site: str, agent: str, seq: int, now: float) -> None:
        """Another worker of the group received this message: it fills gaps, counts nothing."""
        self._track(site, agent, self._account(site, agent), seq, now)

    def stored(self, site: str, agent: str, messages: int, readings: int) -> None:
        acct = self._account(site, agent)
        acct.stored_messages += messages
        acct.stored_readings += readings

    def dead_lettered(self, site: str, agent: str, code: str) -> None:
        self._account(site, agent).dead_letters[code] += 1

    def _track(
        self, site: str, agent: str, acct: AgentAccount, seq: int, now: float
    ) -> bool:
        high, low = acct.high, acct.low
        if high is None or low is None:
            acct.high = acct.low = seq
            return False
        if seq == high + 1:
            acct.high = seq
            return False
        if seq < low:
            acct.low = seq
            if seq + 1 <= low - 1:
                acct.gaps.insert(0, Gap(seq + 1, low - 1, now, origin=(seq + 1, low - 1), silent=True))
            return False
        if seq > high:
            acct.gaps.append(Gap(high + 1, seq - 1, now, origin=(high + 1, seq - 1)))
            acct.gaps_opened += 1
            if len(acct.gaps) > self.max_gaps:
                acct.gaps.pop(0)
                acct.gaps_dropped += 1
            acct.high = seq
            return False
        # At or below high: fill a gap (search from the newest, where reordering lands).
        gaps = acct.gaps
        for i in range(len(gaps) - 1, -1, -1):
            g = gaps[i]
            if g.first <= seq <= g.last:
                self._fill(site, agent, gaps, i, seq)
                return False
            if g.last < seq:
                break
        return True

    def _fill(self, site: str, agent: str, gaps: list[Gap], i: int, seq: int) -> None:
        g = gaps[i]
        if g.first == g.last:
            del gaps[i]
            if g.reported and not g.silent and not any(other.origin == g.origin for other in gaps):
                self._closed.append(GapDecision(site, agent, *g.origin, "closed", g.opened_at))
        elif seq == g.first:
            g.first += 1
        elif seq == g.last:
            g.last -= 1
        else:
            gaps.insert(i + 1, Gap(seq + 1, g.last, g.opened_at, g.reported, g.origin, g.silent))
            g.last = seq - 1

    # -- decisions ---------------------------------------------------------------------------

    def due_events(self, now: float) -> list[GapDecision]:
        """Gaps open for ``gap_open_after_s`` not yet reported, and reported gaps now filled."""
        out, self._closed = self._closed, []
        for (site, agent), acct in self.agents.items():
            for g in acct.gaps:
                if not g.reported and not g.silent and now - g.opened_at >= self.gap_open_after_s:
                    # Every piece of one origin is reported together, as one event.
                    pieces = [p for p in acct.gaps if p.origin == g.origin]
                    for p in pieces:
                        p.reported = True
                    out.append(GapDecision(site, agent, *g.origin, "open", g.opened_at))
        return out

    def tallies(self, worker: str, ts_ms: int) -> list[AgentTally]:
        """Every agent's account as the store keeps it for the API (ingest.store.AgentTally)."""
        out = []
        for (site, agent), a in self.agents.items():
            gaps = a.open_gaps
            out.append(AgentTally(
                site=site, agent=agent, worker=worker, ts_ms=ts_ms,
                received_messages=a.received_messages, received_readings=a.received_readings,
                stored_messages=a.stored_messages, stored_readings=a.stored_readings, duplicates=a.duplicates,
                dead_letters=dict(a.dead_letters), gaps_opened=a.gaps_opened, gaps_dropped=a.gaps_dropped,
                missing_messages=a.missing,
                open_gaps=tuple((g.first, g.last) for g in gaps[:MAX_REPORTED_GAPS])))
        return out

    def drain_seen(self) -> list[tuple[str, str, list[tuple[int, int]]]]:
        """What this worker received since the last call, per agent, as inclusive ranges."""
        seen, self._seen = self._seen, defaultdict(list)
        return [(site, agent, ranges(seqs)) for (site, agent), seqs in seen.items()]


def ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted, merged inclusive ranges of the given numbers."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out
