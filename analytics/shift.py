"""Shift: an EWMA control chart (Roberts 1959; Montgomery, *Statistical Quality Control*),
in the registry's batch form.

Why: equipment rarely fails with one wild reading. A valve that sticks half-closed takes a
flow from 32 to 31 l/min and keeps it there; a fouled coil raises a supply temperature by
half a degree for good. Each reading is within its normal band (``baseline`` stays quiet),
but their average has moved. The EWMA chart is the textbook detector for such small,
sustained shifts, and it alarms for as long as the shift lasts.

1. each reading's deviation from what ``baseline`` expects of it, in sd (of this hour, where
   the series has a daily rhythm, so the 8 a.m. start is no shift): ``z``, clipped to
   ±``shift_z_clip`` (one outlier or a heavy tail moves the chart a step, not a mile);
2. the chart: ``e ← e + λ (z - e)``, an average of the last ~2/λ deviations;
3. its limit is ``shift_limit`` times the chart's own sd, measured on this series while it
   was healthy (real telemetry is autocorrelated: the textbook sd, ``sqrt(λ / (2 - λ))``,
   is only the floor), and at least ``shift_min_sd``. A series that wanders slowly (a
   temperature through the day) thereby learns a wider limit than a steady one; readings
   near the limit do not teach it, so a shift building up slowly cannot widen it first;
4. once beyond it, the chart stays alarmed until it is back within ``HYSTERESIS`` of the
   limit, so a shift hovering at the limit is one finding, not a chatter.

While anything fires, ``baseline`` learns a tenth as fast, so a lasting fault stays a fault
for hundreds of readings before it becomes the new normal.

Invariants: ``score`` reads state only and keeps what it computed for ``learn`` (``baseline``
learns first, so recomputing would see the next state); state is one row per series; the
engine links the ``baseline`` of the same registry before the first batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from analytics.detectors import F64, B, Baseline, Batch, Detector, Finding, _fmt, _grow, _nbytes
from analytics.settings import DetectSettings


class Shift:
    """Fires while a series' recent average has moved away from what its baseline expects."""

    name: ClassVar[str] = "shift"
    # The chart already averages ~2/λ readings: one firing reading opens an anomaly.
    EVIDENCE: ClassVar[float] = 2.0
    HYSTERESIS: ClassVar[float] = 0.5  # alarmed until the chart is within this share of its limit
    # Its spread learns from readings below this share of the limit. Lower (0.5) catches a
    # day 3 sd warm on a daily rhythm sooner, but tightens the limit of every wandering series:
    # SKAB valve1's false-alarm rate went from 5.6 % to 23 %.
    LEARN_BELOW: ClassVar[float] = 0.8

    def __init__(self, cfg: DetectSettings) -> None:
        self.cfg = cfg

    def link(self, detectors: Mapping[str, Detector]) -> None:
        """The ``baseline`` whose deviations this chart averages."""
        baseline = detectors.get(Baseline.name)
        if not isinstance(baseline, Baseline):
            raise TypeError("the shift detector needs the baseline detector in the same registry")
        self._baseline = baseline

    def add_series(self, sid: int, kind: str, metric: str) -> None:
        if not hasattr(self, "_e"):
            # how many readings and since when come from the baseline: the same series, the
            # same readings (kept once)
            self._e = np.zeros(0, np.float32)  # the chart
            self._ve = np.zeros(0, np.float32)  # its mean square while healthy
            self._on = np.zeros(0, np.bool_)
        n = sid + 1
        for name, fill in (("_e", 0.0), ("_ve", 0.0), ("_on", False)):
            setattr(self, name, _grow(getattr(self, name), n, fill))

    def _step(self, b: Batch) -> tuple[F64, F64, F64]:
        """(new chart value, ratio |chart| / limit — 0 while warming up, learning rate), from
        the state before ``b``: the baseline's count and first time are read before it learns."""
        i = b.sid
        n = self._baseline.seen_count(i)
        lam = self.cfg.shift_lambda
        z, own = self._baseline.deviations(b)
        # a reading judged against a borrowed hour (the first weekend) is no evidence either
        # way: the chart decays towards 0 over it, and does not judge it
        z = np.where(own, np.clip(z, -self.cfg.shift_z_clip, self.cfg.shift_z_clip), 0.0)
        e = self._e[i] + lam * (z - self._e[i])
        floor = np.sqrt(lam / (2 - lam))
        limit = self.cfg.shift_limit * np.maximum(np.sqrt(self._ve[i].astype(np.float64)), floor)
        limit = np.maximum(limit, self.cfg.shift_min_sd)
        limit = np.where(self._on[i], self.HYSTERESIS * limit, limit)
        ready = (n >= self.cfg.shift_warmup_readings) & (
            b.ts - self._baseline.first_ts(i) >= self.cfg.shift_warmup_s * 1000) & own
        ratio = np.where(ready, np.abs(e) / limit, 0.0)
        rate = np.maximum(1.0 / (n + 1), 1.0 / self.cfg.baseline_readings)
        return e, ratio, rate

    def score(self, b: Batch) -> F64:
        e, ratio, rate = self._step(b)
        self._seen = (b, e, ratio, rate)
        # 0.5 exactly at the limit
        return ratio / (ratio + 1.0)

    def describe(self, sid: int, x: float, ts: int) -> Finding:
        one = Batch(np.array([sid], np.int64), np.array([ts], np.int64), np.array([x], np.float64))
        e = float(self._step(one)[0][0])
        level, sd = self._baseline.expected(sid, ts)
        recent = level + e * sd
        word = "high" if recent > level else "low"
        return Finding(f"shifted_{word}", f"lately averaging {_fmt(recent)} against a normal "
                       f"{_fmt(level)} ± {_fmt(sd)}: a lasting shift", level)

    def learn(self, b: Batch, healthy: B) -> None:
        seen = self.__dict__.pop("_seen", None)
        # always what score() saw: the engine scores every batch before it learns, and the
        # baseline has learnt this batch by now, so recomputing would read its next state
        if seen is None or seen[0] is not b:
            raise RuntimeError("shift.learn() without score() of the same batch")
        _, e, ratio, rate = seen
        i = b.sid
        on = ratio >= 1.0
        # the chart's own spread is learnt from healthy readings within LEARN_BELOW of its
        # limit, so a shift that builds up slowly cannot widen the limit ahead of itself
        quiet = (ratio < self.LEARN_BELOW) & healthy
        self._ve[i] = np.where(quiet, self._ve[i] + rate * (e * e - self._ve[i]), self._ve[i])
        self._e[i] = e
        self._on[i] = on

    def nbytes(self) -> int:
        return _nbytes(self)
