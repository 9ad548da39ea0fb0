"""Scoring: how well the anomalies Vigil raised match the faults the simulator injected.

Inputs: the ground truth (``simulators.scenario.write_ground_truth``) and anomalies as
analytics publishes them on ``vigil/v1/{site}/_alarm/{device}`` (``wire.anomaly``), kept
as JSON lines ``{"topic": ..., "payload": <anomaly>}`` (``vigil sim record-anomalies``
writes them; the payload may also be the JSON text as a string).

Matching (sans-IO, ``score``): an anomaly is identified by its ``id``; its detection time
is the earliest ``ts_ms`` of its events. It matches a fault on the same device (and site,
when both are known) if it was detected between the fault's start minus ``early_s`` and
its end plus ``grace_s`` (a detector needs some evidence after a short fault ends). When
several faults of a device qualify, the one that started last before detection wins.

- recall of a fault kind: faults with at least one matching anomaly / faults;
- time to detect: from the fault's start to its first matching anomaly (0 if earlier);
- precision: anomalies matching some fault / anomalies. Per fault kind it counts the
  anomalies matched to faults of that kind, and the unmatched anomalies whose ``fault``
  name is that kind (a detector that names what it saw); other unmatched anomalies are
  reported on their own row, and every anomaly counts in the overall row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.errors import SimError
from simulators.faults import Fault
from wire import AlarmTopic, WireError, parse_topic
from wire.anomaly import Anomaly, decode_anomaly


@dataclass(frozen=True, slots=True)
class Detection:
    """One anomaly (all its events folded): where, what it called itself, when first seen."""

    id: str
    site: str
    device: str
    fault: str
    detected_ms: int


@dataclass(slots=True)
class Loaded:
    detections: list[Detection]
    problems: list[str] = field(default_factory=list)  # lines refused, with the reason
    lines: int = 0


def detections(events: Iterable[tuple[str, str, Anomaly]]) -> list[Detection]:
    """One Detection per anomaly id from (site, device, anomaly event), in any order."""
    first: dict[str, Detection] = {}
    for site, device, a in events:
        d = first.get(a.id)
        if d is None or a.ts_ms < d.detected_ms:
            first[a.id] = Detection(a.id, site, device, a.fault, a.ts_ms)
    return list(first.values())


def load_anomalies(path: Path) -> Loaded:
    """Read anomaly JSON lines; a bad line is reported in ``problems`` and skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SimError(f"cannot read anomalies {path}: {e}") from None
    out = Loaded([])
    events: list[tuple[str, str, Anomaly]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        out.lines += 1
        try:
            events.append(parse_line(line))
        except (ValueError, WireError) as e:
            out.problems.append(f"{path}:{n}: {e}")
    out.detections = detections(events)
    return out


def parse_line(line: str) -> tuple[str, str, Anomaly]:
    """(site, device, anomaly) of one JSON line; ValueError or WireError saying what is wrong."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(item, dict) or "topic" not in item or "payload" not in item:
        raise ValueError('expected {"topic": ..., "payload": ...}')
    topic = parse_topic(str(item["topic"]))
    if not isinstance(topic, AlarmTopic):
        raise ValueError(f"topic {item['topic']!r} is not an alarm topic (vigil/v1/<site>/_alarm/<device>)")
    payload: Any = item["payload"]
    raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    return topic.site, topic.device, decode_anomaly(raw)


@dataclass(frozen=True, slots=True)
class KindScore:
    fault: str
    faults: int
    detected: int
    anomalies: int  # attributed to this kind (matched, or unmatched but named so)
    true_positives: int
    ttd_s: tuple[float, ...]  # per detected fault

    @property
    def recall(self) -> float | None:
        return self.detected / self.faults if self.faults else None

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.anomalies if self.anomalies else None


@dataclass(frozen=True, slots=True)
class Report:
    kinds: tuple[KindScore, ...]
    total: KindScore
    unmatched_other: int  # unmatched anomalies not named after any injected kind
    matches: tuple[tuple[str, int], ...]  # (anomaly id, index of the fault it matched)


def score(truth: Sequence[Fault], detections: Sequence[Detection], *, grace_s: float = 600.0,
          early_s: float = 0.0) -> Report:
    """Compare injected faults with detections (see the module docstring)."""
    by_device: dict[str, list[int]] = {}
    for i, f in enumerate(truth):
        by_device.setdefault(f.device, []).append(i)
    first_ttd: dict[int, float] = {}
    matched_kind: dict[str, int] = {}
    matches: list[tuple[str, int]] = []
    unmatched: list[Detection] = []
    for d in sorted(detections, key=lambda d: d.detected_ms):
        best: int | None = None
        for i in by_device.get(d.device, ()):
            f = truth[i]
            if d.site and f.site and d.site != f.site:
                continue
            if f.start_ms - early_s * 1000 <= d.detected_ms <= f.end_ms + grace_s * 1000 and (
                best is None or truth[best].start_ms <= f.start_ms <= d.detected_ms
            ):
                best = i
        if best is None:
            unmatched.append(d)
            continue
        matches.append((d.id, best))
        kind = truth[best].fault
        matched_kind[kind] = matched_kind.get(kind, 0) + 1
        delay = max(0.0, (d.detected_ms - truth[best].start_ms) / 1000.0)
        first_ttd[best] = min(delay, first_ttd.get(best, delay))
    kinds = sorted({f.fault for f in truth})
    unmatched_named = {k: sum(1 for d in unmatched if d.fault == k) for k in kinds}
    rows = []
    for k in kinds:
        idx = [i for i, f in enumerate(truth) if f.fault == k]
        ttd = tuple(sorted(first_ttd[i] for i in idx if i in first_ttd))
        tp = matched_kind.get(k, 0)
        rows.append(KindScore(k, len(idx), len(ttd), tp + unmatched_named[k], tp, ttd))
    other = len(unmatched) - sum(unmatched_named.values())
    total = KindScore("all", len(truth), len(first_ttd), len(detections), len(matches),
                      tuple(sorted(first_ttd.values())))
    return Report(tuple(rows), total, other, tuple(matches))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _q(values: Sequence[float], q: float) -> str:
    if not values:
        return "-"
    return f"{values[min(len(values) - 1, int(q * len(values)))]:.0f}"


def format_report(report: Report) -> str:
    """A table: per fault kind, faults, detected, recall, precision, time to detect."""
    head = f"{'fault':<20} {'faults':>6} {'found':>6} {'recall':>7} {'anoms':>6} {'precision':>9} " \
           f"{'ttd p50 s':>9} {'ttd p90 s':>9} {'ttd max s':>9}"
    lines = [head, "-" * len(head)]
    for r in (*report.kinds, report.total):
        if r is report.total:
            lines.append("-" * len(head))
        lines.append(f"{r.fault:<20} {r.faults:>6} {r.detected:>6} {_pct(r.recall):>7} {r.anomalies:>6} "
                     f"{_pct(r.precision):>9} {_q(r.ttd_s, 0.5):>9} {_q(r.ttd_s, 0.9):>9} "
                     f"{_q(r.ttd_s, 1.0):>9}")
    lines.append(f"unmatched anomalies not named after an injected fault kind: {report.unmatched_other}")
    return "\n".join(lines)


def report_json(report: Report) -> dict[str, Any]:
    def row(r: KindScore) -> dict[str, Any]:
        return {"fault": r.fault, "faults": r.faults, "detected": r.detected, "recall": r.recall,
                "anomalies": r.anomalies, "true_positives": r.true_positives, "precision": r.precision,
                "ttd_s": list(r.ttd_s)}

    return {"kinds": [row(r) for r in report.kinds], "all": row(report.total),
            "unmatched_other": report.unmatched_other}
