"""Device events, booleans and states into anomalies: the sans-IO judge of what is not a number.

A door forced, a fire alarm, a camera tampered with arrive as wire ``Event`` messages; a
door held open, a fire panel in trouble, a pump that is not running arrive as boolean or
state readings. Neither has a baseline to deviate from: configured rules say what they
mean (``DetectSettings.event_rules`` and ``state_rules``).

- ``event(...)``: the first matching ``EventRule`` opens an anomaly (fault = the event kind
  unless the rule names one) with the event's severity, or ignores it; a repeat while it is
  open joins it (one ``updated`` at most every ``update_min_s``, saying how many times).
- ``reading(...)``: a ``StateRule`` fires once its metric has held a bad value for
  ``min_duration_s`` (from the first reading with that value to the current one); it joins
  an open anomaly of the same fault (a forced door's event and its ``forced`` state are one
  anomaly, not two).
- An anomaly clears when nothing holds it any more: no state rule still bad, and its event
  part released by a restoring event (``<kind>_restored`` ...), by the rule's
  ``clear_metric`` reading a normal value after the event, or by ``clear_after_s`` of quiet
  (checked by ``tick``).

Invariants: events carry edge times only (the event's or reading's ``ts_ms``, or ``now``
given to ``tick``), so replaying the same input gives the same anomalies and ids; at most
one anomaly is open per (device, fault); everything here is plain data (``snapshot`` /
``restore`` round-trip it as JSON).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from analytics.detectors import _duration
from analytics.engine import SEVERITY_RANK, Emitted, anomaly_id
from analytics.settings import DetectSettings, EventRule, StateRule
from wire.anomaly import Anomaly

RESTORE_SUFFIXES: Final = ("_restored", "_cleared", "_normal", "_ended", "_ok")


def as_text(value: float | bool | str) -> str | None:
    """A boolean or state value as the rules compare it; None for a number (the engine's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return None


@dataclass(slots=True)
class _Open:
    id: str
    fault: str
    started_ms: int
    severity: str
    summary: str
    kind: str
    agent: str | None
    metrics: list[str] = field(default_factory=list)
    detectors: list[str] = field(default_factory=list)
    # the event part: released by a restore, by clear_metric reading a normal value, or by quiet
    event_kind: str | None = None
    event_ms: int = 0  # the latest occurrence
    count: int = 0
    clear_metric: str | None = None
    clear_values: list[str] = field(default_factory=list)
    clear_after_s: float | None = None
    min_hold_s: float = 0.0
    event_held: bool = False
    # the state part: metrics whose state rule is still bad
    bad: list[str] = field(default_factory=list)
    last_event_ms: int = 0
    dirty: bool = False


@dataclass(slots=True)
class _Held:
    value: str
    since_ms: int
    last_ms: int


class Judge:
    """Events and state readings of one worker's devices, into anomaly events."""

    def __init__(self, cfg: DetectSettings) -> None:
        self.cfg = cfg
        self._open: dict[tuple[str, str], dict[str, _Open]] = {}  # (site, device) -> fault -> open
        self._held: dict[tuple[str, str, str], _Held] = {}  # (site, device, metric)
        self.events_seen = 0
        self.events_ignored = 0

    # -- rules ----------------------------------------------------------------------------

    def event_rule(self, kind: str, event: str) -> EventRule | None:
        for r in self.cfg.event_rules:
            if fnmatch.fnmatchcase(kind, r.kind) and fnmatch.fnmatchcase(event, r.event):
                return r
        return None

    def _state_rules(self, kind: str, metric: str) -> list[StateRule]:
        return [r for r in self.cfg.state_rules if r.metric == metric and fnmatch.fnmatchcase(kind, r.kind)]

    # -- input ----------------------------------------------------------------------------

    def event(self, site: str, agent: str | None, device: str, kind: str, event: str, severity: str,
              message: str, ts_ms: int) -> list[Emitted]:
        """One device event; the anomaly events it causes."""
        self.events_seen += 1
        for suffix in RESTORE_SUFFIXES:
            if event.endswith(suffix):
                return self._restored(site, device, event.removesuffix(suffix), ts_ms)
        rule = self.event_rule(kind, event)
        if rule is None or rule.action == "ignore" or \
                SEVERITY_RANK.get(severity, 0) < SEVERITY_RANK[rule.min_severity]:
            self.events_ignored += 1
            return []
        fault = rule.fault or event
        sev = rule.severity or severity
        faults = self._open.setdefault((site, device), {})
        a = faults.get(fault)
        what = message.strip() or event.replace("_", " ")
        if a is None:
            label = kind.replace("_", " ").capitalize()
            # the panel's message often starts with the device id already
            what = what.removeprefix(f"{device}:").strip()
            summary = f"{label} {device}: {what} (event {event}, {sev})"
            a = _Open(anomaly_id(site, device, fault, ts_ms), fault, ts_ms, sev, summary[:1024], kind, agent,
                      detectors=["event"], last_event_ms=ts_ms)
            faults[fault] = a
            self._arm(a, rule, event, ts_ms)
            return [self._emit(site, device, a, "open", ts_ms)]
        self._arm(a, rule, event, ts_ms)
        if "event" not in a.detectors:
            a.detectors.append("event")
            a.dirty = True
        if a.count > 1:
            a.dirty = True
        return self._maybe_update(site, device, a, sev, ts_ms)

    def _arm(self, a: _Open, rule: EventRule, event: str, ts_ms: int) -> None:
        a.event_kind = event
        a.event_ms = max(a.event_ms, ts_ms)
        a.count += 1
        a.event_held = True
        a.clear_metric = rule.clear_metric
        a.clear_values = list(rule.clear_values)
        a.clear_after_s = rule.clear_after_s
        a.min_hold_s = rule.min_hold_s

    def reading(self, site: str, agent: str | None, device: str, kind: str, metric: str,
                value: float | bool | str, ts_ms: int) -> list[Emitted]:
        """One boolean or state reading (numbers are ignored: the engine judges them)."""
        text = as_text(value)
        if text is None:
            return []
        hkey = (site, device, metric)
        h = self._held.get(hkey)
        if h is None or h.value != text:
            h = self._held[hkey] = _Held(text, ts_ms, ts_ms)
        elif ts_ms > h.last_ms:
            h.last_ms = ts_ms
        out: list[Emitted] = []
        # the event part of an open anomaly is released by its panel's normal state
        faults = self._open.get((site, device), {})
        for o in faults.values():
            if o.event_held and o.clear_metric == metric and text in o.clear_values \
                    and ts_ms - o.event_ms >= max(1.0, o.min_hold_s * 1000):
                o.event_held = False
        for rule in self._state_rules(kind, metric):
            a = faults.get(rule.fault)
            if text in rule.values:
                held_ms = h.last_ms - h.since_ms
                if held_ms < rule.min_duration_s * 1000:
                    continue
                if a is None:
                    label = kind.replace("_", " ").capitalize()
                    summary = f"{label} {device} {rule.text}: {metric} {text}"
                    if rule.min_duration_s > 0:
                        allowed = _duration(rule.min_duration_s * 1000)
                        summary += f" for {_duration(held_ms)} (allowed {allowed})"
                    a = _Open(anomaly_id(site, device, rule.fault, h.since_ms), rule.fault, h.since_ms,
                              rule.severity, summary[:1024], kind, agent, [metric], ["state"], bad=[metric],
                              last_event_ms=ts_ms)
                    faults = self._open.setdefault((site, device), faults)
                    faults[rule.fault] = a
                    out.append(self._emit(site, device, a, "open", ts_ms))
                    continue
                if metric not in a.bad:
                    a.bad.append(metric)
                if metric not in a.metrics:
                    a.metrics.append(metric)
                    a.dirty = True
                if "state" not in a.detectors:
                    a.detectors.append("state")
                    a.dirty = True
                out += self._maybe_update(site, device, a, rule.severity, ts_ms)
            elif a is not None and metric in a.bad:
                a.bad.remove(metric)
        if faults:
            out += self._clears(site, device, ts_ms)
        return out

    def tick(self, now_ms: int) -> list[Emitted]:
        """Release event parts that have been quiet for their rule's ``clear_after_s``."""
        out: list[Emitted] = []
        for (site, device), faults in list(self._open.items()):
            quiet = False
            for a in faults.values():
                if a.event_held and a.clear_after_s is not None and \
                        now_ms - a.event_ms >= a.clear_after_s * 1000:
                    a.event_held = False
                    quiet = True
            if quiet:
                out += self._clears(site, device, now_ms)
        return out

    # -- lifecycle --------------------------------------------------------------------------

    def _restored(self, site: str, device: str, event: str, ts_ms: int) -> list[Emitted]:
        for a in self._open.get((site, device), {}).values():
            if a.event_kind == event and ts_ms >= a.event_ms:
                a.event_held = False
        return self._clears(site, device, ts_ms)

    def _maybe_update(self, site: str, device: str, a: _Open, severity: str, ts_ms: int) -> list[Emitted]:
        worse = SEVERITY_RANK[severity] > SEVERITY_RANK[a.severity]
        if worse:
            a.severity = severity
        if worse or (a.dirty and ts_ms - a.last_event_ms >= self.cfg.update_min_s * 1000):
            a.dirty = False
            a.last_event_ms = ts_ms
            return [self._emit(site, device, a, "updated", ts_ms)]
        return []

    def _clears(self, site: str, device: str, ts_ms: int) -> list[Emitted]:
        faults = self._open.get((site, device))
        if not faults:
            self._open.pop((site, device), None)
            return []
        out: list[Emitted] = []
        for fault, a in list(faults.items()):
            if not a.event_held and not a.bad:
                del faults[fault]
                out.append(self._emit(site, device, a, "cleared", ts_ms))
        if not faults:
            del self._open[(site, device)]
        return out

    def _emit(self, site: str, device: str, a: _Open, state: str, ts_ms: int) -> Emitted:
        ts = max(ts_ms, a.started_ms)
        summary = a.summary
        if a.count > 1:
            summary = f"{summary[:960]}; {a.count} times"
        if state == "cleared":
            summary = f"{summary[:900]}; back to normal after {_duration(ts - a.started_ms)}"
        return Emitted(site, device, Anomaly(
            v=1, id=a.id, state=state, ts_ms=ts, started_ms=a.started_ms,  # type: ignore[arg-type]
            severity=a.severity,  # type: ignore[arg-type]
            fault=a.fault[:64], summary=summary, kind=a.kind, agent=a.agent, metrics=tuple(a.metrics[:64]),
            detectors=tuple(a.detectors[:32]), cleared_ms=ts if state == "cleared" else None,
        ), 1.0)

    def open_anomalies(self) -> list[Emitted]:
        return [self._emit(site, device, a, "updated", a.last_event_ms)
                for (site, device), faults in self._open.items() for a in faults.values()]

    # -- persistence --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able state: open anomalies and the held states."""
        return {
            "open": [[site, device, f, asdict(a)] for (site, device), faults in self._open.items()
                     for f, a in faults.items()],
            "held": [[*k, h.value, h.since_ms, h.last_ms] for k, h in self._held.items()],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Take back what ``snapshot`` gave (of an earlier process of the same worker)."""
        self._open = {}
        for s, d, f, a in data.get("open", []):
            self._open.setdefault((str(s), str(d)), {})[str(f)] = _Open(**a)
        self._held = {(str(s), str(d), str(m)): _Held(str(v), int(a), int(b))
                      for s, d, m, v, a, b in data.get("held", [])}


__all__ = ["Judge", "as_text"]
