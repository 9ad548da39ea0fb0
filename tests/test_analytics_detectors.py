"""The streaming detectors on their own and in the engine's fusion: the anomaly-likelihood
detector (``Surprise``), the EWMA chart (``Shift``), the baseline's self-calibrating limit,
re-alarm suppression, and the replay's shared engine for single-series files (no labels,
no look-ahead) and SKAB's protocol."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from analytics.detectors import Baseline, Batch
from analytics.engine import Emitted, Engine
from analytics.likelihood import Surprise
from analytics.registry import DETECTORS
from analytics.replay import protocol, replay_files
from analytics.settings import DetectSettings
from analytics.shift import Shift

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
    assert list(DETECTORS) == ["threshold", "range", "stuck", "spike", "noisy", "baseline", "shift",
                               "surprise"]


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
    assert len(fired) <= 3 and np.all(np.diff(fired) > DetectSettings().surprise_refractory_readings)
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


def _engine_run(x: np.ndarray, step_ms: int, device: str = "pump-01",
                cfg: DetectSettings | None = None) -> tuple[list[Emitted], np.ndarray]:
    engine = Engine(cfg or DetectSettings(models=False))
    sid = engine.series("s", device, "flow_l_min")
    ts = T0 + np.arange(len(x), dtype=np.int64) * step_ms
    return engine.process(np.full(len(x), sid, np.int64), ts, x), ts


def test_shift_finds_a_small_lasting_shift_that_no_single_reading_shows() -> None:
    """A valve sticks half-closed: the flow drops by 1.5 sd for 400 readings (1-s data, as
    SKAB's valve rig records). No reading leaves the baseline's band; the EWMA chart opens
    one anomaly within a minute, holds it while the flow stays low, and it clears within
    ``clear_after_intervals`` readings of the flow coming back (not the 2-min wall clock)."""
    rng = np.random.default_rng(11)
    x = 32 + rng.normal(0, 0.4, 1600)
    x[1000:1400] -= 0.6
    # 27 minutes of data: the chart's day of warm-up (for a building's daily rhythm) is off
    events, ts = _engine_run(x, 1000, cfg=DetectSettings(models=False, shift_warmup_s=0))
    opens = [e for e in events if e.anomaly.state == "open"]
    clears = [e for e in events if e.anomaly.state == "cleared"]
    assert len(opens) == 1 and len(clears) == 1, [(e.anomaly.state, e.anomaly.detectors) for e in events]
    a = opens[0].anomaly
    assert a.detectors == ("shift",) and a.fault == "flow_l_min_shifted_low"
    assert ts[1000] <= a.started_ms <= ts[1060]
    assert "lasting shift" in a.summary and "falling" not in a.summary
    cleared = clears[0].anomaly.ts_ms
    assert ts[1400] <= cleared <= ts[1400] + 60_000  # back to normal: the chart needs ~2/λ readings


def test_shift_rarely_fires_on_noise_of_any_kind() -> None:
    """Onsets per 10,000 readings of stationary noise: white, heavy-tailed (Student t3) and
    autocorrelated (AR(1), φ = 0.9, as slow temperatures are), 10 series of each."""
    rng = np.random.default_rng(3)
    n, k = 6000, 10
    white = rng.normal(0, 1, (n, k))
    heavy = rng.standard_t(3, (n, k))
    ar = np.zeros((n, k))
    e = rng.normal(0, 1, (n, k))
    for t in range(1, n):
        ar[t] = 0.9 * ar[t - 1] + e[t]
    rates = []
    for x in (white, heavy, ar):
        cfg = DetectSettings()
        base, shift = Baseline(cfg), Shift(cfg)
        shift.link({"baseline": base})
        onsets = 0
        for sid in range(k):
            base.add_series(sid, "equipment", "v")
            shift.add_series(sid, "equipment", "v")
        ids = np.arange(k, dtype=np.int64)
        was = np.zeros(k, np.bool_)
        for t in range(n):
            b = Batch(ids, np.full(k, T0 + t * MIN, np.int64), 20 + x[t])
            s0, s1 = base.score(b), shift.score(b)
            fired = s1 >= 0.5
            onsets += int((fired & ~was).sum())
            was = fired
            healthy = (s0 < 0.5) & ~fired
            base.learn(b, healthy)
            shift.learn(b, healthy)
        rates.append(onsets / (k * (n - cfg.shift_warmup_readings)) * 1e4)
    assert rates[0] < 1.0 and rates[1] < 2.0 and rates[2] < 3.0, rates  # measured 0.17, 0.17, 0.86


def test_shift_follows_a_daily_cycle_once_the_baseline_knows_it() -> None:
    """A chiller's supply temperature with a daily rhythm (15-min readings): the chart
    averages deviations from the hour-of-day baseline, so the rhythm is no shift, and a day
    that runs 3 sd of its noise warm throughout is."""
    rng = np.random.default_rng(8)
    step = 15 * MIN
    k = np.arange(96 * 14)
    hour = (k * step // 3_600_000) % 24
    x = np.where((hour >= 8) & (hour < 18), 7.0, 9.0) + rng.normal(0, 0.3, len(k))
    x[96 * 11 : 96 * 12] += 0.9
    events, ts = _engine_run(x, step, "chiller-01")
    shifts = [e.anomaly for e in events if e.anomaly.state == "open" and e.anomaly.detectors[0] == "shift"]
    normal = [a for a in shifts if ts[96 * 4] <= a.started_ms < ts[96 * 11]]
    assert not normal, [a.summary for a in normal]
    assert any(ts[96 * 11] <= a.started_ms < ts[96 * 12] for a in shifts)


def test_skab_replay_arms_the_chart_after_the_training_rows(tmp_path: Path) -> None:
    """SKAB's protocol: 20 minutes at 1 s, the first 400 rows for training. The replay's
    chart arms after them (not after the fleet's day) and finds the flow that drops by
    1.5 sd for 400 rows, marking it while it lasts."""
    rng = np.random.default_rng(13)
    n = 1150
    flow = 32 + rng.normal(0, 0.4, n)
    flow[575:975] -= 0.6
    temp = 70 + np.cumsum(rng.normal(0, 0.02, n))
    rows = ["datetime;Temperature;Volume Flow RateRMS;anomaly;changepoint"]
    t0 = datetime(2020, 3, 9, 10, 34, 33)
    rows += [f"{t0 + timedelta(seconds=k):%Y-%m-%d %H:%M:%S};{temp[k]:.4f};{flow[k]:.4f};0;0"
             for k in range(n)]
    path = tmp_path / "1.csv"
    path.write_text("\n".join(rows) + "\n")
    [(_, onset, active)] = replay_files([path], "skab", protocol("skab", DetectSettings()))
    assert active[:575].sum() == 0 and onset[575:640].max() > 0
    assert active[575:975].mean() > 0.8 and active[1000:].sum() == 0


def test_surprise_ignores_the_flicker_of_a_quantised_steady_value() -> None:
    """A fire panel's battery on float charge: 27.2 V, 0.02 V of noise, reported to 0.01 V,
    for four days of 1-min readings. Its surprise barely varies, so without a floor on that
    spread a flicker of the last digit was "many sd": 11 findings here, and 15 of the
    simulator's false anomalies. With the floor (0.05): none."""
    rng = np.random.default_rng(1)
    x = np.round(27.2 + rng.normal(0, 0.02, 1440 * 4), 2)
    assert run(Surprise(DetectSettings(surprise_min_sd=1e-6)), x, MIN).max() >= 0.5
    assert run(Surprise(DetectSettings()), x, MIN).max() < 0.5
