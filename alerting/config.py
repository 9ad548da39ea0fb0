"""The on-call configuration file: people and their contact methods, channels, rotations,
escalation policies, routes, standing silences and life-safety rules.

One YAML file (``VIGIL_ALERTING_ONCALL_FILE``), validated completely at start: a typo stops
the service with the key and the problem, not at 3 a.m. when the page should go out.

Invariants:
- every name a policy, route or contact refers to exists (checked in ``OnCallConfig``);
- durations are seconds or minutes with the unit in the name (``delay_min``, ``group_wait_s``);
- matching is pure: ``Route.matches`` and ``LifeSafetyRule.matches`` look only at the alert.
"""

from __future__ import annotations

import fnmatch
import re
from datetime import date, time
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alerting.errors import AlertingError

Severity = Literal["info", "warning", "minor", "major", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "minor": 2, "major": 3, "critical": 4}
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChannelConfig(_Model):
    """A named channel instance: its kind in the channel registry and its limits."""

    kind: Name = "apprise"
    # Per-channel rate limit (a token bucket): a burst of this many, refilled over a minute.
    # Life-safety pages are never held back by it.
    rate_per_min: float = Field(30.0, gt=0, le=100_000)
    timeout_s: float = Field(10.0, gt=0, le=120)


class Contact(_Model):
    """One way to reach a person: a channel and the address on it (an Apprise URL for
    ``apprise`` channels, e.g. ``ntfys://ntfy.sh/alice-pager`` or ``mailto://...``)."""

    channel: Name
    to: str = Field(min_length=1, max_length=2048)
    # Tries on this method before falling over to the next one.
    attempts: int = Field(2, ge=1, le=10)


class Person(_Model):
    name: str = Field("", max_length=128)  # shown in messages; the key is the id
    contacts: tuple[Contact, ...] = Field(min_length=1)


class Override(_Model):
    """``person`` is on call for the rotation over [start_ms, end_ms) (epoch ms); a swap is two overrides."""

    person: Name
    start_ms: int
    end_ms: int

    @model_validator(mode="after")
    def _ordered(self) -> Override:
        if self.end_ms <= self.start_ms:
            raise ValueError(f"override for {self.person}: end_ms must be after start_ms")
        return self


class Rotation(_Model):
    """Members take shifts in order; a shift starts at ``handoff`` local time in ``timezone``."""

    members: tuple[Name, ...] = Field(min_length=1)
    shift: Literal["daily", "weekly"] = "weekly"
    handoff: time = time(8, 0)
    timezone: str = "UTC"
    # The first shift (members[0]) starts on this local date at the handoff time. For weekly
    # shifts pick the weekday handoffs should happen on.
    start: date = date(2026, 1, 5)
    sites: tuple[Name, ...] = ()  # sites it covers, for "who is on call at this site"; empty = all
    overrides: tuple[Override, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as Europe/Paris") from None
        return v


_TARGET = re.compile(r"^(rotation|person):([A-Za-z0-9][A-Za-z0-9_.\-]{0,63})$")


class Step(_Model):
    """Notify ``notify`` (``rotation:<name>`` or ``person:<id>``); if nobody acknowledges
    within ``delay_min``, go to the next step."""

    notify: tuple[str, ...] = Field(min_length=1)
    delay_min: float = Field(5.0, gt=0, le=24 * 60)

    @field_validator("notify")
    @classmethod
    def _targets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for t in v:
            if not _TARGET.match(t):
                raise ValueError(f"target {t!r} must be rotation:<name> or person:<id>")
        return v


class Policy(_Model):
    steps: tuple[Step, ...] = Field(min_length=1)
    # After the last step, start again from the first this many more times.
    repeat: int = Field(0, ge=0, le=20)


class Match(_Model):
    """What an alert must be to match; an empty field matches anything. Globs allowed."""

    sites: tuple[str, ...] = ()
    buildings: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()  # equipment kind, e.g. pump, fire_panel
    event_types: tuple[str, ...] = ()  # e.g. fire_alarm, vibration_high, agent_offline
    min_severity: Severity = "info"

    def matches(self, *, site: str, building: str, device: str | None, kind: str | None,
                event_type: str, severity: str) -> bool:
        def ok(patterns: tuple[str, ...], value: str | None) -> bool:
            if not patterns:
                return True
            return value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns)

        return (SEVERITY_RANK[severity] >= SEVERITY_RANK[self.min_severity]
                and ok(self.sites, site) and ok(self.buildings, building) and ok(self.devices, device)
                and ok(self.kinds, kind) and ok(self.event_types, event_type))


class Route(Match):
    """The first route that matches an alert sends it to ``policy``."""

    name: Name
    policy: Name
    # Alerts of one building on one route within group_window_s make one incident; its
    # first page waits group_wait_s for the rest of the group to arrive.
    group_wait_s: float = Field(10.0, ge=0, le=3600)
    group_window_s: float = Field(300.0, ge=0, le=86400)


class SilenceRule(Match):
    """A standing silence or maintenance window (the API adds more at run time)."""

    start_ms: int = 0
    end_ms: int = 2**62
    reason: str = Field("", max_length=512)


class LifeSafetyRule(Match):
    """Alerts that are never silenced, grouped away, inhibited or rate-limited."""


DEFAULT_LIFE_SAFETY: tuple[LifeSafetyRule, ...] = (
    LifeSafetyRule(event_types=("fire_alarm", "fire", "smoke_alarm", "gas_alarm", "co_alarm")),
    LifeSafetyRule(event_types=("leak", "water_leak", "leak_detected"),
                   devices=("*elec*", "*switch*", "*ups*"), kinds=()),
    LifeSafetyRule(event_types=("leak", "water_leak", "leak_detected"), kinds=("electrical_room",)),
)


class OnCallConfig(_Model):
    people: dict[Name, Person] = {}
    channels: dict[Name, ChannelConfig] = {}
    rotations: dict[Name, Rotation] = {}
    policies: dict[Name, Policy] = {}
    routes: tuple[Route, ...] = ()
    # Where an alert that matches no route goes; None: it is recorded but pages nobody.
    default_policy: Name | None = None
    silences: tuple[SilenceRule, ...] = ()
    life_safety: tuple[LifeSafetyRule, ...] = DEFAULT_LIFE_SAFETY
    # Device events below this severity (a door opened) are not alerts at all.
    ignore_below: Severity = "minor"
    agent_offline_severity: Severity = "major"
    # site -> agent -> building, for sites with several buildings; unlisted: building = site.
    buildings: dict[Name, dict[Name, Name]] = {}

    @model_validator(mode="after")
    def _references(self) -> OnCallConfig:
        problems: list[str] = []
        for pid, person in self.people.items():
            for i, c in enumerate(person.contacts):
                if c.channel not in self.channels:
                    problems.append(f"people.{pid}.contacts[{i}].channel: no channel {c.channel!r}")
        for rid, rot in self.rotations.items():
            for m in rot.members:
                if m not in self.people:
                    problems.append(f"rotations.{rid}.members: no person {m!r}")
            for o in rot.overrides:
                if o.person not in self.people:
                    problems.append(f"rotations.{rid}.overrides: no person {o.person!r}")
        for pol_id, pol in self.policies.items():
            for i, step in enumerate(pol.steps):
                for t in step.notify:
                    what, _, name = t.partition(":")
                    table = self.rotations if what == "rotation" else self.people
                    if name not in table:
                        problems.append(f"policies.{pol_id}.steps[{i}].notify: no {what} {name!r}")
        for i, route in enumerate(self.routes):
            if route.policy not in self.policies:
                problems.append(f"routes[{i}] ({route.name}).policy: no policy {route.policy!r}")
        if self.default_policy is not None and self.default_policy not in self.policies:
            problems.append(f"default_policy: no policy {self.default_policy!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def building_of(self, site: str, agent: str | None) -> str:
        if agent is None:
            return site
        return self.buildings.get(site, {}).get(agent, site)


def load_config(path: Path | None) -> OnCallConfig:
    """Read and validate the file; raise AlertingError naming the file, key and problem."""
    if path is None:
        return OnCallConfig()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AlertingError(f"on-call config {path}: cannot read it: {e}") from None
    except yaml.YAMLError as e:
        raise AlertingError(f"on-call config {path}: not valid YAML: {e}") from None
    return parse_config(raw or {}, source=str(path))


def parse_config(raw: object, source: str = "<config>") -> OnCallConfig:
    try:
        return OnCallConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"on-call config {source} is invalid:"]
        for item in e.errors():
            key = ".".join(str(p) for p in item["loc"]) or "(top level)"
            lines.append(f"  {key}: {item['msg']}")
        raise AlertingError("\n".join(lines)) from None
