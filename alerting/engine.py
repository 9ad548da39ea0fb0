"""The alerting core: alerts in, incidents and notifications out. Sans-IO: every method
takes ``now_ms`` and returns decisions; it never reads a clock, a socket or a database.

An *alert* is one normalised signal (an anomaly, a device event, an agent going offline);
an *incident* is what people are paged about and acknowledge. ``handle(alert, now)`` files
an alert into an incident; ``tick(now)`` returns the notifications that are due.

Invariants:
- the same event replayed (same ``event_id``) is a no-op; an alert whose ``key`` is already
  in a live incident joins it and pages nobody (deduplication);
- alerts of one building on one route within the route's group window make one incident,
  paged once after ``group_wait_s`` (grouping); an alert joining an incident already paged
  pages again (an update to the current step) only if it raises the incident's severity,
  so a storm of alike alerts pages once but a worse problem is never hidden in a group;
- an offline alert beneath a part of the hierarchy that is down (an agent, the broker) is
  folded into that part's incident instead of paging (inhibition); the down part stays
  inhibiting for ``inhibit_hold_ms`` after it recovers, while the devices report back;
- silences and work orders in progress file alerts into ``silenced`` incidents, unpaged;
  when the last work order in progress on a device lets go of it (``set_work_order`` with
  None), the incidents work orders silenced there end, and their alerts not yet cleared
  are filed again as new, so a fault still there pages (and the next alarm pages, not
  joining a silenced incident);
- life-safety alerts are never silenced, grouped, inhibited or folded: each pages at once;
- escalation: step k's targets are notified, and if the incident is not acknowledged
  within the step's delay the next step is; after the last step the policy repeats
  ``repeat`` times. Acknowledging stops the climb; resolving ends the incident. Neither
  is ever undone by a later alert;
- every change to an incident bumps its ``version`` and marks it dirty, so an adapter
  persists exactly what changed (``take_dirty``).
"""

from __future__ import annotations

import itertools
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from alerting.config import SEVERITY_RANK, Match, OnCallConfig, Override, Route, SilenceRule
from alerting.rotation import on_call

Scope = tuple[str, ...]  # ("broker",) or ("agent", site, agent)
BROKER: Scope = ("broker",)
IncidentState = Literal["pending", "open", "acked", "resolved", "silenced"]
LIVE: frozenset[str] = frozenset({"pending", "open", "acked", "silenced"})
WORK_ORDER_SILENCE = "work order "  # how ``silenced_by`` names a work order in progress


def agent_scope(site: str, agent: str) -> Scope:
    return ("agent", site, agent)


@dataclass(frozen=True, slots=True)
class Alert:
    key: str  # the same problem on the same equipment has the same key
    event_id: str  # this exact event: a replay has the same id
    site: str
    building: str
    event_type: str  # fault or event kind, e.g. vibration_high, fire_alarm, agent_offline
    severity: str
    summary: str
    ts_ms: int
    device: str | None = None
    agent: str | None = None
    kind: str | None = None  # equipment kind
    clear: bool = False  # the problem is over
    scope: Scope | None = None  # this alert says this part of the hierarchy is down
    offline: bool = False  # an "unreachable" alert that a down parent explains


@dataclass(slots=True)
class AlertEntry:
    alert: Alert
    count: int = 1
    cleared: bool = False
    folded: bool = False  # brought in by inhibition


@dataclass(slots=True)
class Incident:
    id: str
    key: str
    site: str
    building: str
    severity: str
    created_ms: int
    route: str | None
    policy: str | None
    life_safety: bool = False
    state: IncidentState = "pending"
    alerts: dict[str, AlertEntry] = field(default_factory=dict)
    page_at_ms: int | None = None
    paged_ms: int | None = None
    step: int = 0
    round: int = 0
    next_ms: int | None = None
    acked_ms: int | None = None
    acked_by: str | None = None
    resolved_ms: int | None = None
    resolved_by: str | None = None
    silenced_by: str | None = None
    scope: Scope | None = None
    folded: int = 0
    version: int = 0

    @property
    def title(self) -> str:
        if not self.alerts:
            return f"[{self.severity.upper()}] {self.building}: folded into the incident of a down part"
        # The most severe alert names the incident (the first of equals).
        first = max(self.alerts.values(), key=lambda e: SEVERITY_RANK[e.alert.severity]).alert
        where = self.building if first.device is None else f"{self.building}/{first.device}"
        more = len(self.alerts) - 1
        extra = f" (+{more} more)" if more > 0 else ""
        return f"[{self.severity.upper()}] {where}: {first.summary}{extra}"


@dataclass(frozen=True, slots=True)
class Notify:
    """Send the incident to ``person`` now (escalation ``step`` of ``round``)."""

    incident_id: str
    person: str
    step: int
    round: int
    life_safety: bool
    update: bool = False  # a more severe alert joined an incident already paged


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop every delivery still pending for the incident: it was acknowledged or resolved."""

    incident_id: str
    reason: str


Action = Notify | Stop
Outcome = Literal["new", "grouped", "duplicate", "replay", "silenced", "folded", "cleared",
                  "acked", "resolved", "unknown_clear"]


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    incident_id: str | None
    actions: tuple[Action, ...] = ()


@dataclass(slots=True)
class _ScopeState:
    incident_id: str
    recovered_ms: int | None = None


class Engine:
    """One site's or the whole fleet's alerting state; drive it with ``handle`` and ``tick``."""

    def __init__(self, config: OnCallConfig, *, inhibit_hold_ms: int = 300_000,
                 retain_ms: int = 3_600_000, replay_memory: int = 200_000,
                 new_id: Callable[[], str] | None = None) -> None:
        self.config = config
        self.inhibit_hold_ms = inhibit_hold_ms
        self.retain_ms = retain_ms
        self._replay_memory = replay_memory
        counter = itertools.count(1)
        self._new_id = new_id or (lambda: f"{uuid.uuid4().hex[:12]}-{next(counter)}")
        self.incidents: dict[str, Incident] = {}
        self._by_key: dict[str, str] = {}
        self._groups: dict[tuple[str, str], str] = {}
        self._scopes: dict[Scope, _ScopeState] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dirty: dict[str, set[str]] = {}  # incident id -> keys of alerts changed
        self._updates: list[str] = []  # paged incidents whose severity rose
        self.silences: list[tuple[str, SilenceRule]] = [
            (f"config#{i}", s) for i, s in enumerate(config.silences)]
        self.work_orders: dict[tuple[str, str], str] = {}  # (site, device) -> work order in progress
        self.overrides: dict[str, list[Override]] = {}
        self.hierarchy: dict[tuple[str, str], str] = {}  # (site, device) -> agent
        self.pages = 0  # incidents paged (first notification), for tests and stats

    # -- inputs from the world --------------------------------------------------------
    def learn(self, site: str, agent: str, device: str) -> None:
        """A device was seen under an agent on the bus (the asset hierarchy)."""
        self.hierarchy[(site, device)] = agent

    def set_silences(self, silences: Iterable[tuple[str, SilenceRule]]) -> None:
        """Replace the run-time silences (the configured standing ones are kept)."""
        standing = [(n, s) for n, s in self.silences if n.startswith("config#")]
        self.silences = standing + list(silences)

    def is_life_safety(self, alert: Alert) -> bool:
        return any(_match(rule, alert) for rule in self.config.life_safety)

    def handle(self, alert: Alert, now_ms: int) -> Decision:
        """File one alert; the notifications it causes come out of ``tick``."""
        if alert.event_id in self._seen:
            self._seen.move_to_end(alert.event_id)
            return Decision("replay", self._by_key.get(alert.key))
        self._seen[alert.event_id] = None
        if len(self._seen) > self._replay_memory:
            self._seen.popitem(last=False)
        return self._file(alert, now_ms)

    def set_work_order(self, site: str, device: str, work_order: str | None, now_ms: int) -> list[Decision]:
        """The work order in progress on (site, device) is now ``work_order`` (None: none)."""
        if work_order is not None:
            self.work_orders[(site, device)] = work_order
            return []
        if self.work_orders.pop((site, device), None) is None:
            return []
        out: list[Decision] = []
        for inc in list(self.incidents.values()):
            if inc.state != "silenced" or not (inc.silenced_by or "").startswith(WORK_ORDER_SILENCE):
                continue
            if not any(e.alert.site == site and e.alert.device == device for e in inc.alerts.values()):
                continue
            live = [e.alert for e in inc.alerts.values() if not e.cleared and not e.folded]
            self._end(inc, f"system: work order no longer in progress on {device}", now_ms)
            out.extend(self._file(alert, now_ms) for alert in live)
        return out

    def _file(self, alert: Alert, now_ms: int) -> Decision:
        if alert.device is not None and alert.agent is not None:
            self.learn(alert.site, alert.agent, alert.device)
        if alert.clear:
            return self._clear(alert, now_ms)

        live_id = self._by_key.get(alert.key)
        if live_id is not None:
            inc = self.incidents[live_id]
            inc.alerts[alert.key].count += 1
            self._touch(inc, alert.key)
            return Decision("duplicate", inc.id)

        life_safety = self.is_life_safety(alert)
        if not life_safety:
            silence = self._silenced_by(alert, now_ms)
            if silence is not None:
                inc = self._new_incident(alert, now_ms, None, life_safety=False)
                inc.state, inc.silenced_by = "silenced", silence
                if alert.scope is not None:  # a silenced down agent still explains its devices
                    self._scopes[alert.scope] = _ScopeState(inc.id)
                    inc.scope = alert.scope
                return Decision("silenced", inc.id)
            parent = self._inhibitor(alert, now_ms)
            if parent is not None:
                self._fold(parent, alert)
                return Decision("folded", parent.id)

        route = self._route(alert)
        if not life_safety and alert.scope is None and route is not None:
            gid = self._groups.get((alert.building, route.name))
            group = self.incidents.get(gid) if gid else None
            if (group is not None and group.state in LIVE and group.state != "silenced"
                    and now_ms < group.created_ms + int(route.group_window_s * 1000)):
                group.alerts[alert.key] = AlertEntry(alert)
                self._by_key[alert.key] = group.id
                if SEVERITY_RANK[alert.severity] > SEVERITY_RANK[group.severity]:
                    group.severity = alert.severity
                    if group.state == "open":
                        self._updates.append(group.id)
                self._touch(group, alert.key)
                return Decision("grouped", group.id)

        inc = self._new_incident(alert, now_ms, route, life_safety=life_safety)
        wait_ms = 0 if life_safety or route is None else int(route.group_wait_s * 1000)
        inc.page_at_ms = now_ms + wait_ms
        if route is not None and not life_safety and alert.scope is None:
            self._groups[(alert.building, route.name)] = inc.id
        if alert.scope is not None:
            self._scopes[alert.scope] = _ScopeState(inc.id)
            inc.scope = alert.scope
        return Decision("new", inc.id)

    def ack(self, incident_id: str, by: str, now_ms: int) -> Decision:
        inc = self._get(incident_id)
        if inc.state in ("pending", "open", "silenced"):
            inc.state, inc.acked_ms, inc.acked_by, inc.next_ms = "acked", now_ms, by, None
            self._touch(inc)
            return Decision("acked", inc.id, (Stop(inc.id, f"acknowledged by {by}"),))
        return Decision("duplicate", inc.id)

    def resolve(self, incident_id: str, by: str, now_ms: int) -> Decision:
        inc = self._get(incident_id)
        if inc.state == "resolved":
            return Decision("duplicate", inc.id)
        self._end(inc, by, now_ms)
        return Decision("resolved", inc.id, (Stop(inc.id, f"resolved by {by}"),))

    # -- time -------------------------------------------------------------------------
    def tick(self, now_ms: int) -> list[Action]:
        """Everything due at ``now_ms``: first pages after the group wait, escalation steps."""
        actions: list[Action] = []
        forget: list[str] = []
        updates, self._updates = self._updates, []
        for iid in dict.fromkeys(updates):
            inc = self.incidents.get(iid)
            policy = self.config.policies.get(inc.policy or "") if inc is not None else None
            if inc is not None and policy is not None and inc.state == "open":
                step = policy.steps[inc.step]
                actions.extend(Notify(inc.id, p, inc.step, inc.round, inc.life_safety, update=True)
                               for p in self.targets(step.notify, now_ms))
        for inc in list(self.incidents.values()):
            if inc.state == "pending" and inc.page_at_ms is not None and now_ms >= inc.page_at_ms:
                actions.extend(self._first_page(inc, now_ms))
            elif inc.state == "open" and inc.next_ms is not None and now_ms >= inc.next_ms:
                actions.extend(self._escalate(inc, now_ms))
            elif inc.state == "resolved" and inc.resolved_ms is not None \
                    and now_ms >= inc.resolved_ms + self.retain_ms:
                forget.append(inc.id)
        for iid in forget:
            del self.incidents[iid]
        for scope, st in list(self._scopes.items()):
            if st.recovered_ms is not None and now_ms >= st.recovered_ms + self.inhibit_hold_ms:
                del self._scopes[scope]
        return actions

    def next_due_ms(self) -> int | None:
        """When ``tick`` next has something to do (None: nothing scheduled)."""
        if self._updates:
            return 0
        times = [t for inc in self.incidents.values()
                 for t in ((inc.page_at_ms if inc.state == "pending" else None),
                           (inc.next_ms if inc.state == "open" else None)) if t is not None]
        return min(times) if times else None

    def take_dirty(self) -> tuple[list[Incident], dict[str, set[str]]]:
        """The incidents changed since the last call, and which of their alerts changed."""
        out = [self.incidents[i] for i in self._dirty if i in self.incidents]
        changed, self._dirty = self._dirty, {}
        return out, changed

    def mark_dirty(self, incident_id: str, keys: set[str]) -> None:
        """Report the incident changed again (its write failed and must be retried)."""
        self._dirty.setdefault(incident_id, set()).update(keys)

    def restore(self, incident: Incident) -> None:
        """Put back an incident loaded from the database after a restart."""
        self.incidents[incident.id] = incident
        if incident.state in LIVE:
            for key in incident.alerts:
                self._by_key[key] = incident.id
            if incident.route is not None and incident.scope is None and not incident.life_safety:
                self._groups[(incident.building, incident.route)] = incident.id
            if incident.scope is not None:
                self._scopes[incident.scope] = _ScopeState(incident.id)

    # -- internals --------------------------------------------------------------------
    def _get(self, incident_id: str) -> Incident:
        inc = self.incidents.get(incident_id)
        if inc is None:
            raise KeyError(f"no incident {incident_id!r}")
        return inc

    def _touch(self, inc: Incident, key: str | None = None) -> None:
        inc.version += 1
        keys = self._dirty.setdefault(inc.id, set())
        if key is not None:
            keys.add(key)

    def _new_incident(self, alert: Alert, now_ms: int, route: Route | None, *, life_safety: bool) -> Incident:
        policy = route.policy if route is not None else self.config.default_policy
        inc = Incident(self._new_id(), alert.key, alert.site, alert.building, alert.severity, now_ms,
                       route.name if route is not None else None, policy, life_safety=life_safety)
        inc.alerts[alert.key] = AlertEntry(alert)
        self.incidents[inc.id] = inc
        self._by_key[alert.key] = inc.id
        self._touch(inc, alert.key)
        return inc

    def _route(self, alert: Alert) -> Route | None:
        for route in self.config.routes:
            if _match(route, alert):
                return route
        return None

    def _silenced_by(self, alert: Alert, now_ms: int) -> str | None:
        if alert.device is not None:
            wo = self.work_orders.get((alert.site, alert.device))
            if wo is not None:
                return f"{WORK_ORDER_SILENCE}{wo} in progress"
        for name, s in self.silences:
            if s.start_ms <= now_ms < s.end_ms and _match(s, alert):
                return f"silence {name}" + (f": {s.reason}" if s.reason else "")
        return None

    def _parents(self, alert: Alert) -> list[Scope]:
        if not alert.offline:
            return []
        parents: list[Scope] = []
        agent = alert.agent
        if agent is None and alert.device is not None:
            agent = self.hierarchy.get((alert.site, alert.device))
        if agent is not None and alert.scope != agent_scope(alert.site, agent):
            parents.append(agent_scope(alert.site, agent))
        if alert.scope != BROKER:
            parents.append(BROKER)
        return parents

    def _inhibitor(self, alert: Alert, now_ms: int) -> Incident | None:
        for scope in self._parents(alert):
            st = self._scopes.get(scope)
            if st is None:
                continue
            if st.recovered_ms is not None and now_ms >= st.recovered_ms + self.inhibit_hold_ms:
                continue
            inc = self.incidents.get(st.incident_id)
            if inc is not None:
                return inc
        return None

    def _fold(self, parent: Incident, alert: Alert) -> None:
        parent.alerts[alert.key] = AlertEntry(alert, folded=True)
        parent.folded += 1
        if parent.state in LIVE:
            self._by_key[alert.key] = parent.id
        self._touch(parent, alert.key)

    def _clear(self, alert: Alert, now_ms: int) -> Decision:
        iid = self._by_key.get(alert.key)
        if iid is None:
            if alert.scope is not None and alert.scope in self._scopes:
                self._scopes[alert.scope].recovered_ms = now_ms
            return Decision("unknown_clear", None)
        inc = self.incidents[iid]
        entry = inc.alerts[alert.key]
        entry.cleared = True
        del self._by_key[alert.key]
        if alert.scope is not None and alert.scope in self._scopes:
            self._scopes[alert.scope].recovered_ms = now_ms
        self._touch(inc, alert.key)
        if all(e.cleared or e.folded for e in inc.alerts.values()):
            self._end(inc, "system: every alert cleared", now_ms)
            return Decision("resolved", inc.id, (Stop(inc.id, "every alert cleared"),))
        return Decision("cleared", inc.id)

    def _end(self, inc: Incident, by: str, now_ms: int) -> None:
        inc.state, inc.resolved_ms, inc.resolved_by, inc.next_ms = "resolved", now_ms, by, None
        for key in inc.alerts:
            if self._by_key.get(key) == inc.id:
                del self._by_key[key]
        for gk, gid in list(self._groups.items()):
            if gid == inc.id:
                del self._groups[gk]
        if inc.scope is not None and inc.scope in self._scopes:
            st = self._scopes[inc.scope]
            if st.recovered_ms is None:
                st.recovered_ms = now_ms
        self._touch(inc)

    def _first_page(self, inc: Incident, now_ms: int) -> list[Action]:
        if not inc.life_safety:
            # The group waited: anything now explained by a down parent is folded into it.
            for key, entry in list(inc.alerts.items()):
                parent = self._inhibitor(entry.alert, now_ms)
                if parent is not None and parent.id != inc.id:
                    del inc.alerts[key]
                    self._by_key.pop(key, None)
                    self._touch(inc, key)
                    self._fold(parent, entry.alert)
            if not inc.alerts:
                inc.state, inc.resolved_ms, inc.resolved_by = "resolved", now_ms, "system: folded into parent"
                for gk, gid in list(self._groups.items()):
                    if gid == inc.id:
                        del self._groups[gk]
                self._touch(inc)
                return []
            if inc.key not in inc.alerts:
                inc.key = next(iter(inc.alerts))
        inc.state, inc.paged_ms, inc.step, inc.round = "open", now_ms, 0, 0
        if inc.policy in self.config.policies:
            self.pages += 1  # an unrouted incident is recorded and shown, but pages nobody
        self._touch(inc)
        return self._notify_step(inc, now_ms)

    def _escalate(self, inc: Incident, now_ms: int) -> list[Action]:
        policy = self.config.policies.get(inc.policy or "")
        if policy is None:
            inc.next_ms = None
            return []
        inc.step += 1
        if inc.step >= len(policy.steps):
            inc.step, inc.round = 0, inc.round + 1
            if inc.round > policy.repeat:
                inc.step, inc.round = len(policy.steps) - 1, policy.repeat
                inc.next_ms = None  # the ladder is exhausted; the incident stays open
                self._touch(inc)
                return []
        self._touch(inc)
        return self._notify_step(inc, now_ms)

    def _notify_step(self, inc: Incident, now_ms: int) -> list[Action]:
        policy = self.config.policies.get(inc.policy or "")
        if policy is None:
            inc.next_ms = None
            return []
        step = policy.steps[inc.step]
        # Measured from when this step was due, not when tick ran, so a late tick does not
        # push every later step later.
        due = inc.next_ms if inc.next_ms is not None and inc.step + inc.round > 0 else now_ms
        inc.next_ms = due + int(step.delay_min * 60_000)
        people = self.targets(step.notify, now_ms)
        return [Notify(inc.id, p, inc.step, inc.round, inc.life_safety) for p in people]

    def targets(self, notify: Iterable[str], now_ms: int) -> list[str]:
        people: list[str] = []
        for target in notify:
            what, _, name = target.partition(":")
            if what == "rotation":
                rot = self.config.rotations[name]
                person = on_call(rot, now_ms, self.overrides.get(name, ())).person
            else:
                person = name
            if person not in people:
                people.append(person)
        return people


def _match(rule: Match, alert: Alert) -> bool:
    return rule.matches(site=alert.site, building=alert.building, device=alert.device, kind=alert.kind,
                        event_type=alert.event_type, severity=alert.severity)
