"""The streaming detectors and their registry: batch scoring over many series at once.

Every detector keeps its state in numpy arrays indexed by series id, so one call scores
a whole batch of readings of many series with array operations (performance.md: no
per-reading Python calls on the hot path). The interface is River's ``score_one`` /
``learn_one`` in batch form:

- ``add_series(sid, kind, metric)`` once per new series (grows the arrays);
- ``score(batch)`` → scores in [0, 1), 0.5 and above meaning "fires"; it reads state and
  changes nothing a caller can see (rules keep the pending hysteresis state for ``learn``);
- ``describe(sid, x, ts)`` → a ``Finding`` for a reading that fired, read from the state
  before it learns that reading (called rarely: only for readings that fired);
- ``learn(batch, healthy)`` updates the state; statistics learn fully only from healthy
  readings.

Invariants:
- a batch holds each series at most once (the engine splits batches into rounds), so a
  fancy-indexed assignment never loses an update;
- ``score`` is called before ``learn`` for every batch: a reading is judged by what was
  known before it (no look-ahead);
- ``__init__`` only stores its arguments; state is private.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

from analytics.settings import DetectSettings

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
B = NDArray[np.bool_]

FIRE = 0.5
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
SEASON_BUCKETS = 48  # hour of day x (weekday, weekend)


@dataclass(frozen=True, slots=True)
class Batch:
    """Readings of distinct series: ids, edge times (epoch ms) and values."""

    sid: I64
    ts: I64
    x: F64


@dataclass(frozen=True, slots=True)
class Finding:
    """Why one reading fired, for the anomaly and its sentence."""

    fault: str  # e.g. "vibration_mm_s_high", "sensor_stuck"
    text: str  # the detector's part of the sentence, e.g. "normal 2.1 ± 0.4 for this hour"
    expected: float | None = None


class Detector(Protocol):
    name: ClassVar[str]

    def add_series(self, sid: int, kind: str, metric: str) -> None: ...
    def score(self, b: Batch) -> F64: ...
    def describe(self, sid: int, x: float, ts: int) -> Finding: ...
    def learn(self, b: Batch, healthy: B) -> None: ...
    def nbytes(self) -> int: ...


def _grow(a: NDArray[np.generic], n: int, fill: float | int | bool) -> NDArray[np.generic]:
    if a.shape[0] >= n:
        return a
    # grow by a quarter: registering series is rare, and doubling would leave up to half of
    # every array unused (the memory budget is per tracked series)
    size = max(n, a.shape[0] + a.shape[0] // 4, 64)
    out = np.full((size, *a.shape[1:]), fill, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


def _nbytes(obj: object) -> int:
    return sum(v.nbytes for v in vars(obj).values() if isinstance(v, np.ndarray))


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    digits = max(0, 1 - math.floor(math.log10(abs(v))))
    return f"{v:.{min(digits, 4)}f}"


def _duration(ms: float) -> str:
    s = ms / 1000
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def season_bucket(ts: I64, utc_offset_h: float) -> I64:
    """Hour of day x (weekday, weekend) in local time: 0 … SEASON_BUCKETS - 1."""
    local = ts + int(utc_offset_h * HOUR_MS)
    hour = (local // HOUR_MS) % 24
    weekend = ((local // DAY_MS + 3) % 7) >= 5  # 1970-01-01 was a Thursday
    return (hour * 2 + weekend).astype(np.int64)


def z_score(z: F64, z_fire: float) -> F64:
    """Deviations to a score in [0, 1): 0.5 exactly at ``z_fire``, monotone."""
    z = np.maximum(z, 0.0)
    return z / (z + z_fire)


class Baseline:
    """Robust seasonal baseline: EW mean/variance per series, and per hour of day and weekday
    or weekend once the series has ``seasonal_min_days`` of history, so a chiller that always
    starts at 8 a.m. is normal at 8 a.m. Updates are clipped to ``huber_k`` sd so an outlier
    cannot drag the baseline; readings that fired teach it a tenth as much, so a lasting
    change becomes the new normal slowly instead of never."""

    name: ClassVar[str] = "baseline"
    UNHEALTHY_WEIGHT: ClassVar[float] = 0.1
    # The threshold adapts to the series' own tail: a series whose excursions beyond it start
    # more often than once in EXCURSION_RATE readings (a spiky load, a heavy-tailed flow)
    # raises its own limit EXCURSION_STEP per excursion; quiet readings lower it back
    # towards z_fire. Counted per excursion, not per reading, so a lasting fault does not
    # teach the limit to accept it.
    EXCURSION_RATE: ClassVar[float] = 0.001
    EXCURSION_STEP: ClassVar[float] = 0.2
    SEASON_MEMORY: ClassVar[int] = 200  # readings of one bucket remembered
    SEASON_GAIN: ClassVar[float] = 0.5  # the season must halve the squared error to be used

    def __init__(self, cfg: DetectSettings) -> None:
        self.cfg = cfg

    def _ensure(self) -> None:
        if not hasattr(self, "_n"):
            self._n = np.zeros(0, np.int32)
            self._mean = np.zeros(0, np.float64)
            self._var = np.zeros(0, np.float64)
            self._first = np.zeros(0, np.int64)
            self._smean = np.zeros((0, SEASON_BUCKETS), np.float32)
            self._svar = np.zeros((0, SEASON_BUCKETS), np.float32)
            self._scount = np.zeros((0, SEASON_BUCKETS), np.uint16)
            self._res_g = np.zeros(0, np.float32)  # EW squared error of the all-day baseline
            self._res_s = np.zeros(0, np.float32)  # ... and of the season's
            self._zlim = np.zeros(0, np.float32)  # the series' own limit, >= z_fire
            self._above = np.zeros(0, np.bool_)  # its last reading was beyond that limit

    def add_series(self, sid: int, kind: str, metric: str) -> None:
        self._ensure()
        n = sid + 1
        self._n = _grow(self._n, n, 0)  # type: ignore[assignment]
        self._mean = _grow(self._mean, n, 0.0)  # type: ignore[assignment]
        self._var = _grow(self._var, n, 0.0)  # type: ignore[assignment]
        self._first = _grow(self._first, n, 0)  # type: ignore[assignment]
        self._smean = _grow(self._smean, n, 0.0)  # type: ignore[assignment]
        self._svar = _grow(self._svar, n, 0.0)  # type: ignore[assignment]
        self._scount = _grow(self._scount, n, 0)  # type: ignore[assignment]
        self._res_g = _grow(self._res_g, n, np.inf)  # type: ignore[assignment]
        self._res_s = _grow(self._res_s, n, np.inf)  # type: ignore[assignment]
        self._zlim = _grow(self._zlim, n, self.cfg.z_fire)  # type: ignore[assignment]
        self._above = _grow(self._above, n, False)  # type: ignore[assignment]

    def _bucket(self, ts: I64) -> I64:
        return season_bucket(ts, self.cfg.utc_offset_h)

    def _expected(self, b: Batch) -> tuple[F64, F64, B, I64]:
        i, bucket = b.sid, self._bucket(b.ts)
        # the first weekend takes the weekday's hour (and the other way round) rather than
        # the all-day baseline, which would call every hour of a weekly pattern an anomaly
        own = self._scount[i, bucket] >= self.cfg.seasonal_min_count
        bucket = np.where(own, bucket, bucket ^ 1)
        # ...and the season is used only where it explains the series better than one level:
        # a series without a daily rhythm keeps the steadier all-day baseline
        seasonal = (self._scount[i, bucket] >= self.cfg.seasonal_min_count) & (
            b.ts - self._first[i] >= self.cfg.seasonal_min_days * DAY_MS
        ) & (self._res_s[i] < self.SEASON_GAIN * self._res_g[i])
        mean = np.where(seasonal, self._smean[i, bucket], self._mean[i])
        var = np.where(seasonal, np.maximum(self._svar[i, bucket], 0.25 * self._var[i]), self._var[i])
        sd = np.maximum(np.sqrt(var), self.cfg.rel_sd_floor * np.abs(mean) + 1e-9)
        return mean, sd, seasonal, bucket

    def deviations(self, b: Batch) -> tuple[F64, B]:
        """(signed deviations from the expected value in sd, of this hour where the season is
        used; whether that expectation is the reading's own: False where a seasonal series
        borrows the weekday's hour for its first weekend, or the other way round). Judged by
        the state before ``b`` is learnt; ``shift`` builds on them."""
        seen: tuple[Batch, F64, B] | None = self.__dict__.get("_seen")
        if seen is not None and seen[0] is b:
            return seen[1], seen[2]
        mean, sd, seasonal, bucket = self._expected(b)
        return (b.x - mean) / sd, ~seasonal | (bucket == self._bucket(b.ts))

    def seen_count(self, sid: I64) -> I64:
        """Readings of each series learnt so far."""
        return self._n[sid].astype(np.int64)

    def first_ts(self, sid: I64) -> I64:
        """Edge time of each series' first reading (0 before it has one)."""
        return self._first[sid]

    def score(self, b: Batch) -> F64:
        signed, own = self.deviations(b)
        self._seen: tuple[Batch, F64, B] = (b, signed, own)  # for learn() and shift: computed once
        z = np.abs(signed)
        z_eff = z * (self.cfg.z_fire / self._zlim[b.sid])
        return np.where(self._n[b.sid] >= self.cfg.warmup_readings, z_score(z_eff, self.cfg.z_fire), 0.0)

    def describe(self, sid: int, x: float, ts: int) -> Finding:
        one = Batch(np.array([sid], np.int64), np.array([ts], np.int64), np.array([x], np.float64))
        mean, sd, seasonal, _ = self._expected(one)
        m, s = float(mean[0]), float(sd[0])
        when = " for this hour" if seasonal[0] else ""
        return Finding("high" if x > m else "low", f"normal {_fmt(m)} ± {_fmt(s)}{when}", m)

    def expected(self, sid: int, ts: int) -> tuple[float, float]:
        one = Batch(np.array([sid], np.int64), np.array([ts], np.int64), np.array([0.0], np.float64))
        mean, sd, _, _ = self._expected(one)
        return float(mean[0]), float(sd[0])

    def learn(self, b: Batch, healthy: B) -> None:
        i, x = b.sid, b.x
        n = self._n[i]
        weight = np.where(healthy, 1.0, self.UNHEALTHY_WEIGHT)
        z = np.abs(self.deviations(b)[0])
        self.__dict__.pop("_seen", None)
        lim = self._zlim[i]
        # an excursion lasts until the deviation falls below half the limit (hysteresis), so
        # a fault hovering around the limit is one excursion, not many
        was = self._above[i]
        start = ~was & (z > lim) & (n >= self.cfg.warmup_readings)
        above = start | (was & (z > 0.5 * lim))
        down = self.EXCURSION_STEP * self.EXCURSION_RATE
        self._zlim[i] = np.where(start, lim * (1 + self.EXCURSION_STEP),
                                 np.maximum(lim * (1 - down), self.cfg.z_fire))
        self._above[i] = above
        # how well each baseline predicted this reading, before learning it
        own = self._bucket(b.ts)
        ready = self._scount[i, own] >= self.cfg.seasonal_min_count
        eg = (x - self._mean[i]) ** 2
        es = (x - self._smean[i, own]) ** 2
        rg = np.where(np.isinf(self._res_g[i]), eg, self._res_g[i])
        rs = np.where(np.isinf(self._res_s[i]), es, self._res_s[i])
        self._res_g[i] = rg + 0.01 * (eg - rg)
        self._res_s[i] = np.where(ready, rs + 0.01 * (es - rs), self._res_s[i])
        alpha = weight / np.minimum(n + 1, self.cfg.baseline_readings)
        mean, var = self._mean[i], self._var[i]
        sd = np.sqrt(var)
        warm = n >= self.cfg.warmup_readings
        r = x - mean
        # the mean moves at most huber_k sd per reading; the spread learns from residuals up
        # to 3 x huber_k sd, so a heavy-tailed series is not judged by its quiet core alone
        rm = np.where(warm, np.clip(r, -self.cfg.huber_k * sd, self.cfg.huber_k * sd), r)
        rv = np.where(warm, np.clip(r, -3 * self.cfg.huber_k * sd, 3 * self.cfg.huber_k * sd), r)
        self._mean[i] = mean + alpha * rm
        self._var[i] = (1 - alpha) * (var + alpha * rv * rv)
        first = n == 0
        self._mean[i] = np.where(first, x, self._mean[i])
        self._first[i] = np.where(first, b.ts, self._first[i])
        self._n[i] = n + 1
        # the season bucket of this reading
        bucket = self._bucket(b.ts)
        c = self._scount[i, bucket].astype(np.float64)
        sm = self._smean[i, bucket].astype(np.float64)
        sv = self._svar[i, bucket].astype(np.float64)
        sa = weight / np.minimum(c + 1, self.SEASON_MEMORY)
        ssd = np.sqrt(sv)
        sr = x - sm
        sr = np.where(c >= self.cfg.seasonal_min_count, np.clip(sr, -self.cfg.huber_k * ssd,
                                                                  self.cfg.huber_k * ssd), sr)
        sm2 = np.where(c == 0, x, sm + sa * sr)
        sv2 = np.where(c == 0, 0.0, (1 - sa) * (sv + sa * sr * sr))
        self._smean[i, bucket] = sm2
        self._svar[i, bucket] = sv2
        self._scount[i, bucket] = np.minimum(c + 1, 65_000).astype(np.uint16)

    def nbytes(self) -> int:
        return _nbytes(self)


class _Last:
    """Shared shape of the detectors that compare a reading with the previous one."""

    def __init__(self, cfg: DetectSettings) -> None:
        self.cfg = cfg

    def _init_last(self) -> None:
        if not hasattr(self, "_last"):
            self._last = np.full(0, np.nan, np.float64)
            self._last_ts = np.zeros(0, np.int64)

    def _grow_last(self, n: int) -> None:
        self._init_last()
        self._last = _grow(self._last, n, np.nan)  # type: ignore[assignment]
        self._last_ts = _grow(self._last_ts, n, 0)  # type: ignore[assignment]

    def nbytes(self) -> int:
        return _nbytes(self)


class Stuck(_Last):
    """A sensor that has read exactly the same value for ``stuck_readings`` readings and
    ``stuck_min_s``, after having varied: flat-lined or frozen."""

    name: ClassVar[str] = "stuck"
    LOG_CHANCE: ClassVar[float] = math.log(1e-6)
    MEMORY: ClassVar[float] = 0.01

    def add_series(self, sid: int, kind: str, metric: str) -> None:
        self._grow_last(sid + 1)
        if not hasattr(self, "_run"):
            self._run = np.zeros(0, np.int32)
            self._since = np.zeros(0, np.int64)
            self._varied = np.zeros(0, np.int32)  # how many changes seen
        self._run = _grow(self._run, sid + 1, 0)  # type: ignore[assignment]
        self._since = _grow(self._since, sid + 1, 0)  # type: ignore[assignment]
        self._varied = _grow(self._varied, sid + 1, 0)  # type: ignore[assignment]
        if not hasattr(self, "_psame"):
            self._psame = np.zeros(0, np.float32)
        self._psame = _grow(self._psame, sid + 1, 0.0)  # type: ignore[assignment]

    def score(self, b: Batch) -> F64:
        i = b.sid
        same = b.x == self._last[i]
        run = np.where(same, self._run[i] + 1, 0)
        since = np.where(same, self._since[i], b.ts)
        # a run is stuck only when this series so rarely repeats a value that such a run would
        # happen by chance less than once in a million (quantised sensors repeat a lot)
        p_same = np.clip(self._psame[i], 1e-3, 0.999)
        unlikely = run * np.log(p_same) < self.LOG_CHANCE
        stuck = (run >= self.cfg.stuck_readings) & (b.ts - since >= self.cfg.stuck_min_s * 1000) & (
            self._varied[i] >= self.cfg.stuck_readings) & unlikely
        return np.where(stuck, 0.9, 0.0)

    def describe(self, sid: int, x: float, ts: int) -> Finding:
        return Finding("sensor_stuck", f"unchanged for {_duration(ts - float(self._since[sid]))}: "
                       "the sensor may be stuck", None)

    def learn(self, b: Batch, healthy: B) -> None:
        i = b.sid
        same = b.x == self._last[i]
        self._since[i] = np.where(same, self._since[i], b.ts)
        self._run[i] = np.where(same, self._run[i] + 1, 0)
        has = ~np.isnan(self._last[i])
        changed = ~same & has
        self._varied[i] = np.minimum(self._varied[i] + changed, 1_000_000)
        a = np.where(self._varied[i] < 100, 0.05, self.MEMORY)
        learn = has & (healthy | ~same)
        self._psame[i] = np.where(learn, self._psame[i] + a * (same - self._psame[i]), self._psame[i])
        self._last[i] = b.x
        self._last_ts[i] = b.ts


class Range:
    """A value outside what the quantity can physically be (``ranges`` by metric pattern)."""

    name: ClassVar[str] = "range"

    def __init__(self, cfg: DetectSettings) -> None:
        self.cfg = cfg

    def add_series(self, sid: int, kind: str, metric: str) -> None:
        if not hasattr(self, "_lo"):
            self._lo = np.zeros(0, np.float64)
            self._hi = np.zeros(0, np.float64)
        self._lo = _grow(self._lo, sid + 1, -np.inf)  # type: ignore[assignment]
        self._hi = _grow(self._hi, sid + 1, np.inf)  # type: ignore[assignment]
        for pattern, (lo, hi) in self.cfg.ranges.items():
            if fnmatch.fnmatchcase(metric, pattern):
                self._lo[sid], self._hi[sid] = lo, hi
                break

    def score(self, b: Batch) -> F64:
        out = (b.x < self._lo[b.sid]) | (b.x > self._hi[b.sid])
        return np.where(out, 0.95, 0.0)

    def describe(self, sid: int, x: float, ts: int) -> Finding:
        lo, hi = float(self._lo[sid]), float(self._hi[sid])
        return Finding("sensor_out_of_range", f"outside the physical range {_fmt(lo)} to {_fmt(hi)}: "
                       "the sensor or its wiring is faulty", None)

    def learn(self, b: Batch, healthy: B) -> None:
        pass

    def nbytes(self) -> int:
        return _nbytes(self)


class Spike(_Last):
    """A reading that jumped ``spike_k`` typical steps away and straight back: reported on the
    reading that comes back (one reading late, never by looking ahead)."""

    name: ClassVar[str] = "spike"
    MEMORY: ClassVar[float] = 0.01
    RATE: ClassVar[float] = 0.01  # EW memory of the spike rate, ~100 readings
    REPEATED: ClassVar[float] = 0.025  # about three spikes in the last hundred readings
    USUAL_FACTOR: ClassVar[float] = 4.0

    def add_series(self, sid: int, kind: str, metric: str) -> None:
        self._grow_last(sid + 1)
        if not hasattr(self, "_prev"):
            self._prev = np.full(0, np.nan, np.float64)
            self._step = np.zeros(0, np.float64)  # EW mean |step|
            self._steps = np.zeros(0, np.int32)
        self._prev = _grow(self._prev, sid + 1, np.nan)  # type: ignore[assignment]
        self._step = _grow(self._step, sid + 1, 0.0)  # type: ignore[assignment]
        self._steps = _grow(self._steps, sid + 1, 0)  # type: ignore[assignment]
        if not hasattr(self, "_rate"):
            self._rate = np.zeros(0, np.float32)
            self._usual = np.zeros(0, np.float32)  # the long-run spike rate
        self._rate = _grow(self._rate, sid + 1, 0.0)  # type: ignore[assignment]
        self._usual = _grow(self._usual, sid + 1, 0.0)  # type: ignore[assignment]

    def score(self, b: Batch) -> F64:
        i = b.sid
        last, prev, step = self._last[i], self._prev[i], self._step[i] + 1e-12
        up = np.abs(last - prev) / step
        back = np.abs(b.x - prev) / step
        spike = (up > self.cfg.spike_k) & (back < 0.25 * up) & (np.abs(b.x - last) / step > self.cfg.spike_k)
        spike &= self._steps[i] >= self.cfg.warmup_readings
        # one glitch is not a fault (and not an anomaly: the reading that came back resets the
        # evidence of the one that jumped); a sensor that keeps glitching is
        # ...more than its own usual: a lift's readings jump and come back all day
        fast = self._rate[i] * (1 - self.RATE) + self.RATE
        repeated = (fast >= self.REPEATED) & (fast >= self.USUAL_FACTOR * self._usual[i])
        return np.where(spike, np.where(repeated, 0.6, 0.3), 0.0)

    def describe(self, sid: int, x: float, ts: int) -> Finding:
        return Finding("sensor_spike", f"jumped to {_fmt(float(self._last[sid]))} for one reading and "
                       "came back", None)

    def learn(self, b: Batch, healthy: B) -> None:
        i = b.sid
        spiked = self.score(b) > 0
        self._rate[i] = self._rate[i] + self.RATE * (spiked - self._rate[i])
        slow = np.maximum(1.0 / (self._steps[i] + 1), 0.0005)
        self._usual[i] = self._usual[i] + slow * (spiked - self._usual[i])
        d = np.abs(b.x - self._last[i])
        ok = ~np.isnan(d)
        a = np.where(self._steps[i] < 50, 1.0 / (self._steps[i] + 1), self.MEMORY)
        # a jump counts towards the typical step at most as a few typical steps
        cap = np.where(self._steps[i] >= self.cfg.warmup_readings, 4.0 * (self._step[i] + 1e-12), np.inf)
        d = np.where(ok, np.minimum(d, cap), 0.0)
        step = np.where(ok & (healthy | (self._steps[i] < self.cfg.warmup_readings)),
                        self._step[i] + a * (d - self._step[i]), self._step[i])
        self._step[i] = np.where(self._steps[i] == 0, np.where(ok, d, 0.0), step)
        self._steps[i] = self._steps[i] + ok
        self._prev[i] = self._last[i]
        self._last[i] = b.x
        self._last_ts[i] = b.ts


class Noisy(_Last):
    """A sensor whose reading-to-reading jitter has grown ``noisy_ratio`` times its usual:
    a loose connection, interference, a failing transmitter."""

    name: ClassVar[str] = "noisy"
    FAST: ClassVar[float] = 0.1
    SLOW: ClassVar[float] = 0.002

    def add_series(self, sid: int, kind: str, metric: str) -> None:
        self._grow_last(sid + 1)
        if not hasattr(self, "_fast"):
            self._fast = np.zeros(0, np.float64)
            self._slow = np.zeros(0, np.float64)
            self._k = np.zeros(0, np.int32)
        self._fast = _grow(self._fast, sid + 1, 0.0)  # type: ignore[assignment]
        self._slow = _grow(self._slow, sid + 1, 0.0)  # type: ignore[assignment]
        self._k = _grow(self._k, sid + 1, 0)  # type: ignore[assignment]

    def _fast_after(self, b: Batch) -> F64:
        # each step counts at most 2 x noisy_ratio usual steps, so one jump (a chiller
        # starting) cannot look like noise; only many large steps in a row can
        d = np.nan_to_num(np.abs(b.x - self._last[b.sid]))
        d = np.where(self._slow[b.sid] > 0, np.minimum(d, 2 * self.cfg.noisy_ratio * self._slow[b.sid]), d)
        return self._fast[b.sid] + self.FAST * (d - self._fast[b.sid])

    def score(self, b: Batch) -> F64:
        i = b.sid
        fast = self._fast_after(b)
        ratio = fast / (self._slow[i] + 1e-12)
        ready = self._k[i] >= max(200, 4 * self.cfg.warmup_readings)
        noisy = ready & (ratio > self.cfg.noisy_ratio) & (self._slow[i] > 0)
        return np.where(noisy, 0.55, 0.0)

    def describe(self, sid: int, x: float, ts: int) -> Finding:
        r = float(self._fast[sid] / (self._slow[sid] + 1e-12))
        return Finding("sensor_noisy", f"jittering {r:.0f} times more than usual: the sensor may be "
                       "noisy or loose", None)

    def learn(self, b: Batch, healthy: B) -> None:
        i = b.sid
        d = np.nan_to_num(np.abs(b.x - self._last[i]))
        has = ~np.isnan(self._last[i])
        self._fast[i] = np.where(has, self._fast_after(b), 0.0)
        a = np.where(self._k[i] < 100, 1.0 / (self._k[i] + 1), self.SLOW)
        self._slow[i] = np.where(has & healthy, self._slow[i] + a * (d - self._slow[i]), self._slow[i])
        self._k[i] = self._k[i] + has
        self._last[i] = b.x
        self._last_ts[i] = b.ts


class Threshold(_Last):
    """Configured rules per equipment kind and metric: high/low limits with hysteresis and a
    minimum duration, and a maximum rate of change."""

    name: ClassVar[str] = "threshold"
    SEVERITIES: ClassVar[tuple[str, ...]] = ("info", "warning", "minor", "major", "critical")
    # A rate of change is measured against a reference reading at least this old: between
    # two readings a second apart, a sensor's noise and quantisation alone look "fast"
    # (0.1 degC in 1 s is 6 degC a minute). The reference moves on once it is this old.
    RATE_SPAN_MS: ClassVar[int] = 60_000

    def add_series(self, sid: int, kind: str, metric: str) -> None:
        self._grow_last(sid + 1)
        if not hasattr(self, "_hi"):
            self._hi = np.zeros(0, np.float64)
            self._lo = np.zeros(0, np.float64)
            self._hyst = np.zeros(0, np.float64)
            self._dur = np.zeros(0, np.int64)
            self._rate = np.zeros(0, np.float64)
            self._active = np.zeros(0, np.bool_)
            self._since = np.zeros(0, np.int64)
            self._sev = np.zeros(0, np.int8)
        n = sid + 1
        self._hi = _grow(self._hi, n, np.inf)  # type: ignore[assignment]
        self._lo = _grow(self._lo, n, -np.inf)  # type: ignore[assignment]
        self._hyst = _grow(self._hyst, n, 0.0)  # type: ignore[assignment]
        self._dur = _grow(self._dur, n, 0)  # type: ignore[assignment]
        self._rate = _grow(self._rate, n, np.inf)  # type: ignore[assignment]
        self._active = _grow(self._active, n, False)  # type: ignore[assignment]
        self._since = _grow(self._since, n, -1)  # type: ignore[assignment]
        self._sev = _grow(self._sev, n, 3)  # type: ignore[assignment]
        for rule in self.cfg.rules:
            if rule.metric == metric and fnmatch.fnmatchcase(kind, rule.kind):
                if rule.high is not None:
                    self._hi[sid] = rule.high
                if rule.low is not None:
                    self._lo[sid] = rule.low
                if rule.max_rate_per_min is not None:
                    self._rate[sid] = rule.max_rate_per_min
                self._hyst[sid] = rule.hysteresis
                self._dur[sid] = int(rule.min_duration_s * 1000)
                self._sev[sid] = self.SEVERITIES.index(rule.severity)

    def severity(self, sid: int) -> str:
        return self.SEVERITIES[int(self._sev[sid])]

    def _next(self, b: Batch) -> tuple[B, I64, B]:
        i, x = b.sid, b.x
        active = self._active[i]
        beyond = (x > self._hi[i]) | (x < self._lo[i])
        inside = (x < self._hi[i] - self._hyst[i]) & (x > self._lo[i] + self._hyst[i])
        cond = np.where(active, ~inside, beyond)
        since = np.where(cond, np.where(self._since[i] >= 0, self._since[i], b.ts), -1)
        now_active = cond & (b.ts - since >= self._dur[i])
        dt = (b.ts - self._last_ts[i]).astype(np.float64)
        rate = np.abs(x - self._last[i]) / np.maximum(dt, 1.0) * 60_000
        fast = (dt >= self.RATE_SPAN_MS) & ~np.isnan(self._last[i]) & (rate > self._rate[i])
        return now_active, since, fast

    def score(self, b: Batch) -> F64:
        active, _, fast = self._next(b)
        return np.where(active | fast, 1.0, 0.0)

    def describe(self, sid: int, x: float, ts: int) -> Finding:
        hi, lo = float(self._hi[sid]), float(self._lo[sid])
        if x > hi - float(self._hyst[sid]) and math.isfinite(hi):
            return Finding("high", f"above its {_fmt(hi)} limit", hi)
        if x < lo + float(self._hyst[sid]) and math.isfinite(lo):
            return Finding("low", f"below its {_fmt(lo)} limit", lo)
        rate = float(self._rate[sid])
        return Finding("rate", f"changing faster than {_fmt(rate)} a minute", None)

    def learn(self, b: Batch, healthy: B) -> None:
        active, since, _ = self._next(b)
        self._active[b.sid] = active
        self._since[b.sid] = since
        move = np.isnan(self._last[b.sid]) | (b.ts - self._last_ts[b.sid] >= self.RATE_SPAN_MS)
        self._last[b.sid[move]] = b.x[move]
        self._last_ts[b.sid[move]] = b.ts[move]
