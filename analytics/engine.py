"""The sans-IO streaming engine: readings in, anomaly events out.

``Engine.process(sid, ts, x)`` scores a batch of readings with every registered detector
(one array call per detector), fuses what fired per device into anomalies, and only then
lets the detectors learn. ``tick(now_ms)`` finds devices whose data is late;
``agent_status`` turns an agent's offline status into ``device_offline`` anomalies.

Fusion (per device, so one fault gives one anomaly, not a storm):
- a series' evidence is the sum of the scores of its consecutive firing readings, each
  weighted by its detector's ``EVIDENCE`` (1 unless a detector's score already sums many
  readings, as ``surprise``'s does); an anomaly opens when one series reaches
  ``open_evidence`` (a rule at once, a statistical deviation after two readings);
- a statistical anomaly that cleared does not reopen for ``REARM_READINGS`` usual intervals
  of its device (re-alarm suppression against chattering); rules and ranges always do;
- while a device has an open anomaly, further firing metrics and detectors join it and an
  ``updated`` event is sent when the set grows or the severity rises (at most once per
  ``update_min_s`` unless the severity rises);
- it clears when the device has had ``clear_readings`` readings and ``clear_after_s`` (or
  ``clear_after_intervals`` of its usual interval, if that is shorter) without anything firing.

Invariants:
- a batch is split into rounds in which each series appears once, in time order, so every
  reading is scored against the state left by the one before it (score before learn);
- events carry edge times only (``ts_ms`` of the reading that caused them, or ``now`` given
  to ``tick``): replaying the same readings gives the same events and ids.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import numpy as np

from analytics.detectors import (
    F64,
    FIRE,
    I64,
    B,
    Baseline,
    Batch,
    Detector,
    Threshold,
    _duration,
    _fmt,
    _grow,
)
from analytics.models import ModelBank
from analytics.registry import DETECTORS
from analytics.settings import DetectSettings
from wire.anomaly import Anomaly

SEVERITY_RANK: Final = {"info": 0, "warning": 1, "minor": 2, "major": 3, "critical": 4}
RULES: Final = frozenset({"threshold", "range"})  # configured limits: never held back
SENSOR_FAULTS: Final = {"stuck": "minor", "range": "minor", "spike": "info", "noisy": "warning"}
_KIND_RE: Final = re.compile(r"^(.*?)[-_]?[0-9]+$")


def kind_of(device: str) -> str:
    """The equipment kind of a device named ``<kind>-<nn>`` (``power-meter-03`` → ``power_meter``);
    ``equipment`` for any other name."""
    m = _KIND_RE.match(device)
    prefix = m.group(1) if m and m.group(1) else ""
    kind = prefix.replace("-", "_").lower()
    return kind if re.fullmatch(r"[a-z][a-z0-9_.]{0,63}", kind) else "equipment"


def anomaly_id(site: str, device: str, fault: str, started_ms: int) -> str:
    """Stable across replays: the same onset of the same fault gets the same id."""
    digest = hashlib.sha1(f"{site}/{device}/{fault}/{started_ms}".encode()).hexdigest()[:20]
    return f"an-{digest}"


class Emitted(NamedTuple):
    """An anomaly event and the device it is about (the ``_alarm`` topic's site and device)."""

    site: str
    device: str
    anomaly: Anomaly
    score: float = 0.0  # the strongest detector score behind this event, in [0, 1)


@dataclass(slots=True)
class DeviceInfo:
    site: str
    device: str
    kind: str
    agent: str | None


@dataclass(slots=True)
class Open:
    """An anomaly while it is open."""

    id: str
    fault: str
    started_ms: int
    severity: str
    summary: str
    metrics: list[str] = field(default_factory=list)
    detectors: list[str] = field(default_factory=list)
    expected: dict[str, float] = field(default_factory=dict)
    observed: dict[str, float] = field(default_factory=dict)
    last_fire_ms: int = 0
    last_event_ms: int = 0
    dirty: bool = False


class Engine:
    """Per-series detector state and per-device fusion for one worker's share of devices."""

    REARM_READINGS: Final = 100

    def __init__(self, cfg: DetectSettings) -> None:
        self.cfg = cfg
        self.detectors: list[Detector] = [cls(cfg) for cls in DETECTORS.values()]  # type: ignore[call-arg]
        self._names = list(DETECTORS)
        # a detector that builds on another's state (shift on baseline) is handed the others
        by_name = dict(zip(self._names, self.detectors, strict=True))
        for d in self.detectors:
            link = getattr(d, "link", None)
            if link is not None:
                link(by_name)
        # how much one firing reading of each detector counts towards opening an anomaly: a
        # detector whose score already summarises many readings (EVIDENCE 2) opens at once
        self._evidence = np.array([float(getattr(cls, "EVIDENCE", 1.0)) for cls in DETECTORS.values()])
        self._series: dict[tuple[str, str, str], int] = {}
        self._metric: list[str] = []
        self._unit: list[str] = []
        self._sdev = np.zeros(0, np.int64)
        self._ev = np.zeros(0, np.float32)
        self._ev_since = np.zeros(0, np.int64)
        self._ev_x0 = np.zeros(0, np.float64)
        self._devices: dict[tuple[str, str], int] = {}
        self._info: list[DeviceInfo] = []
        self._agents: dict[tuple[str, str], set[int]] = {}
        self._dlast = np.zeros(0, np.int64)
        self._dinterval = np.zeros(0, np.float64)
        self._dok = np.zeros(0, np.int32)
        self._darrive = np.zeros(0, np.int64)  # when the device's data last arrived, if known
        self._open: dict[int, Open] = {}
        self._silent: dict[int, Open] = {}  # data_missing / device_offline, one per device
        self._rearm: dict[int, int] = {}  # device -> edge time before which no learnt anomaly reopens
        self._offline_agents: set[tuple[str, str]] = set()
        self.models = ModelBank(cfg)
        self.readings = 0

    # -- registration -----------------------------------------------------------------------

    def device(self, site: str, device: str, agent: str | None = None, kind: str | None = None) -> int:
        key = (site, device)
        did = self._devices.get(key)
        if did is None:
            did = len(self._info)
            self._devices[key] = did
            self._info.append(DeviceInfo(site, device, kind or kind_of(device), agent))
            self._dlast = _grow(self._dlast, did + 1, 0)  # type: ignore[assignment]
            self._dinterval = _grow(self._dinterval, did + 1, 0.0)  # type: ignore[assignment]
            self._dok = _grow(self._dok, did + 1, 0)  # type: ignore[assignment]
            self._darrive = _grow(self._darrive, did + 1, 0)  # type: ignore[assignment]
            if agent is not None:
                self._agents.setdefault((site, agent), set()).add(did)
        elif agent is not None and self._info[did].agent != agent:
            old = self._info[did].agent
            if old is not None:
                self._agents.get((site, old), set()).discard(did)
            self._info[did].agent = agent
            self._agents.setdefault((site, agent), set()).add(did)
        return did

    def series(self, site: str, device: str, metric: str, unit: str | None = None,
               agent: str | None = None, kind: str | None = None) -> int:
        """The id of a series, registered on first sight."""
        sid = self._series.get((site, device, metric))
        if sid is not None:
            return sid
        did = self.device(site, device, agent, kind)
        sid = len(self._metric)
        self._series[(site, device, metric)] = sid
        self._metric.append(metric)
        self._unit.append(unit or "")
        self._sdev = _grow(self._sdev, sid + 1, 0)  # type: ignore[assignment]
        self._sdev[sid] = did
        self._ev = _grow(self._ev, sid + 1, 0.0)  # type: ignore[assignment]
        self._ev_since = _grow(self._ev_since, sid + 1, 0)  # type: ignore[assignment]
        self._ev_x0 = _grow(self._ev_x0, sid + 1, 0.0)  # type: ignore[assignment]
        kind_ = self._info[did].kind
        for d in self.detectors:
            d.add_series(sid, kind_, metric)
        self.models.add_series(sid, did, kind_, metric)
        return sid

    def lookup(self, site: str, device: str, metric: str) -> int | None:
        return self._series.get((site, device, metric))

    @property
    def series_count(self) -> int:
        return len(self._metric)

    def nbytes(self) -> int:
        own = sum(a.nbytes for a in (self._sdev, self._ev, self._ev_since, self._ev_x0))
        return own + sum(d.nbytes() for d in self.detectors) + self.models.nbytes()

    def open_anomalies(self) -> list[Emitted]:
        """Every anomaly open now, as an ``updated`` event (e.g. to publish at start)."""
        return [self._event(did, a, "updated", a.last_event_ms) for did, a in
                [*self._open.items(), *self._silent.items()]]

    # -- the hot path -------------------------------------------------------------------------

    def process(self, sid: I64, ts: I64, x: F64, now_ms: int | None = None) -> list[Emitted]:
        """Score, fuse and learn a batch of readings (any order, any mix of series).

        ``now_ms``, when given, is when the batch arrived: a device whose backlog arrives now
        is not late, however old its readings' edge times are."""
        n = len(sid)
        if n == 0:
            return []
        if now_ms is not None:
            self._darrive[self._sdev[sid]] = now_ms
        self.readings += n
        order = np.lexsort((ts, sid))
        s = sid[order]
        starts = np.empty(n, np.bool_)
        starts[0] = True
        np.not_equal(s[1:], s[:-1], out=starts[1:])
        idx = np.arange(n)
        rank = idx - np.maximum.accumulate(np.where(starts, idx, 0))
        events: list[Emitted] = []
        if int(rank.max()) == 0:
            events += self._round(Batch(s, ts[order], x[order]))
            return events
        by_rank = order[np.argsort(rank, kind="stable")]
        bounds = np.cumsum(np.bincount(rank))
        lo = 0
        for hi in bounds:
            part = by_rank[lo:hi]
            events += self._round(Batch(sid[part], ts[part], x[part]))
            lo = int(hi)
        return events

    def _round(self, b: Batch) -> list[Emitted]:
        scores = np.stack([d.score(b) for d in self.detectors])
        top = scores.max(axis=0)
        weighted = (scores * self._evidence[:, None]).max(axis=0)
        fired = top >= FIRE
        dev = self._sdev[b.sid]
        # devices: latest time, usual interval, readings since anything last fired
        prev = self._dlast[dev]
        np.maximum.at(self._dlast, dev, b.ts)
        gap = (b.ts - prev).astype(np.float64)
        seen = (prev > 0) & (gap > 0)
        if seen.any():
            d2, g2 = dev[seen], gap[seen]
            cur = self._dinterval[d2]
            self._dinterval[d2] = np.where(cur == 0, g2, cur + 0.05 * (g2 - cur))
        healthy = ~fired
        self._dok += np.bincount(dev[healthy], minlength=len(self._dok)).astype(np.int32)
        ev_before = self._ev[b.sid]
        self._ev_since[b.sid] = np.where(fired & (ev_before == 0), b.ts, self._ev_since[b.sid])
        self._ev_x0[b.sid] = np.where(fired & (ev_before == 0), b.x, self._ev_x0[b.sid])
        self._ev[b.sid] = np.where(fired, ev_before + weighted, 0.0)
        events: list[Emitted] = []
        if self._silent:
            events += self._back(dev, b.ts)
        if fired.any():
            for k in np.flatnonzero(fired):
                events += self._fire(b, int(k), scores[:, k])
        model_fired = self.models.step(b, dev, healthy, self._dlast)
        for did, ts_, _score, metric, text in model_fired:
            events += self._model_fire(did, ts_, metric, text)
        for d in self.detectors:
            d.learn(b, healthy)
        if self._open:
            events += self._clears(b)
        return events

    # -- fusion -----------------------------------------------------------------------------

    def _severity(self, name: str, sid: int, score: float) -> str:
        if name == "threshold":
            return self._threshold.severity(sid)
        if name in SENSOR_FAULTS:
            return SENSOR_FAULTS[name]
        return "warning" if score < 0.6 else "minor" if score < 0.75 else "major"

    @property
    def _threshold(self) -> Threshold:
        return self.detectors[self._names.index("threshold")]  # type: ignore[return-value]

    @property
    def _baseline(self) -> Baseline:
        return self.detectors[self._names.index("baseline")]  # type: ignore[return-value]

    def _fire(self, b: Batch, k: int, col: F64) -> list[Emitted]:
        sid, ts, x = int(b.sid[k]), int(b.ts[k]), float(b.x[k])
        did = int(self._sdev[sid])
        self._dok[did] = 0
        # The first detector of the registry that fired explains it: a configured rule, then a
        # lying sensor, before a statistical deviation (which a lying sensor also causes).
        firing = np.flatnonzero(col >= FIRE)
        best = int(firing[0])
        name = self._names[best]
        names = [self._names[j] for j in firing]
        metric = self._metric[sid]
        finding = self.detectors[best].describe(sid, x, ts)
        severity = self._severity(name, sid, float(col[best]))
        expected = finding.expected
        if expected is None:
            expected = self._baseline.expected(sid, ts)[0]
        a = self._open.get(did)
        if a is None:
            if float(self._ev[sid]) < self.cfg.open_evidence:
                return []
            if name not in RULES and ts < self._rearm.get(did, 0):
                return []  # chattering: the same trouble again right after it cleared
            fault = finding.fault if finding.fault.startswith("sensor_") else f"{metric[:58]}_{finding.fault}"
            since = int(self._ev_since[sid])
            sentence = self._sentence(did, sid, x, ts, finding.text, since, expected)
            a = Open(anomaly_id(self._info[did].site, self._info[did].device, fault, since), fault, since,
                     severity, sentence, [metric], names, {metric: expected}, {metric: x}, ts, ts)
            self._open[did] = a
            return [self._event(did, a, "open", ts)._replace(score=float(col.max()))]
        a.last_fire_ms = ts
        a.observed[metric] = x
        a.expected.setdefault(metric, expected)
        grew = metric not in a.metrics or any(nm not in a.detectors for nm in names)
        worse = SEVERITY_RANK[severity] > SEVERITY_RANK[a.severity]
        if grew:
            a.metrics += [metric] if metric not in a.metrics else []
            a.detectors += [nm for nm in names if nm not in a.detectors]
            a.dirty = True
        if worse:
            a.severity = severity
        if worse or (a.dirty and ts - a.last_event_ms >= self.cfg.update_min_s * 1000):
            if metric == a.metrics[0]:
                a.summary = self._sentence(did, sid, x, ts, finding.text, a.started_ms, expected)
            a.dirty = False
            a.last_event_ms = ts
            return [self._event(did, a, "updated", ts)]
        return []

    def _model_fire(self, did: int, ts: int, metric: str, text: str) -> list[Emitted]:
        self._dok[did] = 0
        a = self._open.get(did)
        info = self._info[did]
        if a is None:
            fault = "behaviour_unusual"
            summary = f"{info.kind.replace('_', ' ').capitalize()} {info.device}: {text}"
            a = Open(anomaly_id(info.site, info.device, fault, ts), fault, ts, "minor", summary[:1024],
                     [metric], ["model"], {}, {}, ts, ts)
            self._open[did] = a
            return [self._event(did, a, "open", ts)]
        a.last_fire_ms = ts
        if "model" not in a.detectors:
            a.detectors.append("model")
            a.dirty = True
        return []

    def _sentence(self, did: int, sid: int, x: float, ts: int, text: str, since: int,
                  expected: float | None) -> str:
        info = self._info[did]
        unit = self._unit[sid]
        value = f"{_fmt(x)} {unit}".strip()
        trend = ""
        if ts - since >= 1000:
            x0 = float(self._ev_x0[sid])
            if expected is not None and abs(x - x0) <= 0.1 * abs(x - expected):
                word = "above normal" if x > expected else "below normal"
            else:
                word = "rising" if x > x0 else "falling"
            trend = f", {word} for {_duration(ts - since)}"
        kind = info.kind.replace("_", " ").capitalize()
        return f"{kind} {info.device} {self._metric[sid]} {value}, {text}{trend}"[:1024]

    def _clears(self, b: Batch) -> list[Emitted]:
        out: list[Emitted] = []
        ms = self.cfg.clear_after_s * 1000
        for did in list(self._open):
            a = self._open[did]
            last = int(self._dlast[did])
            quiet_ms = min(ms, self.cfg.clear_after_intervals * float(self._dinterval[did]))
            if self._dok[did] >= self.cfg.clear_readings and last - a.last_fire_ms >= quiet_ms:
                del self._open[did]
                # a statistical anomaly that just cleared does not reopen for REARM_READINGS
                # usual intervals (ISA-18.2's re-alarm suppression against chattering): a
                # device that keeps crossing its normal band is one trouble, not a storm
                self._rearm[did] = last + int(self.REARM_READINGS * float(self._dinterval[did]))
                out.append(self._event(did, a, "cleared", last))
        return out

    def _back(self, dev: I64, ts: I64) -> list[Emitted]:
        out: list[Emitted] = []
        for did in set(self._silent) & set(dev.tolist()):
            a = self._silent[did]
            info = self._info[did]
            if a.fault == "device_offline" and info.agent is not None and \
                    (info.site, info.agent) in self._offline_agents:
                continue
            del self._silent[did]
            out.append(self._event(did, a, "cleared", int(self._dlast[did])))
        return out

    # -- time and presence ------------------------------------------------------------------

    def tick(self, now_ms: int) -> list[Emitted]:
        """Devices silent for ``late_factor`` usual intervals (and ``late_min_s``) get a
        ``data_missing`` anomaly; it clears when their data comes back."""
        n = len(self._info)
        if n == 0:
            return []
        last, interval = np.maximum(self._dlast[:n], self._darrive[:n]), self._dinterval[:n]
        limit = np.maximum(self.cfg.late_factor * interval, self.cfg.late_min_s * 1000)
        late = (last > 0) & (interval > 0) & (now_ms - last > limit)
        out: list[Emitted] = []
        for did in np.flatnonzero(late).tolist():
            if did in self._silent:
                continue
            info = self._info[did]
            silent = now_ms - int(last[did])
            text = (f"{info.kind.replace('_', ' ').capitalize()} {info.device} has sent no data for "
                    f"{_duration(silent)} (usually every {_duration(float(interval[did]))})")
            a = Open(anomaly_id(info.site, info.device, "data_missing", now_ms), "data_missing", now_ms,
                     "minor", text, [], ["late"], last_fire_ms=now_ms, last_event_ms=now_ms)
            self._silent[did] = a
            out.append(self._event(did, a, "open", now_ms))
        return out

    def agent_status(self, site: str, agent: str, online: bool, ts_ms: int) -> list[Emitted]:
        """An agent went offline (its last will) or came back: its devices follow."""
        key = (site, agent)
        out: list[Emitted] = []
        if online:
            self._offline_agents.discard(key)
            for did in sorted(self._agents.get(key, set())):
                a = self._silent.get(did)
                if a is not None and a.fault == "device_offline":
                    del self._silent[did]
                    out.append(self._event(did, a, "cleared", ts_ms))
            return out
        self._offline_agents.add(key)
        for did in sorted(self._agents.get(key, set())):
            a = self._silent.get(did)
            if a is not None and a.fault == "device_offline":
                continue
            if a is not None:  # data_missing becomes the better-explained offline
                del self._silent[did]
                out.append(self._event(did, a, "cleared", ts_ms))
            info = self._info[did]
            text = (f"{info.kind.replace('_', ' ').capitalize()} {info.device} is offline: its edge agent "
                    f"{agent} lost its connection")
            a = Open(anomaly_id(site, info.device, "device_offline", ts_ms), "device_offline", ts_ms,
                     "major", text, [], ["status"], last_fire_ms=ts_ms, last_event_ms=ts_ms)
            self._silent[did] = a
            out.append(self._event(did, a, "open", ts_ms))
        return out

    # -- events -----------------------------------------------------------------------------

    def _event(self, did: int, a: Open, state: str, ts: int) -> Emitted:
        info = self._info[did]
        summary = a.summary
        if state == "cleared":
            summary = f"{a.summary[:900]}; back to normal after {_duration(ts - a.started_ms)}"
        return Emitted(info.site, info.device, Anomaly(
            v=1, id=a.id, state=state, ts_ms=max(ts, a.started_ms), started_ms=a.started_ms,  # type: ignore[arg-type]
            severity=a.severity,  # type: ignore[arg-type]
            fault=a.fault, summary=summary, kind=info.kind, agent=info.agent,
            metrics=tuple(a.metrics[:64]), detectors=tuple(a.detectors[:32]),
            expected={k: v for k, v in list(a.expected.items())[:64] if np.isfinite(v)},
            observed={k: v for k, v in list(a.observed.items())[:64] if np.isfinite(v)},
            cleared_ms=max(ts, a.started_ms) if state == "cleared" else None,
        ))


__all__ = ["B", "Emitted", "Engine", "kind_of"]
