"""Maintenance core and database logic, on SQLite and PostgreSQL: the state machine, work
orders from anomaly events (idempotent), SLA breaches, the closed loop, PM and rounds."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from maintenance import core, pm
from maintenance.errors import TransitionError
from maintenance.models import Audit, Outbox, PmSchedule, Round, Route, Site, WorkOrder
from maintenance.service import Message, apply_messages, sweep
from maintenance.workorders import Policy, assign, history, transition
from tests import test_maintenance_support as support
from tests.test_maintenance_support import T0, anomaly, ledger, new_site, payload
from wire import AlarmTopic, WireError
from wire.anomaly import Anomaly
from wire.workorder import SlaBreach, decode_sla_breach, encode_sla_breach, sla_topic

# The shared fixtures (a fresh database per module on SQLite and on PostgreSQL).
database_url = support.database_url
engine = support.engine
POLICY = Policy(verify_hold_ms=3_600_000, reopen_window_ms=7 * core.DAY_MS)


# -- the sans-IO core ------------------------------------------------------------------------


def test_every_transition_is_allowed_or_refused_with_the_allowed_list() -> None:
    for current, target in itertools.product(core.STATES, core.STATES):
        if target in core.TRANSITIONS[current]:
            assert core.check_transition(current, target) == target
        else:
            with pytest.raises(TransitionError) as e:
                core.check_transition(current, target)
            assert e.value.allowed == core.TRANSITIONS[current]
            assert current in str(e.value) and target in str(e.value)
    assert core.TRANSITIONS["cancelled"] == ()
    # The happy path of the issue is a path through the machine.
    path = ["new", "assigned", "in_progress", "on_hold", "in_progress", "resolved", "closed"]
    for a, b in itertools.pairwise(path):
        core.check_transition(a, b)


def test_severity_maps_to_priority_and_sla() -> None:
    assert core.priority_for("critical") == "P1" and core.priority_for("warning") == "P4"
    respond, resolve = core.sla_due("P1", T0)
    assert (respond - T0, resolve - T0) == (3_600_000, 4 * 3_600_000)
    view = core.SlaView("new", T0 + 10, T0 + 20, None, None, None, None)
    assert core.sla_breaches(view, T0 + 10) == []
    assert core.sla_breaches(view, T0 + 11) == ["respond"]
    assert core.sla_breaches(view, T0 + 21) == ["respond", "resolve"]
    answered = core.SlaView("in_progress", T0 + 10, T0 + 20, T0 + 5, None, None, None)
    assert core.sla_breaches(answered, T0 + 21) == ["resolve"]


def test_calendar_due_dates_and_month_ends() -> None:
    assert core.add_interval(dt.date(2026, 1, 31), 1, "months") == dt.date(2026, 2, 28)
    assert core.add_interval(dt.date(2026, 11, 30), 3, "months") == dt.date(2027, 2, 28)
    now = core.date_ms(dt.date(2026, 3, 10))
    # Weekly from 1 March, generated 2 days ahead: 1, 8 and (10+2 >= 15? no) -> 1 and 8 only.
    dues = core.calendar_due(dt.date(2026, 3, 1), 1, "weeks", 2 * core.DAY_MS, now)
    assert dues == [dt.date(2026, 3, 1), dt.date(2026, 3, 8)]
    assert core.calendar_due(dt.date(2026, 3, 12), 1, "weeks", 2 * core.DAY_MS, now) == [dt.date(2026, 3, 12)]
    assert core.calendar_due(dt.date(2026, 3, 13), None, None, 2 * core.DAY_MS, now) == []


def test_runtime_hours_from_running_samples() -> None:
    h = 3_600_000
    samples = [pm.RunSample(T0 + i * 600_000, running=i < 6) for i in range(10)]  # 10-minute samples
    hours, last, running = pm.accumulate_runtime(samples, None, None)
    assert hours == pytest.approx(1.0) and last == T0 + 9 * 600_000 and running is False
    # Counted once: the same samples again add nothing; a long gap adds nothing.
    assert pm.accumulate_runtime(samples, last, running)[0] == 0
    gap = [pm.RunSample(T0, True), pm.RunSample(T0 + 2 * h, True)]
    assert pm.accumulate_runtime(gap, None, None)[0] == 0


def test_anomaly_decisions() -> None:
    assert core.anomaly_decision(None, "open", None, T0, 1000) == "create"
    assert core.anomaly_decision(None, "cleared", None, T0, 1000) == "ignore"
    assert core.anomaly_decision("in_progress", "open", None, T0, 1000) == "attach"
    assert core.anomaly_decision("resolved", "open", None, T0, 1000) == "reopen"
    assert core.anomaly_decision(None, "open", T0 - 1000, T0, 1000) == "reopen"
    assert core.anomaly_decision(None, "open", T0 - 1001, T0, 1000) == "create"


# -- on the database (both) -------------------------------------------------------------------


def _message(site: str, device: str, a: Anomaly, mid: int = 1) -> Message:
    return Message(mid, 1, AlarmTopic(site, device).format(), payload(a))


def _apply(engine: Engine, site: str, device: str, *events: Anomaly, now: int = T0) -> None:
    with Session(engine) as s, s.begin():
        apply_messages(s, [_message(site, device, a) for a in events], now_ms=now, policy=POLICY)


def _orders(engine: Engine, site: str) -> list[WorkOrder]:
    with Session(engine, expire_on_commit=False) as s:
        return list(s.scalars(select(WorkOrder).where(WorkOrder.site_id == site).order_by(WorkOrder.id)))


def test_replaying_an_anomaly_ten_times_gives_one_work_order(engine: Engine) -> None:
    site = new_site()
    a = anomaly("an-1")
    for _ in range(10):
        _apply(engine, site, "pump-01", a)
    _apply(engine, site, "pump-01", *[a] * 10)  # and ten times within one batch
    [wo] = _orders(engine, site)
    assert (wo.state, wo.priority, wo.source, wo.fault, wo.occurrences) == (
        "new",
        "P2",
        "anomaly",
        "vibration_high",
        1,
    )
    assert wo.respond_due_ms == T0 + 4 * 3_600_000 and wo.anomaly_active


def test_later_occurrences_attach_and_escalate_and_other_faults_open_their_own(engine: Engine) -> None:
    site = new_site()
    eq_id = ledger(engine, site, "pump-01", "pump-01-vfd")
    _apply(engine, site, "pump-01", anomaly("a1", severity="minor"))
    _apply(engine, site, "pump-01", anomaly("a1", "cleared", T0 + 1000, severity="minor"))
    # The same fault again, on another device of the same equipment, more severe: same order.
    _apply(engine, site, "pump-01-vfd", anomaly("a2", ts_ms=T0 + 2000, severity="critical"))
    _apply(engine, site, "pump-01", anomaly("a3", ts_ms=T0 + 3000, fault="sensor_stuck"))
    first, second = _orders(engine, site)
    assert first.equipment_id == eq_id == second.equipment_id
    assert (first.occurrences, first.priority, first.anomaly_active) == (2, "P1", True)
    assert second.fault == "sensor_stuck"
    with Session(engine) as s:
        actions = [h.action for h in history(s, first.id)]
    assert actions[:2] == ["create", "anomaly_cleared"] and "occurrence" in actions and "escalate" in actions


def test_the_closed_loop_verifies_closes_and_reopens_with_history(engine: Engine) -> None:
    site = new_site()
    _apply(engine, site, "pump-02", anomaly("b1"))
    [wo] = _orders(engine, site)
    with Session(engine) as s, s.begin():
        w = s.get_one(WorkOrder, wo.id)
        assign(s, w, assignee="tom", crew="mech", actor="jane", now_ms=T0 + 10)
        transition(s, w, "in_progress", actor="tom", now_ms=T0 + 20)
        transition(s, w, "resolved", actor="tom", now_ms=T0 + 30, note="replaced the bearing")
    # Resolved while the anomaly is still on: never verified.
    with Session(engine) as s, s.begin():
        assert wo.id not in sweep(s, T0 + 10 * 3_600_000, POLICY).verified
    cleared = T0 + 10 * 3_600_000
    _apply(engine, site, "pump-02", anomaly("b1", "cleared", cleared), now=cleared)
    with Session(engine) as s, s.begin():
        assert wo.id not in sweep(s, cleared + 3_599_000, POLICY).verified
    with Session(engine) as s, s.begin():
        assert wo.id in sweep(s, cleared + 3_600_000, POLICY).verified
    [wo] = _orders(engine, site)
    assert wo.state == "closed" and wo.open_key is None
    # The fault returns within the window: the same order reopens, assigned to the same person.
    back = cleared + 2 * core.DAY_MS
    _apply(engine, site, "pump-02", anomaly("b2", ts_ms=back), now=back)
    [wo] = _orders(engine, site)
    assert (wo.state, wo.assignee, wo.reopened, wo.occurrences) == ("assigned", "tom", 1, 2)
    assert wo.respond_due_ms == back + 4 * 3_600_000  # a reopened order gets fresh SLA timers
    with Session(engine) as s:
        trail = [(h.action, h.from_state, h.to_state, h.actor) for h in history(s, wo.id)]
    assert ("transition", "resolved", "closed", "system:verify") in trail
    assert ("reopen", "closed", "assigned", "system:anomaly") in trail
    # Closed again, and the fault returns after the window: a new order.
    with Session(engine) as s, s.begin():
        w = s.get_one(WorkOrder, wo.id)
        transition(s, w, "cancelled", actor="jane", now_ms=back + 1)
    late = back + 8 * core.DAY_MS
    _apply(engine, site, "pump-02", anomaly("b3", ts_ms=late), now=late)
    assert [w.state for w in _orders(engine, site)] == ["cancelled", "new"]


def test_a_resolved_order_reopens_when_its_fault_comes_back_before_verification(engine: Engine) -> None:
    site = new_site()
    _apply(engine, site, "ahu-01", anomaly("c1"))
    [wo] = _orders(engine, site)
    with Session(engine) as s, s.begin():
        w = s.get_one(WorkOrder, wo.id)
        assign(s, w, assignee="ann", crew=None, actor="jane", now_ms=T0)
        transition(s, w, "in_progress", actor="ann", now_ms=T0)
        transition(s, w, "resolved", actor="ann", now_ms=T0)
    _apply(engine, site, "ahu-01", anomaly("c1", "updated", T0 + 5000))
    [wo] = _orders(engine, site)
    assert wo.state == "assigned" and wo.resolved_ms is None


def test_sla_breaches_are_recorded_once_and_queued_for_the_bus(engine: Engine) -> None:
    site = new_site()
    _apply(engine, site, "chiller-01", anomaly("d1", severity="critical"))  # P1: respond 1 h, resolve 4 h
    [wo] = _orders(engine, site)

    def mine(now: int) -> list[SlaBreach]:
        # The module's database holds other tests' orders too.
        with Session(engine) as s, s.begin():
            return [b for b in sweep(s, now, POLICY).breaches if b.work_order == wo.id]

    assert mine(T0 + 3_600_000) == []
    [breach] = mine(T0 + 3_600_001)
    assert (breach.timer, breach.priority, breach.device) == ("respond", "P1", "chiller-01")
    assert [b.timer for b in mine(T0 + 5 * 3_600_000)] == ["resolve"]
    assert mine(T0 + 6 * 3_600_000) == []
    with Session(engine) as s:
        rows = list(s.scalars(select(Outbox).where(Outbox.topic == f"vigil/v1/{site}/_maintenance/sla")))
        assert [decode_sla_breach(r.payload).timer for r in rows] == ["respond", "resolve"]
        [wo] = _orders(engine, site)
        assert wo.respond_breached_ms == T0 + 3_600_001
        n = s.scalar(
            select(func.count())
            .select_from(Audit)
            .where(Audit.entity_id == str(wo.id), Audit.action == "sla_breach")
        )
        assert n == 2


def test_pm_calendar_schedule_generates_ahead_and_never_twice(engine: Engine) -> None:
    site = new_site()
    eq_id = ledger(engine, site)
    with Session(engine) as s, s.begin():
        sch = PmSchedule(
            title="Grease bearings",
            equipment_id=eq_id,
            kind="calendar",
            priority="P3",
            next_due=dt.date(2026, 12, 1),
            every=1,
            unit="months",
            lead_days=7,
            active=True,
        )
        s.add(sch)
        s.flush()
        sch_id = sch.id
    before = core.date_ms(dt.date(2026, 11, 23))
    with Session(engine) as s, s.begin():
        sweep(s, before, POLICY)
    assert _orders(engine, site) == []
    for _ in range(3):  # sweeping again (or twice at once) does not raise it twice
        with Session(engine) as s, s.begin():
            sweep(s, before + core.DAY_MS, POLICY)
    [wo] = _orders(engine, site)
    assert (wo.source, wo.pm_due, wo.equipment_id) == ("pm", "2026-12-01", eq_id)
    assert wo.due_ms == core.date_ms(dt.date(2026, 12, 1))
    with Session(engine) as s, s.begin():
        s.get_one(PmSchedule, sch_id).next_due = dt.date(2026, 12, 1)  # as if a crash lost the advance
    with Session(engine) as s, s.begin():
        sweep(s, core.date_ms(dt.date(2026, 12, 26)), POLICY)
    assert [w.pm_due for w in _orders(engine, site)] == ["2026-12-01", "2027-01-01"]


def test_meter_schedule_every_2000_running_hours(engine: Engine) -> None:
    site = new_site()
    eq_id = ledger(engine, site)
    with Session(engine) as s, s.begin():
        s.add(
            PmSchedule(
                title="Pump overhaul",
                equipment_id=eq_id,
                kind="meter",
                priority="P3",
                active=True,
                meter_metric="running",
                meter_every=2000.0,
                meter_lead=50.0,
                meter_value=1900.0,
                meter_next_due=2000.0,
                lead_days=0,
            )
        )
    with Session(engine) as s, s.begin():
        sweep(s, T0, POLICY)
    assert _orders(engine, site) == []
    with Session(engine) as s, s.begin():
        s.scalars(select(PmSchedule).where(PmSchedule.equipment_id == eq_id)).one().meter_value = 1960.0
    with Session(engine) as s, s.begin():
        sweep(s, T0, POLICY)
        sweep(s, T0, POLICY)
    [wo] = _orders(engine, site)
    assert wo.pm_due == "running=2000"


def test_rounds_are_generated_per_shift_and_missed_ones_flagged(engine: Engine) -> None:
    site = new_site()
    with Session(engine) as s, s.begin():
        s.add(Site(id=site, name=site))
        s.flush()
        route = Route(site_id=site, name="Plant room", shifts=["06:00", "18:00"], window_minutes=60)
        s.add(route)
        s.flush()
        route_id = route.id
    midnight = core.date_ms(dt.date(2026, 11, 17))
    with Session(engine) as s, s.begin():
        sweep(s, midnight + 3_600_000, POLICY)
        sweep(s, midnight + 3_600_000, POLICY)
    with Session(engine) as s:
        starts = list(
            s.scalars(
                select(Round.scheduled_ms).where(Round.route_id == route_id).order_by(Round.scheduled_ms)
            )
        )
    hour = 3_600_000
    assert starts == [midnight + 6 * hour, midnight + 18 * hour]
    with Session(engine) as s, s.begin():
        sweep(s, midnight + 7 * hour + 1, POLICY)
    with Session(engine) as s:
        states = list(s.scalars(select(Round.state).where(Round.route_id == route_id).order_by(Round.id)))
    assert states[0] == "missed"


def test_sla_breach_events_decode_strictly() -> None:
    event = SlaBreach(v=1, id="wo12-respond-0", work_order=12, timer="respond", priority="P1", state="new",
                      due_ms=T0, breached_ms=T0 + 1, title="Pump vibration", equipment="P-101")
    assert decode_sla_breach(encode_sla_breach(event)) == event
    assert sla_topic("tower-a") == "vigil/v1/tower-a/_maintenance/sla"
    bad = encode_sla_breach(event).replace(b'"respond"', b'"answer"', 1)
    with pytest.raises(WireError, match=r"invalid sla breach: .*\$\.timer"):
        decode_sla_breach(bad)
    with pytest.raises(WireError, match="not valid JSON"):
        decode_sla_breach(b"{")
    with pytest.raises(WireError, match="Object contains unknown field `colour`"):
        decode_sla_breach(encode_sla_breach(event)[:-1] + b',"colour":"red"}')
