"""Timelines of the alerting core on a simulated clock: dedup, grouping, escalation with
ack, inhibition, silences, life safety, rotations, and the delivery outbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerting.config import Contact, Override, parse_config
from alerting.engine import Alert, Engine, Notify, Stop
from alerting.errors import AlertingError
from alerting.outbox import Message, Outbox
from alerting.rotation import on_call, scheduled
from alerting.signals import broker_alert, from_status
from wire import Status, StatusTopic

T0 = 1_795_000_000_000


def config(**extra: Any) -> Any:
    raw: dict[str, Any] = {
        "channels": {"push": {"kind": "apprise", "rate_per_min": 2}, "mail": {"kind": "apprise"}},
        "people": {p: {"contacts": [{"channel": "push", "to": f"json://127.0.0.1:1/{p}"}]}
                   for p in ("tech1", "tech2", "super", "chief")},
        "rotations": {"techs": {"members": ["tech1", "tech2"], "shift": "daily", "handoff": "08:00",
                                "timezone": "Europe/Paris", "start": "2026-01-05"}},
        "policies": {"standard": {"steps": [
            {"notify": ["rotation:techs"], "delay_min": 5},
            {"notify": ["person:super"], "delay_min": 10},
            {"notify": ["person:chief"], "delay_min": 15}], "repeat": 1}},
        "routes": [{"name": "all", "policy": "standard", "group_wait_s": 30, "group_window_s": 300}],
    }
    raw.update(extra)
    return parse_config(raw)


def alert(key: str = "s1/pump-1/vibration_high", n: int = 0, **kw: Any) -> Alert:
    base: dict[str, Any] = {"key": key, "event_id": f"{key}:{n}", "site": "s1", "building": "s1",
                            "event_type": key.rsplit("/", 1)[-1], "severity": "major",
                            "summary": "vibration high",
                            "ts_ms": T0, "device": key.split("/")[1], "agent": "gw1"}
    base.update(kw)
    return Alert(**base)


def run(engine: Engine, start_ms: int, end_ms: int, step_ms: int = 1000) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    for t in range(start_ms, end_ms + 1, step_ms):
        out.extend((t, a) for a in engine.tick(t))
    return out


def test_escalation_fires_at_its_delay_and_stops_on_ack() -> None:
    e = Engine(config())
    d = e.handle(alert(), T0)
    assert d.outcome == "new"
    assert e.tick(T0 + 29_000) == []  # group wait
    first = e.tick(T0 + 30_000)
    assert [(a.person, a.step) for a in first if isinstance(a, Notify)] == [(on_call(
        e.config.rotations["techs"], T0 + 30_000).person, 0)]
    events = run(e, T0 + 31_000, T0 + 30_000 + 16 * 60_000)
    supers = [t for t, a in events if isinstance(a, Notify) and a.person == "super"]
    assert len(supers) == 1 and abs(supers[0] - (T0 + 30_000 + 5 * 60_000)) <= 1000
    chiefs = [t for t, a in events if isinstance(a, Notify) and a.person == "chief"]
    assert len(chiefs) == 1 and abs(chiefs[0] - (T0 + 30_000 + 15 * 60_000)) <= 1000
    ack = e.ack(d.incident_id or "", "chief", T0 + 30_000 + 16 * 60_000)
    assert ack.outcome == "acked" and isinstance(ack.actions[0], Stop)
    assert run(e, T0 + 17 * 60_000, T0 + 3 * 3_600_000, 10_000) == []


def test_policy_repeats_then_stops() -> None:
    e = Engine(config())
    e.handle(alert(), T0)
    events = run(e, T0, T0 + 4 * 3_600_000, 1000)
    people = [a.person for _, a in events if isinstance(a, Notify)]
    # two rounds (repeat: 1) of rotation -> super -> chief, then the ladder is exhausted
    assert people[1:3] == ["super", "chief"] and people[4:6] == ["super", "chief"] and len(people) == 6
    times = [t for t, a in events if isinstance(a, Notify)]
    assert abs(times[3] - (T0 + 30_000 + 30 * 60_000)) <= 1000  # round 2 after 5+10+15 min


def test_same_alarm_replayed_ten_times_pages_once() -> None:
    e = Engine(config())
    for _ in range(10):
        e.handle(alert(n=0), T0)  # the very same message redelivered
    for n in range(1, 10):
        e.handle(alert(n=n), T0 + n)  # new messages about the same problem
    notes = [a for _, a in run(e, T0, T0 + 60_000) if isinstance(a, Notify)]
    assert len(notes) == 1 and e.pages == 1
    assert len(e.incidents) == 1


def test_grouping_per_building_within_the_window() -> None:
    e = Engine(config())
    for i in range(20):
        e.handle(alert(f"s1/dev-{i}/temp_high", building="b-east" if i % 2 else "b-west"), T0 + i * 100)
    run(e, T0, T0 + 60_000)
    assert e.pages == 2
    titles = sorted(i.title for i in e.incidents.values())
    assert all("(+9 more)" in t for t in titles)
    # after the window a new alert makes a new incident
    e.handle(alert("s1/dev-99/temp_high", building="b-east"), T0 + 400_000)
    run(e, T0 + 400_000, T0 + 460_000)
    assert e.pages == 3


def test_broker_outage_folds_500_device_offline_alarms() -> None:
    e = Engine(config())
    e.handle(broker_alert("127.0.0.1", 1883, True, T0), T0)
    for i in range(500):
        b = f"b{i % 5}"
        a = alert(f"s1/dev-{i}/device_offline", building=b, offline=True, agent=f"gw{i % 10}")
        e.handle(a, T0 + 1000 + i)
    run(e, T0, T0 + 120_000, 1000)
    e.handle(broker_alert("127.0.0.1", 1883, False, T0 + 120_000), T0 + 120_000)
    for i in range(500, 520):  # the aftermath: devices report back while the hold lasts
        e.handle(alert(f"s1/dev-{i}/device_offline", offline=True), T0 + 180_000)
    run(e, T0 + 120_000, T0 + 600_000, 1000)
    assert e.pages <= 1 + 5
    assert e.pages == 1  # everything folded into the outage's incident
    outage = next(i for i in e.incidents.values() if i.scope == ("broker",))
    assert outage.folded == 520


def test_device_offline_without_inhibitor_pages_once_per_building() -> None:
    e = Engine(config())
    for i in range(500):
        e.handle(alert(f"s1/dev-{i}/device_offline", building=f"b{i % 5}", offline=True), T0 + i)
    run(e, T0, T0 + 120_000, 1000)
    assert e.pages == 5


def test_agent_down_folds_its_devices_even_when_they_arrive_first() -> None:
    e = Engine(config())
    for i in range(10):
        e.learn("s1", "gw7", f"dev-{i}")
    for i in range(10):  # device-offline alarms race ahead of the agent's last will
        e.handle(alert(f"s1/dev-{i}/device_offline", offline=True, agent=None), T0 + i)
    st = Status(v=1, state="offline", ts_ms=T0, reason="connection lost")
    e.handle(from_status(StatusTopic("s1", "gw7"), st, e.config), T0 + 2000)
    run(e, T0, T0 + 120_000)
    assert e.pages == 1
    parent = next(i for i in e.incidents.values() if i.scope is not None)
    assert parent.folded == 10 and "connection lost" in parent.title
    back = Status(v=1, state="online", ts_ms=T0 + 200_000, boot=2)
    d = e.handle(from_status(StatusTopic("s1", "gw7"), back, e.config), T0 + 200_000)
    assert d.outcome == "resolved"


def test_silence_and_work_order_hold_pages_but_life_safety_goes_through() -> None:
    e = Engine(config(silences=[{"sites": ["s1"], "reason": "maintenance window"}]))
    assert e.handle(alert(), T0).outcome == "silenced"
    e2 = Engine(config())
    e2.work_orders[("s1", "pump-1")] = "WO-17"
    d = e2.handle(alert(), T0)
    assert d.outcome == "silenced" and "WO-17" in (e2.incidents[d.incident_id or ""].silenced_by or "")
    fire = alert("s1/panel-1/fire_alarm", severity="critical", summary="fire alarm zone 3")
    d = e.handle(fire, T0)
    assert d.outcome == "new"
    notes = [a for a in e.tick(T0) if isinstance(a, Notify)]  # no group wait
    assert notes and notes[0].life_safety
    e.handle(alert("s1/panel-2/fire_alarm", severity="critical"), T0 + 10)
    e.tick(T0 + 10)
    assert e.pages == 2  # never grouped away


def test_clear_before_the_page_resolves_quietly() -> None:
    e = Engine(config())
    e.handle(alert(), T0)
    d = e.handle(alert(n=1, clear=True), T0 + 5000)
    assert d.outcome == "resolved"
    assert run(e, T0, T0 + 60_000) == [] and e.pages == 0


def test_rotation_handoff_in_local_time_and_overrides() -> None:
    cfg = config()
    rot = cfg.rotations["techs"]
    paris_0759 = int(datetime(2026, 3, 10, 6, 59, tzinfo=UTC).timestamp() * 1000)  # 07:59 CET
    paris_0801 = paris_0759 + 2 * 60_000
    a, b = scheduled(rot, paris_0759), scheduled(rot, paris_0801)
    assert a.person != b.person and a.end_ms == b.start_ms == paris_0759 + 60_000
    # after the change to summer time the handoff is still 08:00 local (06:00 UTC)
    summer = int(datetime(2026, 4, 2, 6, 0, tzinfo=UTC).timestamp() * 1000)
    assert scheduled(rot, summer).start_ms == summer
    o = Override(person="chief", start_ms=paris_0801, end_ms=paris_0801 + 3_600_000)
    assert on_call(rot, paris_0801 + 1, [o]).person == "chief"
    assert on_call(rot, paris_0801 + 3_600_000, [o]).person == b.person


def test_bad_config_names_the_key() -> None:
    with pytest.raises(AlertingError, match=r"policies.p.steps\[0\].notify: no rotation 'nope'"):
        parse_config({"policies": {"p": {"steps": [{"notify": ["rotation:nope"]}]}}})
    with pytest.raises(AlertingError, match="timezone"):
        parse_config({"people": {"a": {"contacts": [{"channel": "c", "to": "x://"}]}},
                      "channels": {"c": {}}, "rotations": {"r": {"members": ["a"], "timezone": "Mars/Base"}}})


def test_outbox_retries_fails_over_and_cycles() -> None:
    cfg = config()
    box = Outbox(cfg.channels, retry_s=2, cycle_s=30)
    methods = (Contact(channel="push", to="a", attempts=2), Contact(channel="mail", to="b", attempts=1))
    box.add(Message("i1", "tech1", "t", "b"), methods, T0)
    (a1,) = box.due(T0)
    assert a1.channel == "push" and box.report(a1, False, T0) == "retry"
    assert box.due(T0 + 1000) == []
    (a2,) = box.due(T0 + 2000)
    assert box.report(a2, False, T0 + 2000) == "failover"
    (a3,) = box.due(T0 + 2000)
    assert a3.channel == "mail" and box.report(a3, False, T0 + 2000) == "cycle"
    (a4,) = box.due(T0 + 32_000)
    assert a4.channel == "push" and a4.number == 4
    assert box.report(a4, True, T0 + 32_000) == "delivered" and box.pending == 0


def test_outbox_rate_limit_spares_life_safety() -> None:
    cfg = config()  # push: 2 per minute
    box = Outbox(cfg.channels)
    m = (Contact(channel="push", to="a"),)
    for i in range(5):
        box.add(Message(f"i{i}", "p", "t", "b"), m, T0)
    box.add(Message("fire", "p", "t", "b", life_safety=True), m, T0)
    got = box.due(T0)
    assert [a.message.incident_id for a in got] == ["fire", "i0", "i1"]
    assert box.due(T0 + 1000) == []
    assert len(box.due(T0 + 31_000)) == 1


def test_device_events_clear_and_life_safety_leak_in_an_electrical_room() -> None:
    from alerting.signals import from_event
    from wire import Event, EventTopic

    cfg = config()
    e = Engine(cfg)
    topic = EventTopic("s1", "gw1", "elec-room-leak-1")
    leak = from_event(topic, Event(v=1, seq=1, ts_ms=T0, kind="leak", severity="major"), cfg)
    assert leak is not None and e.is_life_safety(leak)
    cellar = from_event(EventTopic("s1", "gw1", "cellar-leak"),
                        Event(v=1, seq=1, ts_ms=T0, kind="leak", severity="major"), cfg)
    assert cellar is not None and not e.is_life_safety(cellar)
    assert from_event(topic, Event(v=1, seq=2, ts_ms=T0, kind="door_opened", severity="info"), cfg) is None
    d = e.handle(leak, T0)
    cleared = from_event(topic, Event(v=1, seq=3, ts_ms=T0 + 5, kind="leak_cleared", severity="info"), cfg)
    assert cleared is not None and cleared.clear and cleared.key == leak.key
    e.tick(T0)
    assert e.handle(cleared, T0 + 10).outcome == "resolved"
    assert e.incidents[d.incident_id or ""].state == "resolved"


def test_links_are_signed_and_bound_to_their_fields() -> None:
    from alerting.links import make_link, token_hash, verify

    link = make_link(b"k" * 32, "inc-1", "ack", "ana", T0)
    assert verify(b"k" * 32, link.token, "inc-1", "ack", "ana", T0)
    assert not verify(b"k" * 32, link.token, "inc-2", "ack", "ana", T0)
    assert not verify(b"k" * 32, link.token, "inc-1", "resolve", "ana", T0)
    assert not verify(b"other-secret-000", link.token, "inc-1", "ack", "ana", T0)
    assert link.token_sha256 == token_hash(link.token) and link.token not in link.token_sha256
    assert make_link(b"k" * 32, "inc-1", "ack", "ana", T0).token != link.token


def test_weekly_rotation_and_who_is_next() -> None:
    from alerting.config import Rotation
    from alerting.rotation import upcoming

    rot = Rotation.model_validate({"members": ["tech1", "tech2", "super"], "shift": "weekly",
                                   "handoff": "09:30", "timezone": "America/New_York", "start": "2026-01-05"})
    shifts = upcoming(rot, T0, 4)
    assert [s.end_ms - s.start_ms for s in shifts[:1]] in ([7 * 86_400_000], [7 * 86_400_000 + 3_600_000],
                                                           [7 * 86_400_000 - 3_600_000])
    people = [s.person for s in shifts]
    assert len(set(people[:3])) == 3 and people[3] == people[0]
    local = datetime.fromtimestamp(shifts[1].start_ms / 1000, tz=ZoneInfo(rot.timezone))
    assert (local.hour, local.minute, local.weekday()) == (9, 30, 0)  # Monday 09:30 in New York


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2), st.booleans(), st.booleans(),
                          st.integers(0, 40_000)), max_size=60))
def test_any_sequence_pages_each_incident_once_and_never_two_live_incidents_per_key(
        events: list[tuple[int, int, bool, bool, int]]) -> None:
    e = Engine(config())
    now = T0
    first_pages: dict[str, int] = {}
    for n, (dev, building, clear, offline, dt) in enumerate(events):
        now += dt
        kind = "device_offline" if offline else "temp_high"
        e.handle(alert(f"s1/d{dev}/{kind}", n=n, building=f"b{building}", clear=clear, offline=offline), now)
        for a in e.tick(now):
            if isinstance(a, Notify) and (a.step, a.round) == (0, 0) and not a.update:
                first_pages[a.incident_id] = first_pages.get(a.incident_id, 0) + 1
        live: dict[str, str] = {}
        for inc in e.incidents.values():
            if inc.state in ("pending", "open", "acked", "silenced"):
                for key, entry in inc.alerts.items():
                    if not entry.cleared:
                        assert live.setdefault(key, inc.id) == inc.id, key
    assert all(v == 1 for v in first_pages.values())
    assert e.pages == len(first_pages)
