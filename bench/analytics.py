"""Benchmark of the analytics engine: readings scored per second per core, memory per series,
model scoring latency per device.

A synthetic fleet (``--devices`` devices of one kind, ``--metrics`` metrics each, 1 reading per
metric per tick, a daily cycle plus noise) is fed to ``analytics.engine.Engine`` one tick per
call, every streaming detector and the multivariate model on. Figures:

- ``readings_per_s``: readings scored (score, fuse, learn, model) per CPU second of this
  process, after the warm-up, so it is per core;
- ``readings_per_s_with_decode``: the same including the worker's glue from decoded wire
  ``Telemetry`` to arrays (the path ``analytics.service`` takes);
- ``bytes_per_series``: memory traced (tracemalloc, numpy included) per tracked series once
  every series has its state, Python's dicts and lists included;
- ``model_us_per_device``: the model's share of a tick per device (CPU µs).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

# Run as a script, this file's folder comes first on sys.path and its name would hide the
# analytics package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.modules.pop("analytics", None)

from analytics.engine import Engine  # noqa: E402
from analytics.settings import DetectSettings  # noqa: E402
from wire import Reading, Telemetry  # noqa: E402

T0 = 1_795_000_000_000


def fleet(engine: Engine, devices: int, metrics: int) -> tuple[np.ndarray, list[tuple[str, str, str]]]:
    keys = [("bench", f"pump-{d:05d}", f"m{m}") for d in range(devices) for m in range(metrics)]
    sid = np.array([engine.series(s, d, m, "u", "gw") for s, d, m in keys], np.int64)
    return sid, keys


def tick_values(rng: np.random.Generator, k: int, devices: int, metrics: int, step_s: float) -> np.ndarray:
    load = 0.5 + 0.4 * np.sin(2 * np.pi * k * step_s / 86400 + rng.uniform(0, 0.1, devices))
    base = np.linspace(1, 100, metrics)
    x = load[:, None] * base[None, :] + rng.normal(0, 0.5, (devices, metrics))
    return x.reshape(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=2000, help="devices (default 2000)")
    p.add_argument("--metrics", type=int, default=5, help="metrics per device (default 5)")
    p.add_argument("--warmup-ticks", type=int, default=400, help="ticks before measuring (default 400)")
    p.add_argument("--ticks", type=int, default=200, help="ticks measured (default 200)")
    p.add_argument("--step-s", type=float, default=10.0, help="seconds between ticks (default 10)")
    args = p.parse_args()
    rng = np.random.default_rng(1)
    # the model is fitted as soon as it has rows (no day of history): this measures speed
    cfg = DetectSettings(model_warmup_rows=min(300 * args.devices, 20_000), model_retrain_rows=0,
                         model_min_span_s=0)

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine = Engine(cfg)
    sid, keys = fleet(engine, args.devices, args.metrics)
    n = len(sid)
    first = tick_values(rng, 0, args.devices, args.metrics, args.step_s)
    engine.process(sid, np.full(n, T0, np.int64), first)
    bytes_per_series = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()

    step_ms = int(args.step_s * 1000)
    for k in range(1, args.warmup_ticks):
        engine.process(sid, np.full(n, T0 + k * step_ms, np.int64),
                       tick_values(rng, k, args.devices, args.metrics, args.step_s))
    trained = engine.models.models()
    ticks = [tick_values(rng, k, args.devices, args.metrics, args.step_s)
             for k in range(args.warmup_ticks, args.warmup_ticks + args.ticks)]
    events = 0
    c0 = time.process_time()
    for j, x in enumerate(ticks):
        events += len(engine.process(sid, np.full(n, T0 + (args.warmup_ticks + j) * step_ms, np.int64), x))
    cpu = time.process_time() - c0
    readings_per_s = n * args.ticks / cpu

    # the worker's glue: decoded Telemetry -> arrays, then the same engine call
    base_k = args.warmup_ticks + args.ticks
    msgs = []
    for j in range(20):
        x = tick_values(rng, base_k + j, args.devices, args.metrics, args.step_s).reshape(args.devices, -1)
        ts = T0 + (base_k + j) * step_ms
        msgs.append([
            (keys[d * args.metrics][0], "gw", keys[d * args.metrics][1], Telemetry(v=1, seq=j, readings=tuple(
                Reading(ts_ms=ts, metric=f"m{m}", value=float(x[d, m]), unit="u")
                for m in range(args.metrics))))
            for d in range(args.devices)])
    c0 = time.process_time()
    for batch in msgs:
        sids: list[int] = []
        tss: list[int] = []
        xs: list[float] = []
        series = engine.series
        for site, agent, device, t in batch:
            for r in t.readings:
                v = r.value
                if isinstance(v, float):
                    sids.append(series(site, device, r.metric, r.unit, agent))
                    tss.append(r.ts_ms)
                    xs.append(v)
        engine.process(np.array(sids, np.int64), np.array(tss, np.int64), np.array(xs, np.float64))
    with_decode = n * len(msgs) / (time.process_time() - c0)

    # the model's share of a tick
    model_us = float("nan")
    if trained:
        from analytics.detectors import Batch

        dev = engine._sdev[sid]
        healthy = np.ones(n, np.bool_)
        x = tick_values(rng, 0, args.devices, args.metrics, args.step_s)
        c0 = time.process_time()
        for j in range(20):
            b = Batch(sid, np.full(n, T0 + (base_k + 100 + j) * step_ms, np.int64), x)
            engine.models.step(b, dev, healthy, engine._dlast)
        model_us = (time.process_time() - c0) / 20 / args.devices * 1e6

    print(f"series: {n} ({args.devices} devices x {args.metrics} metrics); detectors: "
          f"{', '.join(engine._names)} + model ({'trained' if trained else 'not trained'})")
    print(f"readings scored per CPU second: {readings_per_s:,.0f} (engine), {with_decode:,.0f} (with the "
          f"worker's glue from decoded telemetry)")
    print(f"memory per tracked series: {bytes_per_series:,.0f} bytes (arrays {engine.nbytes() / n:,.0f})")
    print(f"model scoring: {model_us:.2f} us per device per tick; anomalies during the run: {events}")
    print(json.dumps({
        "readings_per_s": round(readings_per_s), "readings_per_s_with_decode": round(with_decode),
        "bytes_per_series": round(bytes_per_series), "array_bytes_per_series": round(engine.nbytes() / n),
        "model_us_per_device": round(model_us, 3) if trained else None, "series": n, "anomalies": events,
    }))


if __name__ == "__main__":
    main()
