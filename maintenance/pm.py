"""Preventive maintenance schedules and inspection rounds on a database session.

Calendar schedules (every N days/weeks/months, or once on a date) and meter schedules
(every N units of a meter such as pump running hours) generate work orders ahead of their
due date; rounds are generated per shift from a route's shift times, and a technician's
check-in records the time, the scanned checkpoint code and the checklist results.

Invariants:
- a schedule generates at most one work order per due date (``UniqueConstraint(pm_schedule_id,
  pm_due)``, and ``next_due`` advances in the same transaction);
- a check-in must carry the checkpoint's own code (what its QR code says): proof of presence;
- a failed checklist item (a fail, or a reading outside its limits) opens a work order;
- a round past its window with checkpoints not visited is flagged ``missed`` or ``partial``.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from maintenance import core
from maintenance.errors import InvalidError, NotFoundError
from maintenance.models import CheckIn, Checkpoint, Equipment, PmSchedule, Round, Route, WorkOrder
from maintenance.workorders import Policy, audit, create

if TYPE_CHECKING:
    from maintenance.workorders import SweepResult

SYSTEM_PM = "system:pm"
SYSTEM_INSPECTION = "system:inspection"
ITEM_TYPES: Final = ("pass_fail", "number", "note")
ROUND_HORIZON_MS: Final = core.DAY_MS


def new_code() -> str:
    """A checkpoint code: printed as its QR code, scanned at check-in."""
    return "cp-" + secrets.token_urlsafe(9)


# -- preventive maintenance ----------------------------------------------------------------------


def _pm_order(session: Session, sch: PmSchedule, due_label: str, due_ms: int | None, now_ms: int,
              policy: Policy) -> WorkOrder | None:
    exists = session.scalar(select(WorkOrder.id).where(WorkOrder.pm_schedule_id == sch.id,
                                                       WorkOrder.pm_due == due_label))
    if exists is not None:
        return None
    return create(session, actor=SYSTEM_PM, now_ms=now_ms, title=f"PM: {sch.title} (due {due_label})"[:300],
                  priority=sch.priority, source="pm", policy=policy, equipment_id=sch.equipment_id,
                  due_ms=due_ms, pm_schedule_id=sch.id, pm_due=due_label)


def sweep_pm(session: Session, now_ms: int, policy: Policy, result: SweepResult) -> None:
    for sch in session.scalars(select(PmSchedule).where(PmSchedule.active.is_(True))):
        if sch.kind == "calendar" and sch.next_due is not None:
            unit = sch.unit if sch.unit in ("days", "weeks", "months") else None
            dues = core.calendar_due(sch.next_due, sch.every, unit, sch.lead_days * core.DAY_MS,  # type: ignore[arg-type]
                                     now_ms)
            for day in dues:
                wo = _pm_order(session, sch, day.isoformat(), core.date_ms(day), now_ms, policy)
                if wo is not None:
                    result.pm_created.append(wo.id)
            if dues:
                if sch.every is None or unit is None:
                    sch.active = False  # a one-off schedule is done once generated
                else:
                    sch.next_due = core.add_interval(dues[-1], sch.every, unit)  # type: ignore[arg-type]
        elif sch.kind == "meter" and sch.meter_next_due is not None and sch.meter_every:
            while core.meter_due(sch.meter_next_due, sch.meter_lead, sch.meter_value):
                label = f"{sch.meter_metric or 'meter'}={sch.meter_next_due:g}"
                wo = _pm_order(session, sch, label, None, now_ms, policy)
                if wo is not None:
                    result.pm_created.append(wo.id)
                sch.meter_next_due += sch.meter_every


@dataclass(frozen=True, slots=True)
class RunSample:
    ts_ms: int
    running: bool


def accumulate_runtime(samples: Sequence[RunSample], last_ts_ms: int | None, last_running: bool | None,
                       max_gap_ms: int = 15 * 60_000) -> tuple[float, int | None, bool | None]:
    """Running hours added by ``samples`` (oldest first) after the last one counted.

    Time between two samples counts when the earlier one says running; a gap longer than
    ``max_gap_ms`` (device offline) counts nothing, rather than guessing."""
    hours = 0.0
    for s in samples:
        if last_ts_ms is not None and s.ts_ms <= last_ts_ms:
            continue
        if last_ts_ms is not None and last_running and s.ts_ms - last_ts_ms <= max_gap_ms:
            hours += (s.ts_ms - last_ts_ms) / 3_600_000
        last_ts_ms, last_running = s.ts_ms, s.running
    return hours, last_ts_ms, last_running


# -- inspection rounds ---------------------------------------------------------------------------


def check_checklist(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate a checkpoint's checklist; raise InvalidError naming the item and field."""
    keys: set[str] = set()
    out = []
    for i, item in enumerate(items):
        where = f"checklist[{i}]"
        key = item.get("key")
        if not isinstance(key, str) or not key:
            raise InvalidError(f"{where}.key", "is required (a short name such as 'pressure')")
        if key in keys:
            raise InvalidError(f"{where}.key", f"{key!r} is used twice")
        keys.add(key)
        kind = item.get("type")
        if kind not in ITEM_TYPES:
            raise InvalidError(f"{where}.type", f"must be one of {', '.join(ITEM_TYPES)}, got {kind!r}")
        lo, hi = item.get("min"), item.get("max")
        for name, bound in (("min", lo), ("max", hi)):
            if bound is not None and (kind != "number" or not isinstance(bound, int | float)):
                raise InvalidError(f"{where}.{name}", "is only for number items, and must be a number")
        if lo is not None and hi is not None and lo > hi:
            raise InvalidError(f"{where}.min", f"{lo} is above max {hi}")
        out.append(dict(item))
    return out


def _shift_times(day: dt.date, shifts: Sequence[str]) -> list[int]:
    out = []
    for s in shifts:
        hh, mm = s.split(":")
        out.append(core.date_ms(day) + (int(hh) * 60 + int(mm)) * 60_000)
    return out


def check_shifts(shifts: Sequence[str]) -> list[str]:
    for i, s in enumerate(shifts):
        try:
            t = dt.time.fromisoformat(s)
        except ValueError:
            raise InvalidError(f"shifts[{i}]", f"must be a time HH:MM (UTC), got {s!r}") from None
        if t.second or t.microsecond:
            raise InvalidError(f"shifts[{i}]", f"must be HH:MM without seconds, got {s!r}")
    return list(shifts)


def sweep_rounds(session: Session, now_ms: int, policy: Policy, result: SweepResult) -> None:
    today = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).date()
    for route in session.scalars(select(Route)):
        window = route.window_minutes * 60_000
        have = set(session.scalars(select(Round.scheduled_ms).where(Round.route_id == route.id,
                                                                   Round.scheduled_ms >= now_ms - window)))
        for day in (today, today + dt.timedelta(days=1)):
            for start in _shift_times(day, route.shifts):
                # Rounds from now on (and one still inside its window): no back-filling history.
                if now_ms - window < start <= now_ms + ROUND_HORIZON_MS and start not in have:
                    session.add(Round(route_id=route.id, scheduled_ms=start, due_ms=start + window,
                                      state="scheduled", missed_checkpoints=[]))
    for rnd in session.scalars(select(Round).where(Round.state == "scheduled", Round.due_ms < now_ms)):
        cps = set(session.scalars(select(Checkpoint.id).where(Checkpoint.route_id == rnd.route_id)))
        done = set(session.scalars(select(CheckIn.checkpoint_id).where(CheckIn.round_id == rnd.id)))
        missed = sorted(cps - done)
        rnd.state = "missed" if not done else ("partial" if missed else "done")
        rnd.missed_checkpoints = missed
        if missed:
            audit(session, actor=SYSTEM_INSPECTION, entity="round", entity_id=rnd.id, action="flag_missed",
                  now_ms=now_ms, from_state="scheduled", to_state=rnd.state, missed_checkpoints=missed)
            result.rounds_missed.append(rnd.id)


@dataclass(frozen=True, slots=True)
class Reading:
    """A numeric reading taken on a round, for the time-series store."""

    site: str
    checkpoint_code: str
    metric: str
    value: float
    ts_ms: int
    unit: str | None


def _evaluate(item: dict[str, Any], value: Any) -> tuple[bool, str]:
    """(passed, problem) for one answered checklist item."""
    kind, key = item["type"], item["key"]
    if kind == "pass_fail":
        if not isinstance(value, bool):
            raise InvalidError(f"results.{key}", f"must be true (pass) or false (fail), got {value!r}")
        return value, "" if value else f"{key}: failed"
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidError(f"results.{key}", f"must be a number, got {value!r}")
        lo, hi = item.get("min"), item.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            unit = f" {item['unit']}" if item.get("unit") else ""
            return False, f"{key}: {value:g} is outside [{lo}, {hi}]{unit}"
        return True, ""
    if not isinstance(value, str):
        raise InvalidError(f"results.{key}", f"must be text, got {value!r}")
    return True, ""


def check_in(session: Session, rnd: Round, *, code: str, technician: str, results: dict[str, Any],
             now_ms: int, policy: Policy) -> tuple[CheckIn, list[Reading]]:
    """Record a technician at a checkpoint of ``rnd`` with its checklist results."""
    cp = session.scalar(select(Checkpoint).where(Checkpoint.code == code))
    if cp is None or cp.route_id != rnd.route_id:
        raise InvalidError("code", f"{code!r} is not the code of a checkpoint on this round's route; "
                           "scan the QR code at the checkpoint")
    if rnd.state != "scheduled":
        raise InvalidError("round", f"round {rnd.id} is {rnd.state}; check-ins are closed")
    if session.scalar(select(CheckIn.id).where(CheckIn.round_id == rnd.id, CheckIn.checkpoint_id == cp.id)):
        raise InvalidError("code", f"checkpoint {cp.name!r} is already checked in on round {rnd.id}")
    items = {str(i["key"]): i for i in cp.checklist}
    unknown = sorted(set(results) - items.keys())
    if unknown:
        raise InvalidError(f"results.{unknown[0]}", f"is not on this checkpoint's checklist "
                           f"({', '.join(items) or 'empty'})")
    answered: list[dict[str, object]] = []
    failures: list[str] = []
    readings: list[Reading] = []
    route = session.get(Route, rnd.route_id)
    assert route is not None
    for key, item in items.items():
        if key not in results:
            if item["type"] != "note":
                raise InvalidError(f"results.{key}", "is required")
            continue
        passed, problem = _evaluate(item, results[key])
        answered.append({"key": key, "value": results[key], "passed": passed})
        if problem:
            failures.append(problem)
        if item["type"] == "number":
            readings.append(Reading(route.site_id, cp.code, key, float(results[key]), now_ms,
                                    str(item["unit"]) if item.get("unit") else None))
    ci = CheckIn(round_id=rnd.id, checkpoint_id=cp.id, ts_ms=now_ms, technician=technician, code=code,
                 results=answered)
    session.add(ci)
    if failures:
        eq = session.get(Equipment, cp.equipment_id) if cp.equipment_id else None
        wo = create(session, actor=SYSTEM_INSPECTION, now_ms=now_ms, priority="P3", source="inspection",
                    policy=policy, site_id=route.site_id, equipment_id=eq.id if eq else None,
                    title=f"Inspection failed at {cp.name}: {'; '.join(failures)}"[:300],
                    description=f"Round {rnd.id} of route {route.name!r}, by {technician}.")
        ci.work_order_id = wo.id
    session.flush()
    audit(session, actor=technician, entity="round", entity_id=rnd.id, action="check_in", now_ms=now_ms,
          checkpoint=cp.id, failures=failures)
    cps = set(session.scalars(select(Checkpoint.id).where(Checkpoint.route_id == rnd.route_id)))
    done = set(session.scalars(select(CheckIn.checkpoint_id).where(CheckIn.round_id == rnd.id)))
    if cps <= done:
        rnd.state = "done"
        rnd.technician = technician
    return ci, readings


def get_round(session: Session, round_id: int) -> Round:
    rnd = session.get(Round, round_id)
    if rnd is None:
        raise NotFoundError(f"round {round_id} does not exist")
    return rnd


# -- meters from telemetry ---------------------------------------------------------------------


def meter_devices(session: Session) -> set[tuple[str, str]]:
    """(site, device) of every active meter schedule that names a device: whose telemetry to follow."""
    rows = session.execute(select(Equipment.site_id, PmSchedule.device)
                           .join(Equipment, Equipment.id == PmSchedule.equipment_id)
                           .where(PmSchedule.active.is_(True), PmSchedule.kind == "meter",
                                  PmSchedule.device.is_not(None)))
    return {(site, device) for site, device in rows if device}


def apply_meter_readings(session: Session, site: str, device: str, readings: Sequence[tuple[int, str, Any]],
                         ) -> int:
    """Advance the meter schedules of (site, device) from telemetry readings (ts_ms, metric, value).

    A bool metric (e.g. ``running``) counts running hours between samples; a numeric one is
    taken as the meter's absolute reading (e.g. ``run_hours`` kept by the drive), never going
    back. Returns how many schedules moved."""
    schedules = session.scalars(select(PmSchedule).join(Equipment, Equipment.id == PmSchedule.equipment_id)
                                .where(Equipment.site_id == site, PmSchedule.device == device,
                                       PmSchedule.kind == "meter", PmSchedule.active.is_(True)))
    moved = 0
    for sch in schedules:
        mine = sorted((ts, v) for ts, metric, v in readings if metric == sch.meter_metric)
        if not mine:
            continue
        if all(isinstance(v, bool) for _, v in mine):
            hours, sch.meter_last_ts_ms, sch.meter_last_running = accumulate_runtime(
                [RunSample(ts, bool(v)) for ts, v in mine], sch.meter_last_ts_ms, sch.meter_last_running)
            sch.meter_value += hours
        else:
            values = [float(v) for _, v in mine if isinstance(v, int | float) and not isinstance(v, bool)]
            if values:
                sch.meter_value = max(sch.meter_value, *values)
        moved += 1
    return moved
