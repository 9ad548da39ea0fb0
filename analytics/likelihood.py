"""Surprise: an anomaly-likelihood detector over prediction errors (after Numenta's HTM
"anomaly likelihood", Ahmad et al. 2017), in the registry's batch form.

Why: a single reading a few sd away is common in real telemetry (a door opens, a compressor
cycles); what engineers care about is a *change of behaviour*: the series becomes harder to
predict than it usually is. So the detector does not judge readings, it judges its own
recent prediction errors against their long-run distribution:

1. prediction: the series' slow level (EW mean), or, once it has ``seasonal_min_days`` of
   history and the season predicts it at least twice as well (the same test ``Baseline``
   makes), the mean of its hour-of-day x weekday/weekend bucket — so a daily cycle is
   predicted and a missing or flattened cycle is an error (counters, which never go down,
   are not judged: their level always lags);
2. error: log(1 + |x - prediction| / the EW rms of past errors), capped at ``ERR_CAP``;
3. short-term surprise: EW mean of the error over ~``1/SHORT`` readings;
4. likelihood: how many long-run sd (EW over ~``1/LONG`` readings) the short-term surprise
   lies above its long-run mean;
5. it fires when that reaches ``surprise_limit``, **once**, then stays quiet for
   ``surprise_refractory_readings`` readings: one regime change is one finding, not a
   storm (NAB and operators alike charge every repeated alarm).

Everything learns from every reading (healthy or not): the point is to notice a change,
then accept it as the new normal, as HTM does.

Invariants: ``score`` reads state only; ``learn`` recomputes what ``score`` saw (so the
refractory period starts exactly at a reading that fired); state is one row per series.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from analytics.detectors import (
    DAY_MS,
    F64,
    I64,
    SEASON_BUCKETS,
    B,
    Batch,
    Finding,
    _fmt,
    _grow,
    _nbytes,
    season_bucket,
)
from analytics.settings import DetectSettings


class Surprise:
    """Fires once when a series becomes much harder to predict than it usually is."""

    name: ClassVar[str] = "surprise"
    # One firing reading is enough to open an anomaly: its score already summarises the
    # last ~1/SHORT readings (the engine multiplies a detector's score by this for evidence).
    EVIDENCE: ClassVar[float] = 2.0
    LEVEL: ClassVar[float] = 0.001  # EW memory of the level and of the error scale
    SHORT: ClassVar[float] = 0.1  # ~10 readings of recent surprise
    LONG: ClassVar[float] = 0.00025  # ~4000 readings of its usual distribution
    SEASON_MIN_ALPHA: ClassVar[float] = 0.1  # a bucket remembers ~10 days
    SEASON_MIN_COUNT: ClassVar[int] = 3
    SEASON_GAIN: ClassVar[float] = 0.5
    RESIDUAL: ClassVar[float] = 0.01  # EW memory of the two predictors' squared errors
    ERR_CAP: ClassVar[float] = 20.0
    COUNTER_MEMORY: ClassVar[float] = 0.001
    COUNTER_DOWN: ClassVar[float] = 0.002  # goes down less often than this: a counter

    def __init__(self, cfg: DetectSettings) -> None:
        self.cfg = cfg

    def add_series(self, sid: int, kind: str, metric: str) -> None:
        if not hasattr(self, "_n"):
            # float32 where the precision is ample, to stay within the fleet's memory budget
            self._n = np.zeros(0, np.int32)
            self._first = np.zeros(0, np.int64)
            self._quiet = np.zeros(0, np.int16)  # readings left in the refractory period
            self._level = np.zeros(0, np.float64)
            self._err2 = np.zeros(0, np.float32)  # EW mean squared error: the error scale
            self._short = np.zeros(0, np.float32)
            self._lmean = np.zeros(0, np.float32)
            self._lvar = np.zeros(0, np.float32)
            self._res_g = np.zeros(0, np.float32)
            self._res_s = np.zeros(0, np.float32)
            self._down = np.zeros(0, np.float32)  # share of readings below the one before
            self._last = np.zeros(0, np.float64)
            self._smean = np.zeros((0, SEASON_BUCKETS), np.float32)
            self._scount = np.zeros((0, SEASON_BUCKETS), np.uint8)  # saturates: only < 10 matters
        n = sid + 1
        for name, fill in (("_n", 0), ("_first", 0), ("_quiet", 0), ("_level", 0.0), ("_err2", 0.0),
                           ("_short", 0.0), ("_lmean", 0.0), ("_lvar", 1.0), ("_res_g", np.inf),
                           ("_res_s", np.inf), ("_down", 1.0), ("_last", np.nan), ("_smean", 0.0),
                           ("_scount", 0)):
            setattr(self, name, _grow(getattr(self, name), n, fill))

    def _bucket(self, ts: I64) -> I64:
        return season_bucket(ts, self.cfg.utc_offset_h)

    def _step(self, b: Batch) -> tuple[F64, F64, F64, B, I64]:
        """(likelihood, prediction error, new short-term surprise, seasonal?, own bucket)."""
        i, x = b.sid, b.x
        own = self._bucket(b.ts)
        # the first weekend takes the weekday's hour (and the other way round)
        have = self._scount[i, own] >= self.SEASON_MIN_COUNT
        bucket = np.where(have, own, own ^ 1)
        seasonal = (self._scount[i, bucket] >= self.SEASON_MIN_COUNT) & (
            b.ts - self._first[i] >= self.cfg.seasonal_min_days * DAY_MS) & (
            self._res_s[i] < self.SEASON_GAIN * self._res_g[i])
        pred = np.where(seasonal, self._smean[i, bucket].astype(np.float64), self._level[i])
        err = x - pred
        z = np.abs(err) / np.maximum(np.sqrt(self._err2[i]), 1e-9)
        # log1p: a heavy-tailed series' errors averaged over a few readings are far from
        # Gaussian, and a tail probability read from their sd would fire ~5 times as often
        z = np.where(self._n[i] >= 10, np.log1p(np.minimum(z, self.ERR_CAP)), 0.0)
        short = self._short[i] + self.SHORT * (z - self._short[i])
        # the spread has a floor: a quantised, nearly constant series (a battery on float
        # charge) has almost no spread of surprise, and a flicker of its last digit would be
        # "many sd" (on white noise the spread is about 0.09, so the floor costs nothing there)
        lik = (short - self._lmean[i]) / np.maximum(np.sqrt(self._lvar[i]), self.cfg.surprise_min_sd)
        ready = (self._n[i] >= self.cfg.surprise_warmup_readings) & (
            b.ts - self._first[i] >= self.cfg.surprise_warmup_s * 1000)
        # a counter (running hours, energy, trips) never goes down: its level always lags
        # and every change of pace (the pump stops) would look like a change of behaviour;
        # its meaning is in its rate, which the sensor-health detectors and rules judge
        ready &= self._down[i] >= self.COUNTER_DOWN
        lik = np.where(ready, np.maximum(lik, 0.0), 0.0)
        return lik, err, short, seasonal, own

    def score(self, b: Batch) -> F64:
        lik = self._step(b)[0]
        s = lik / (lik + self.cfg.surprise_limit)
        return np.where(self._quiet[b.sid] > 0, np.minimum(s, 0.49), s)

    def describe(self, sid: int, x: float, ts: int) -> Finding:
        one = Batch(np.array([sid], np.int64), np.array([ts], np.int64), np.array([x], np.float64))
        _, err, short, seasonal, _ = self._step(one)
        expected = x - float(err[0])
        # back from log(1 + error/scale) to "times the usual error scale"
        recent, usual = float(np.expm1(short[0])), float(np.expm1(self._lmean[sid]))
        when = " for this hour" if seasonal[0] else ""
        return Finding("unpredictable", f"expected about {_fmt(expected)}{when}; lately off by {recent:.1f} "
                       f"times its usual error scale (usually {usual:.1f}): its behaviour changed", expected)

    def learn(self, b: Batch, healthy: B) -> None:
        i, x = b.sid, b.x
        lik, err, short, _, own = self._step(b)
        fired = (lik >= self.cfg.surprise_limit) & (self._quiet[i] == 0)
        self._quiet[i] = np.where(fired, self.cfg.surprise_refractory_readings,
                                  np.maximum(self._quiet[i] - 1, 0))
        n = self._n[i]
        first = n == 0
        # running means until there are 1/rate readings, EW after: unbiased from the start
        # (an EW average started at 0 would make a young series look surprising)
        lr = np.maximum(1.0 / (n + 1), self.LONG)
        ar = np.maximum(1.0 / (n + 1), self.LEVEL)
        # long-run distribution of the short-term surprise (EW mean and variance)
        d = short - self._lmean[i]
        self._lmean[i] = np.where(first, short, self._lmean[i] + lr * d)
        self._lvar[i] = np.where(first, 0.0, (1 - lr) * (self._lvar[i] + lr * d * d))
        self._short[i] = short
        self._err2[i] = self._err2[i] + ar * (err * err - self._err2[i])
        # how well each predictor did, before learning this reading
        ready = self._scount[i, own] >= self.SEASON_MIN_COUNT
        eg = (x - self._level[i]) ** 2
        es = np.where(ready, (x - self._smean[i, own]) ** 2, eg)
        rg = np.where(np.isinf(self._res_g[i]), eg, self._res_g[i])
        rs = np.where(np.isinf(self._res_s[i]), es, self._res_s[i])
        self._res_g[i] = rg + self.RESIDUAL * (eg - rg)
        self._res_s[i] = rs + self.RESIDUAL * (es - rs)
        has = ~np.isnan(self._last[i])
        dr = np.maximum(1.0 / np.maximum(n, 1), self.COUNTER_MEMORY)
        self._down[i] = np.where(has, self._down[i] + dr * ((x < self._last[i]) - self._down[i]),
                                 self._down[i])
        self._last[i] = x
        self._level[i] = np.where(first, x, self._level[i] + ar * (x - self._level[i]))
        self._first[i] = np.where(first, b.ts, self._first[i])
        c = self._scount[i, own].astype(np.float64)
        a = np.maximum(1.0 / (c + 1), self.SEASON_MIN_ALPHA)
        sm = self._smean[i, own].astype(np.float64)
        self._smean[i, own] = np.where(c == 0, x, sm + a * (x - sm))
        self._scount[i, own] = np.minimum(c + 1, 255).astype(np.uint8)
        self._n[i] = np.minimum(n + 1, 2_000_000_000)

    def nbytes(self) -> int:
        return _nbytes(self)
