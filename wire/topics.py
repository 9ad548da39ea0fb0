"""MQTT topics of the Vigil bus: one frozen value per kind, parse and format exact inverses.

Scheme (architecture.md, "The wire contract"):

    vigil/v1/{site}/{agent}/status                  retained; the agent's last will sets it offline
    vigil/v1/{site}/{agent}/{device}/telemetry
    vigil/v1/{site}/{agent}/{device}/event
    vigil/v1/{site}/{agent}/cmd/{name}              to the agent
    vigil/v1/{site}/{agent}/ack                     to the agent: what ingest durably stored
    vigil/v1/{site}/{agent}/health                  retained; the agent's own health
    vigil/v1/{site}/_alarm/{device}                 the system's own alarm events

Invariants:
- every id matches ``ID_PATTERN``: no ``/ + #``, no leading ``_`` (reserved for the
  system's own namespaces such as ``_alarm``), at most 64 characters;
- ``cmd`` is not a device id, so a command topic and a device topic never collide;
- ``parse_topic(t.format()) == t`` for every topic value, and ``parse_topic`` raises
  only ``WireError`` whatever string it is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Final

from wire.errors import WireError

PREFIX: Final = "vigil/v1"
ALARM_SEGMENT: Final = "_alarm"
CMD_SEGMENT: Final = "cmd"
ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
_ID_RE: Final = re.compile(ID_PATTERN)


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid site/agent/device/command id, else raise WireError."""
    if not isinstance(value, str):
        raise WireError(f"{kind} id must be a string, got {type(value).__name__}")
    if not _ID_RE.fullmatch(value):
        raise WireError(
            f"{kind} id {value[:80]!r} is invalid: use 1-64 characters from "
            "A-Z a-z 0-9 _ . - , starting with a letter or digit"
        )
    return value


def _check_device(value: str) -> str:
    check_id("device", value)
    if value == CMD_SEGMENT:
        raise WireError("device id 'cmd' is reserved for agent commands")
    return value


@dataclass(frozen=True, slots=True)
class _AgentLevel:
    """A topic one level under an agent: ``vigil/v1/{site}/{agent}/{LEAF}``."""

    LEAF: ClassVar[str]
    site: str
    agent: str

    def __post_init__(self) -> None:
        check_id("site", self.site)
        check_id("agent", self.agent)

    def format(self) -> str:
        return f"{PREFIX}/{self.site}/{self.agent}/{self.LEAF}"


@dataclass(frozen=True, slots=True)
class StatusTopic(_AgentLevel):
    """An agent's retained presence (wire.Status)."""

    LEAF: ClassVar[str] = "status"


@dataclass(frozen=True, slots=True)
class TelemetryTopic:
    site: str
    agent: str
    device: str

    def __post_init__(self) -> None:
        check_id("site", self.site)
        check_id("agent", self.agent)
        _check_device(self.device)

    def format(self) -> str:
        return f"{PREFIX}/{self.site}/{self.agent}/{self.device}/telemetry"


@dataclass(frozen=True, slots=True)
class EventTopic:
    site: str
    agent: str
    device: str

    def __post_init__(self) -> None:
        check_id("site", self.site)
        check_id("agent", self.agent)
        _check_device(self.device)

    def format(self) -> str:
        return f"{PREFIX}/{self.site}/{self.agent}/{self.device}/event"


@dataclass(frozen=True, slots=True)
class CommandTopic:
    site: str
    agent: str
    name: str

    def __post_init__(self) -> None:
        check_id("site", self.site)
        check_id("agent", self.agent)
        check_id("command", self.name)

    def format(self) -> str:
        return f"{PREFIX}/{self.site}/{self.agent}/{CMD_SEGMENT}/{self.name}"


@dataclass(frozen=True, slots=True)
class AlarmTopic:
    site: str
    device: str

    def __post_init__(self) -> None:
        check_id("site", self.site)
        _check_device(self.device)

    def format(self) -> str:
        return f"{PREFIX}/{self.site}/{ALARM_SEGMENT}/{self.device}"


@dataclass(frozen=True, slots=True)
class AckTopic(_AgentLevel):
    """Where ingest tells one agent which of its messages are durably stored (wire.agent.Ack)."""

    LEAF: ClassVar[str] = "ack"


@dataclass(frozen=True, slots=True)
class HealthTopic(_AgentLevel):
    """Where an agent reports its own health (wire.agent.AgentHealth), retained."""

    LEAF: ClassVar[str] = "health"


Topic = StatusTopic | TelemetryTopic | EventTopic | CommandTopic | AlarmTopic | AckTopic | HealthTopic


# The topics one level under an agent: vigil/v1/{site}/{agent}/{leaf}.
_AGENT_TOPICS: Final[dict[str, type[StatusTopic | AckTopic | HealthTopic]]] = {
    t.LEAF: t for t in (StatusTopic, AckTopic, HealthTopic)
}


def parse_topic(topic: str) -> Topic:
    """Parse a concrete (wildcard-free) topic; raise WireError saying what is wrong."""
    if not isinstance(topic, str):
        raise WireError(f"topic must be a string, got {type(topic).__name__}")
    if not topic.startswith(PREFIX + "/"):
        raise WireError(f"topic {topic[:120]!r} is not under {PREFIX}/")
    parts = topic[len(PREFIX) + 1 :].split("/")
    n = len(parts)
    if n == 3 and parts[1] == ALARM_SEGMENT:
        return AlarmTopic(site=parts[0], device=parts[2])
    if n == 3 and parts[2] in _AGENT_TOPICS:
        return _AGENT_TOPICS[parts[2]](site=parts[0], agent=parts[1])
    if n == 4 and parts[2] == CMD_SEGMENT:
        return CommandTopic(site=parts[0], agent=parts[1], name=parts[3])
    if n == 4 and parts[3] == "telemetry":
        return TelemetryTopic(site=parts[0], agent=parts[1], device=parts[2])
    if n == 4 and parts[3] == "event":
        return EventTopic(site=parts[0], agent=parts[1], device=parts[2])
    raise WireError(
        f"topic {topic[:120]!r} matches no Vigil topic "
        "(status, ack, health, telemetry, event, cmd/<name>, _alarm/<device>)"
    )


# Subscription filters. ``None`` means any (the ``+`` wildcard). They are built here so
# that no component spells a topic by hand.
def _seg(value: str | None, kind: str) -> str:
    return "+" if value is None else check_id(kind, value)


def status_filter(site: str | None = None, agent: str | None = None) -> str:
    return f"{PREFIX}/{_seg(site, 'site')}/{_seg(agent, 'agent')}/status"


def telemetry_filter(site: str | None = None, agent: str | None = None) -> str:
    return f"{PREFIX}/{_seg(site, 'site')}/{_seg(agent, 'agent')}/+/telemetry"


def event_filter(site: str | None = None, agent: str | None = None) -> str:
    return f"{PREFIX}/{_seg(site, 'site')}/{_seg(agent, 'agent')}/+/event"


def command_filter(site: str, agent: str) -> str:
    return f"{PREFIX}/{check_id('site', site)}/{check_id('agent', agent)}/{CMD_SEGMENT}/+"


def ack_filter(site: str | None = None, agent: str | None = None) -> str:
    return f"{PREFIX}/{_seg(site, 'site')}/{_seg(agent, 'agent')}/ack"


def health_filter(site: str | None = None, agent: str | None = None) -> str:
    return f"{PREFIX}/{_seg(site, 'site')}/{_seg(agent, 'agent')}/health"


def alarm_filter(site: str | None = None) -> str:
    return f"{PREFIX}/{_seg(site, 'site')}/{ALARM_SEGMENT}/+"


def shared(group: str, topic_filter: str) -> str:
    """A shared-subscription filter (MQTT 5 ``$share``; Mosquitto also serves it to 3.1.1)."""
    return f"$share/{check_id('group', group)}/{topic_filter}"
