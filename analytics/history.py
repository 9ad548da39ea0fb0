"""Training the multivariate models on healthy history read from the time-series store.

Analytics imports no sibling but ``wire`` (architecture.md), so it does not open the store
itself: it states what it needs, ``HistorySource`` (a ``series`` of per-step means, the
shape ``ingest.store.Store.series`` already has), and the composition root (``vigil
analytics``, ``vigil demo``) passes the store in. Anything with that method will do.

Healthy, by choice: a step of a device counts unless it falls inside one of the device's
anomalies known to analytics' own database (from ``ANOMALY_MARGIN_MS`` before its start,
since a fault begins before it is detected, to the same margin after it cleared; an open one
runs to now). Every work order Vigil opens for equipment comes from such an anomaly;
work orders typed in by people (maintenance's tables) are not visible to analytics and
are not excluded.

A row is one step of one device: the per-step mean of each of the kind's metrics, centred
by that series' mean over its healthy rows (as the live bank centres by its running
mean), so devices of different sizes share one model of how their metrics move together.

Invariants: sans-IO apart from the ``HistorySource`` calls; a kind is fitted only from at
least ``model_warmup_rows`` rows spanning ``model_min_span_s``; otherwise ``train`` says
why and returns no model, and the kind stays unscored until a later try succeeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from analytics.models import F64, KindModel, fit_model
from analytics.settings import DetectSettings

ANOMALY_MARGIN_MS = 3_600_000


class Bucket(Protocol):
    """One step of a series: only its start and mean are read."""

    @property
    def ts_ms(self) -> int: ...
    @property
    def mean(self) -> float: ...


class HistorySource(Protocol):
    """Stored history: per-step means of one series, steps with data only, ascending."""

    def series(self, site: str, device: str, metric: str, start_ms: int, end_ms: int,
               step_ms: int) -> Sequence[Bucket]: ...


@dataclass(frozen=True, slots=True)
class Trained:
    """The outcome of one kind's training: a model, or why there is none yet."""

    kind: str
    model: KindModel | None
    reason: str = ""


def choose_columns(metrics: Mapping[tuple[str, str], set[str]], limit: int = 32) -> list[str]:
    """The numeric metrics at least half of a kind's devices have, sorted (a stable order)."""
    counts: dict[str, int] = {}
    for ms in metrics.values():
        for m in ms:
            counts[m] = counts.get(m, 0) + 1
    need = max(1, (len(metrics) + 1) // 2)
    return sorted(m for m, n in counts.items() if n >= need)[:limit]


def _healthy(ts: F64, windows: Sequence[tuple[int, int]]) -> NDArray[np.bool_]:
    keep = np.ones(len(ts), np.bool_)
    for start, end in windows:
        keep &= ~((ts >= start - ANOMALY_MARGIN_MS) & (ts <= end + ANOMALY_MARGIN_MS))
    return keep


def device_rows(source: HistorySource, site: str, device: str, columns: Sequence[str], start_ms: int,
                end_ms: int, step_ms: int, windows: Sequence[tuple[int, int]]) -> tuple[F64, F64]:
    """(step starts, centred rows) of one device over its healthy steps where every column
    has data; empty arrays when it has none."""
    per: list[dict[int, float]] = []
    for metric in columns:
        got = {int(b.ts_ms): float(b.mean) for b in source.series(site, device, metric, start_ms, end_ms,
                                                                   step_ms)}
        if not got:
            return np.zeros(0), np.zeros((0, len(columns)))
        per.append(got)
    common = sorted(set.intersection(*(set(p) for p in per)))
    ts = np.asarray(common, np.float64)
    rows = np.asarray([[p[t] for p in per] for t in common], np.float64).reshape(len(common), len(columns))
    keep = _healthy(ts, windows) & np.isfinite(rows).all(axis=1)
    ts, rows = ts[keep], rows[keep]
    if len(rows):
        rows = rows - rows.mean(axis=0)
    return ts, rows


def train(kind: str, source: HistorySource, devices: Mapping[tuple[str, str], set[str]],
          cfg: DetectSettings, *, now_ms: int, history_s: float, step_s: float, version: int,
          unhealthy: Mapping[tuple[str, str], Sequence[tuple[int, int]]]) -> Trained:
    """Fit ``kind``'s model on the healthy history of its ``devices`` ((site, device) -> the
    numeric metrics seen) over the last ``history_s``."""
    columns = choose_columns(devices)
    if len(columns) < 2:
        return Trained(kind, None, f"{kind} has {len(columns)} common numeric metric(s); a model relates two "
                                   "or more")
    start_ms, step_ms = now_ms - int(history_s * 1000), max(1, int(step_s * 1000))
    stamps: list[F64] = []
    parts: list[F64] = []
    for (site, device), metrics in sorted(devices.items()):
        if not set(columns) <= metrics:
            continue
        ts, rows = device_rows(source, site, device, columns, start_ms, now_ms, step_ms,
                               unhealthy.get((site, device), ()))
        if len(rows):
            stamps.append(ts)
            parts.append(rows)
    n = sum(len(p) for p in parts)
    if n < cfg.model_warmup_rows:
        return Trained(kind, None, f"{kind}: {n} healthy rows of history, {cfg.model_warmup_rows} needed")
    every = np.concatenate(stamps)
    span_s = (every.max() - every.min()) / 1000
    if span_s < cfg.model_min_span_s:
        return Trained(kind, None, f"{kind}: history spans {span_s / 3600:.1f} h, "
                                   f"{cfg.model_min_span_s / 3600:.1f} h needed")
    model = fit_model(kind, columns, np.concatenate(parts), cfg, version, now_ms, source="history")
    return Trained(kind, model)


__all__ = ["ANOMALY_MARGIN_MS", "Bucket", "HistorySource", "Trained", "choose_columns", "device_rows",
           "train"]
