"""What the bus says, as alerts: anomaly events, device events and agent status.

Pure translation (no I/O): each function takes a decoded wire message and its topic and
returns an ``Alert`` for the engine, or None when the message is not something to page on.

Invariants:
- the dedup ``key`` is (site, device or agent, fault or event kind): the same problem on
  the same equipment, whatever anomaly id analytics gave it;
- the ``event_id`` names the exact message (id, state and time), so a redelivered message
  is recognised as a replay;
- an agent's offline status is an alert that scopes its devices (inhibition); its online
  status clears it; a retained online status at start clears nothing and pages nobody.
"""

from __future__ import annotations

from typing import Final

from alerting.config import SEVERITY_RANK, OnCallConfig
from alerting.engine import BROKER, Alert, agent_scope
from wire import Event, EventTopic, Status, StatusTopic
from wire.anomaly import Anomaly
from wire.topics import AlarmTopic
from wire.workorder import SlaBreach

# Faults and event kinds that mean "we cannot hear this device": a down parent explains them.
OFFLINE_KINDS: Final = frozenset({"device_offline", "offline", "stale", "no_data", "comm_loss",
                                  "communication_lost", "device_unreachable"})
CLEAR_SUFFIXES: Final = ("_cleared", "_restored", "_normal", "_reset")
SYSTEM_SITE: Final = "_system"


def from_anomaly(topic: AlarmTopic, anomaly: Anomaly, config: OnCallConfig, agent: str | None) -> Alert:
    """``agent`` is the device's agent from the hierarchy when the anomaly does not name it."""
    agent = anomaly.agent or agent
    return Alert(
        key=f"{topic.site}/{topic.device}/{anomaly.fault}",
        event_id=f"anomaly:{anomaly.id}:{anomaly.state}:{anomaly.ts_ms}",
        site=topic.site,
        building=config.building_of(topic.site, agent),
        event_type=anomaly.fault,
        severity=anomaly.severity,
        summary=anomaly.summary or anomaly.fault,
        ts_ms=anomaly.ts_ms,
        device=topic.device,
        agent=agent,
        kind=anomaly.kind,
        clear=anomaly.state == "cleared",
        offline=anomaly.fault in OFFLINE_KINDS,
    )


def from_event(topic: EventTopic, event: Event, config: OnCallConfig) -> Alert | None:
    """A device event; None below the configured ``ignore_below`` severity (door opened...)."""
    kind, clear = event.kind, False
    for suffix in CLEAR_SUFFIXES:
        if kind.endswith(suffix):
            kind, clear = kind.removesuffix(suffix), True
            break
    if not clear and SEVERITY_RANK[event.severity] < SEVERITY_RANK[config.ignore_below]:
        return None
    equipment = event.data.get("equipment_kind")
    return Alert(
        key=f"{topic.site}/{topic.device}/{kind}",
        event_id=f"event:{topic.site}:{topic.agent}:{topic.device}:{event.seq}:{event.ts_ms}:{event.kind}",
        site=topic.site,
        building=config.building_of(topic.site, topic.agent),
        event_type=kind,
        severity=event.severity,
        summary=event.message or kind.replace("_", " "),
        ts_ms=event.ts_ms,
        device=topic.device,
        agent=topic.agent,
        kind=equipment if isinstance(equipment, str) else None,
        clear=clear,
        offline=kind in OFFLINE_KINDS,
    )


def from_status(topic: StatusTopic, status: Status, config: OnCallConfig) -> Alert:
    down = status.state == "offline"
    reason = f": {status.reason}" if status.reason else ""
    return Alert(
        key=f"{topic.site}/{topic.agent}/agent_offline",
        event_id=f"status:{topic.site}:{topic.agent}:{status.state}:{status.ts_ms}:{status.boot}",
        site=topic.site,
        building=config.building_of(topic.site, topic.agent),
        event_type="agent_offline",
        severity=config.agent_offline_severity,
        summary=f"edge agent {topic.agent} is " + (f"offline{reason}" if down else "back"),
        ts_ms=status.ts_ms,
        agent=topic.agent,
        clear=not down,
        scope=agent_scope(topic.site, topic.agent),
        offline=True,
    )


PRIORITY_SEVERITY: Final = {"P1": "critical", "P2": "major", "P3": "minor", "P4": "warning"}


def from_sla_breach(site: str, breach: SlaBreach, config: OnCallConfig) -> Alert:
    """A work order missed its respond or resolve deadline (maintenance's SLA timers)."""
    what = "was not started" if breach.timer == "respond" else "was not resolved"
    return Alert(
        key=f"{site}/wo{breach.work_order}/sla_{breach.timer}",
        event_id=f"sla:{site}:{breach.id}",
        site=site,
        building=site,
        event_type=f"sla_{breach.timer}_breach",
        severity=PRIORITY_SEVERITY[breach.priority],
        summary=f"work order {breach.work_order} ({breach.priority}) {what} in time: {breach.title}",
        ts_ms=breach.breached_ms,
        device=breach.device,
    )


def broker_alert(host: str, port: int, down: bool, now_ms: int) -> Alert:
    """The alerting service's own view: it lost (or regained) the broker."""
    return Alert(
        key=f"{SYSTEM_SITE}/broker/{host}:{port}",
        event_id=f"broker:{host}:{port}:{'down' if down else 'up'}:{now_ms}",
        site=SYSTEM_SITE,
        building=SYSTEM_SITE,
        event_type="broker_offline",
        severity="critical",
        summary=f"MQTT broker {host}:{port} is unreachable" if down else f"MQTT broker {host}:{port} is back",
        ts_ms=now_ms,
        clear=not down,
        scope=BROKER,
    )
