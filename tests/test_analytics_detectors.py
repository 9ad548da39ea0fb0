"""The streaming detectors on their own and in the engine's fusion: the anomaly-likelihood
detector (``Surprise``), the baseline's self-calibrating limit, re-alarm suppression, and
the replay's shared engine for single-series files (no labels, no look-ahead)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analytics.detectors import Baseline, Batch
from analytics.engine import Engine
from analytics.likelihood import Surprise
from analytics.registry import DETECTORS
from analytics.replay import replay_files
from analytics.settings import DetectSettings

T0 = 1_795_000_000_000
MIN = 60_000


def run(det: Surprise | Baseline, x: np.ndarray, step_ms: int = 5 * MIN, start: int = 0) -> np.ndarray:
    """Score then learn one reading at a time (what the engine does); the scores."""
    det.add_series(0, "equipment", "value")
    out = np.zeros(len(x))
    for k, v in enumerate(x):
        b = Batch(np.array([0], np.int64), np.array([T0 + (start + k) * step_ms], np.int64), np.array([v]))
        s = det.score(b)
        out[k] = s[0]
        det.learn(b, s < 0.5)
    return out


def test_registry_order_explains_by_rules_then_sensors_then_statistics() -> None:
    assert list(DETECTORS) == ["threshold", "range", "stuck", "spike", "noisy", "baseline", "surprise"]


def test_surprise_fires_once_on_a_change_of_behaviour_then_learns_it() -> None:
    """A steady noisy series for 3 days (5-min readings), then it turns erratic for good: one
    firing reading at the change, then silence while it learns the new normal."""
    rng = np.random.default_rng(5)
    n, change = 2000, 1000
    x = 20 + rng.normal(0, 0.2, n)
    x[change:] += rng.normal(0, 2.0, n - change)
    s = run(Surprise(DetectSettings()), x)
    fired = np.flatnonzero(s >= 0.5)
    assert len(fired) >= 1 and change <= fired[0] <= change + 20
    # once per regime change: the refractory period, then the new spread is the usual one
    assert len(fired) <= 3 and np.all(np.diff(fired) > Surprise.REFRACTORY)
    assert s[:change].max() < 0.5


def test_surprise_predicts_a_daily_cycle_and_catches_a_missing_one() -> None:
    """A chiller-like daily cycle is predicted by the hour-of-day season; a day when the
    cycle flattens (the plant did not start) is the change it reports."""
    rng = np.random.default_rng(8)
    step = 15 * MIN
    k = np.arange(96 * 12)  # 12 days at 15 min
    hour = (k * step // 3_600_000) % 24
    x = np.where((hour >= 8) & (hour < 18), 12.0, 4.0) + rng.normal(0, 0.1, len(k))
    flat = slice(96 * 9, 96 * 10)
    x[flat] = 4.0 + rng.normal(0, 0.1, 96)
    s = run(Surprise(DetectSettings()), x, step)
    fired = np.flatnonzero(s >= 0.5)
    normal_days = s[96 * 3 : 96 * 9]  # after the season is learnt
    assert normal_days.max() < 0.5
    assert len(fired) and 96 * 9 <= fired[0] < 96 * 10


def test_surprise_rarely_fires_on_noise_even_heavy_tailed() -> None:
    """False findings per 10,000 readings of stationary noise, 20 series of each kind."""
    rng = np.random.default_rng(0)
    series, n = 40, 5000
    x = rng.normal(0, 1, (n, series))
    x[:, 20:] = np.abs(rng.standard_t(3, (n, 20)))
    det = Surprise(DetectSettings())
    for sid in range(series):
        det.add_series(sid, "equipment", "value")
    fires = np.zeros(series)
    ids = np.arange(series, dtype=np.int64)
    for k in range(n):
        b = Batch(ids, np.full(series, T0 + k * 5 * MIN, np.int64), x[k])
        s = det.score(b)
        fires += s >= 0.5
        det.learn(b, s < 0.5)
    per_10k = fires / (n - 300) * 1e4
    assert per_10k[:20].mean() < 2.0  # white noise: measured 0.6
    assert per_10k[20:].mean() < 10.0  # Student t3: measured 5.4


def test_surprise_leaves_counters_alone() -> None:
    """A lift's trip counter: +1 now and then, then a burst of trips. It never goes down, so
    `surprise` does not judge it (a counter's level always lags; its rate is what matters,
    and it fired on the simulator's running hours and energy meters)."""
    rng = np.random.default_rng(0)
    inc = (rng.random(3000) < 0.1).astype(float)
    inc[2000:2030] = 20
    x = np.cumsum(inc)
    assert run(Surprise(DetectSettings()), x, MIN).max() < 0.5
    # the same shape with ups and downs is judged, and the burst found
    wobble = x + np.where(np.arange(3000) % 2 == 0, 0.5, -0.5)
    assert run(Surprise(DetectSettings()), wobble, MIN).max() >= 0.5


def test_surprise_waits_a_day_and_its_warmup_before_firing() -> None:
    x = np.r_[np.zeros(200), np.full(200, 50.0)] + np.random.default_rng(1).normal(0, 0.1, 400)
    s = run(Surprise(DetectSettings()), x, MIN)  # 400 minutes: less than a day
    assert s.max() < 0.5


def test_baseline_limit_rises_for_a_spiky_series_but_not_for_one_lasting_fault() -> None:
    rng = np.random.default_rng(2)
    cfg = DetectSettings()
    spiky = 10 + rng.normal(0, 0.2, 3000)
    spiky[200::40] += 15  # a routine excursion every 40 readings (a load that kicks in)
    det = Baseline(cfg)
    s = run(det, spiky)
    assert float(det._zlim[0]) > 2 * cfg.z_fire
    assert (s[2000:] >= 0.5).sum() < (s[200:1200] >= 0.5).sum()  # it learnt its own tail
    steady = 10 + rng.normal(0, 0.2, 1500)
    steady[1000:] += 15  # one fault that lasts
    det = Baseline(cfg)
    run(det, steady[:1000])
    before = float(det._zlim[0])
    s = run(det, steady[1000:], start=1000)
    # a few excursions at most (the baseline's hour-of-day/all-day switch can interrupt a
    # fault's deviation for a reading or two), far from what routine spikes teach it
    assert float(det._zlim[0]) <= before * (1 + Baseline.EXCURSION_STEP) ** 3 + 1e-6
    assert (s[:100] >= 0.5).mean() > 0.7  # it keeps firing while the fault lasts


def test_chattering_deviation_gives_one_anomaly_not_a_storm() -> None:
    """A series that keeps dipping in and out of its abnormal band: one anomaly opens; after
    it clears, it does not reopen for the engine's re-alarm period."""
    rng = np.random.default_rng(4)
    engine = Engine(DetectSettings(models=False))
    sid = engine.series("s", "fan-01", "speed_rpm")
    n = 900
    x = 1000 + rng.normal(0, 5, n)
    for start in range(400, 900, 12):  # a 3-reading excursion every 12 readings
        x[start : start + 3] += 200
    ts = T0 + np.arange(n, dtype=np.int64) * MIN
    events = engine.process(np.full(n, sid, np.int64), ts, x)
    opens = [e for e in events if e.anomaly.state == "open"]
    assert 1 <= len(opens) <= 5  # 42 excursions, a handful of onsets
    assert opens[0].anomaly.ts_ms >= int(ts[400])


def test_replay_of_many_single_series_files_equals_one_by_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    paths = []
    for j in range(3):
        n = 700 + 100 * j
        v = 5 + rng.normal(0, 0.3, n)
        v[500 + 50 * j :] += 4
        lines = ["timestamp,value"] + [f"2015-0{j + 1}-01 {k // 60 % 24:02d}:{k % 60:02d}:00,{v[k]:.3f}"
                                       if k < 1440 else "" for k in range(n)]
        p = tmp_path / f"{j}.csv"
        p.write_text("\n".join(lines) + "\n")
        paths.append(p)
    cfg = DetectSettings()
    together = replay_files(paths, "nab", cfg)
    for p, (stamps, onset, active) in zip(paths, together, strict=True):
        [(s1, o1, a1)] = replay_files([p], "nab", cfg)
        assert stamps == s1 and np.array_equal(onset, o1) and np.array_equal(active, a1)
    assert all(o.max() > 0 for _, o, _ in together)  # every shift found
