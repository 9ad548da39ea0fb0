"""Who is on call: rotations with daily or weekly shifts, handoffs in local time, overrides.

Invariants:
- pure: ``on_call(rotation, now_ms, overrides)`` depends only on its arguments;
- shifts are counted in the rotation's local wall-clock time, so a handoff at 08:00 stays
  at 08:00 local across daylight-saving changes (that shift is an hour longer or shorter);
- an override covering ``now`` wins over the schedule; of several, the one listed last
  (the most recent) wins, so a swap or a correction simply adds an override.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from alerting.config import Override, Rotation


@dataclass(frozen=True, slots=True)
class Shift:
    person: str
    start_ms: int
    end_ms: int
    override: bool = False


def _local_anchor(rotation: Rotation) -> datetime:
    return datetime.combine(rotation.start, rotation.handoff)  # naive, local wall clock


def _to_ms(local: datetime, zone: ZoneInfo) -> int:
    return int(local.replace(tzinfo=zone).timestamp() * 1000)


def scheduled(rotation: Rotation, now_ms: int) -> Shift:
    """The shift of the plain schedule (no overrides) that contains ``now_ms``."""
    zone = ZoneInfo(rotation.timezone)
    local = datetime.fromtimestamp(now_ms / 1000, zone).replace(tzinfo=None)
    length = timedelta(days=1 if rotation.shift == "daily" else 7)
    anchor = _local_anchor(rotation)
    index = (local - anchor) // length  # floor division: negative before the start date
    start = anchor + index * length
    person = rotation.members[index % len(rotation.members)]
    return Shift(person, _to_ms(start, zone), _to_ms(start + length, zone))


def on_call(rotation: Rotation, now_ms: int, overrides: Iterable[Override] = ()) -> Shift:
    """Who holds the rotation at ``now_ms``: the latest override covering it, else the schedule."""
    chosen: Override | None = None
    for o in (*rotation.overrides, *overrides):
        if o.start_ms <= now_ms < o.end_ms:
            chosen = o
    if chosen is not None:
        return Shift(chosen.person, chosen.start_ms, chosen.end_ms, override=True)
    return scheduled(rotation, now_ms)


def upcoming(rotation: Rotation, now_ms: int, count: int) -> list[Shift]:
    """The current scheduled shift and the next ``count - 1`` (overrides are listed apart)."""
    shifts: list[Shift] = []
    t = now_ms
    for _ in range(count):
        s = scheduled(rotation, t)
        shifts.append(s)
        t = s.end_ms
    return shifts
