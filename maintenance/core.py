"""The sans-IO core of maintenance: the work order state machine, priorities, SLA timers,
the closed loop and preventive-maintenance due dates. Pure functions of data and ``now``.

Invariants:
- ``TRANSITIONS`` is the one state machine: every state change anywhere (API, consumer,
  sweeps) goes through ``check_transition``, which refuses anything not listed;
- ``cancelled`` is final; ``closed`` leaves only by a reopen (the fault came back);
- a work order holds its dedupe key (``open_key``) while it is not closed or cancelled,
  so there is at most one open work order per (equipment, fault);
- SLA deadlines are fixed when the work order is raised (from its priority); a breach is
  reported once per timer;
- times are epoch milliseconds.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from typing import Final, Literal

from maintenance.errors import TransitionError

State = Literal["new", "assigned", "in_progress", "on_hold", "resolved", "closed", "cancelled"]
STATES: Final[tuple[State, ...]] = ("new", "assigned", "in_progress", "on_hold", "resolved", "closed",
                                    "cancelled")
TRANSITIONS: Final[dict[State, tuple[State, ...]]] = {
    "new": ("assigned", "cancelled"),
    "assigned": ("in_progress", "new", "cancelled"),  # back to new = unassigned
    "in_progress": ("on_hold", "resolved", "cancelled"),
    "on_hold": ("in_progress", "cancelled"),
    # A resolved order goes back to work if the fix did not hold (or the fault returns).
    "resolved": ("closed", "in_progress", "assigned", "new"),
    # Closed leaves only by a reopen: the same fault came back within the reopen window.
    "closed": ("assigned", "new"),
    "cancelled": (),
}
OPEN_STATES: Final = frozenset(s for s in STATES if s not in ("closed", "cancelled"))

Priority = Literal["P1", "P2", "P3", "P4"]
PRIORITIES: Final[tuple[Priority, ...]] = ("P1", "P2", "P3", "P4")
SEVERITY_PRIORITY: Final[dict[str, Priority]] = {
    "critical": "P1", "major": "P2", "minor": "P3", "warning": "P4", "info": "P4",
}
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
# (time to respond, time to resolve) per priority. Respond = work started (in_progress).
DEFAULT_SLA_MS: Final[dict[Priority, tuple[int, int]]] = {
    "P1": (1 * HOUR_MS, 4 * HOUR_MS),
    "P2": (4 * HOUR_MS, 24 * HOUR_MS),
    "P3": (24 * HOUR_MS, 3 * DAY_MS),
    "P4": (3 * DAY_MS, 14 * DAY_MS),
}


def check_transition(current: str, target: str) -> State:
    """Return ``target`` if the machine allows current → target, else raise TransitionError."""
    if current not in TRANSITIONS:
        raise TransitionError(current, target, ())
    allowed = TRANSITIONS[current]
    if target not in allowed:
        raise TransitionError(current, target, allowed)
    return target


def priority_for(severity: str) -> Priority:
    return SEVERITY_PRIORITY.get(severity, "P3")


def higher_priority(a: str, b: str) -> str:
    """The more urgent of two priorities (P1 is the most urgent)."""
    return min(a, b)


def sla_due(priority: str, raised_ms: int,
            sla: dict[Priority, tuple[int, int]] = DEFAULT_SLA_MS) -> tuple[int, int]:
    """(respond by, resolve by) for a work order raised at ``raised_ms``."""
    respond, resolve = sla.get(priority, sla["P3"])  # type: ignore[call-overload]
    return raised_ms + respond, raised_ms + resolve


@dataclass(frozen=True, slots=True)
class SlaView:
    """What the SLA check needs to know about one work order."""

    state: str
    respond_due_ms: int | None
    resolve_due_ms: int | None
    responded_ms: int | None
    resolved_ms: int | None
    respond_breached_ms: int | None
    resolve_breached_ms: int | None


SlaTimer = Literal["respond", "resolve"]


def sla_breaches(wo: SlaView, now_ms: int) -> list[SlaTimer]:
    """The timers of ``wo`` that have just breached (not reported before)."""
    if wo.state == "cancelled":
        return []
    out: list[SlaTimer] = []
    if (wo.respond_due_ms is not None and wo.respond_breached_ms is None
            and wo.responded_ms is None and now_ms > wo.respond_due_ms):
        out.append("respond")
    if (wo.resolve_due_ms is not None and wo.resolve_breached_ms is None
            and wo.resolved_ms is None and now_ms > wo.resolve_due_ms):
        out.append("resolve")
    return out


Decision = Literal["create", "attach", "reopen", "ignore"]


def anomaly_decision(state: str | None, anomaly_state: str, closed_ms: int | None, now_ms: int,
                     reopen_window_ms: int) -> Decision:
    """What an anomaly event does to the work order that holds its (equipment, fault) key.

    ``state`` is the open work order's state (None if there is none); with no open order,
    ``closed_ms`` is when the latest order for the same key was closed (None if never)."""
    if state is not None:
        if state == "resolved" and anomaly_state in ("open", "updated"):
            return "reopen"
        return "attach"
    if anomaly_state == "cleared":
        return "ignore"  # nothing to raise for a fault that is already gone
    if closed_ms is not None and now_ms - closed_ms <= reopen_window_ms:
        return "reopen"
    return "create"


def verify_due(state: str, anomaly_active: bool, resolved_ms: int | None, cleared_ms: int | None,
               hold_ms: int, now_ms: int) -> bool:
    """Whether a resolved order's fault has stayed cleared long enough to close it as verified."""
    if state != "resolved" or anomaly_active or resolved_ms is None:
        return False
    since = max(resolved_ms, cleared_ms or 0)
    return now_ms - since >= hold_ms


def reopen_target(assignee: str | None) -> State:
    return "assigned" if assignee else "new"


# -- preventive maintenance -------------------------------------------------------------------

Unit = Literal["days", "weeks", "months"]


def add_interval(day: dt.date, every: int, unit: Unit) -> dt.date:
    """``day`` plus ``every`` units; months keep the day of month, clamped to the month's end."""
    if unit == "days":
        return day + dt.timedelta(days=every)
    if unit == "weeks":
        return day + dt.timedelta(weeks=every)
    month0 = day.month - 1 + every
    year, month = day.year + month0 // 12, month0 % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def date_ms(day: dt.date) -> int:
    """Midnight UTC of ``day`` in epoch milliseconds."""
    return calendar.timegm(day.timetuple()) * 1000


def calendar_due(next_due: dt.date, every: int | None, unit: Unit | None, lead_ms: int,
                 now_ms: int, until: dt.date | None = None) -> list[dt.date]:
    """The due dates whose work orders should be generated now (due - lead <= now), oldest
    first. A one-off schedule (``every`` None) yields its date at most once."""
    out: list[dt.date] = []
    day = next_due
    while date_ms(day) - lead_ms <= now_ms and (until is None or day <= until):
        out.append(day)
        if every is None or unit is None or len(out) >= 1000:
            break
        day = add_interval(day, every, unit)
    return out


def meter_due(next_due_value: float, lead_value: float, meter: float) -> bool:
    """Whether a meter-based schedule should generate its next order now."""
    return meter + lead_value >= next_due_value
