"""Analytics against the simulator's injected faults: precision, recall and time to detect
per fault kind. Prints a table; the last line is one JSON object.

The simulated device models (``simulators``) are sampled in simulated time, in process and
without MQTT, with faults drawn at random after a fault-free warm-up; every reading goes
through ``analytics.engine.Engine`` (numbers) or ``analytics.events.Judge`` (booleans, states
and the devices' events) exactly as the worker feeds them, and the anomalies are
scored with the simulator's own scorer (``simulators.score``: an anomaly matches a fault on
the same device first seen between its start and its end plus ``--grace-s``).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.modules.pop("analytics", None)

import numpy as np  # noqa: E402

from analytics.engine import Engine  # noqa: E402
from analytics.events import Judge  # noqa: E402
from analytics.settings import DetectSettings  # noqa: E402
from simulators.base import UnreachableError  # noqa: E402
from simulators.models import MODELS  # noqa: E402
from simulators.scenario import Placement, random_faults  # noqa: E402
from simulators.score import detections, format_report, report_json, score  # noqa: E402

DAY_MS = 86_400_000


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-kind", type=int, default=3, help="devices per kind (default 3)")
    p.add_argument("--warmup-days", type=float, default=2.0, help="fault-free days first (default 2)")
    p.add_argument("--days", type=float, default=3.0, help="days with faults (default 3)")
    p.add_argument("--interval-s", type=float, default=60.0, help="seconds between polls (default 60)")
    p.add_argument("--rate-per-day", type=float, default=2.0, help="faults per device per day (default 2)")
    p.add_argument("--grace-s", type=float, default=600.0, help="matching grace after a fault ends")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--numbers-only", action="store_true",
                   help="judge numeric readings only (no events, booleans or states), as before they were")
    args = p.parse_args()
    start = 1_795_000_000_000 - 1_795_000_000_000 % DAY_MS
    fault_start = start + int(args.warmup_days * DAY_MS)
    places = [Placement("sim", "gw1", f"{kind.replace('_', '-')}-{i + 1:02d}", kind)
              for kind in MODELS for i in range(args.per_kind)]
    truth = random_faults(places, seed=args.seed, rate_per_day=args.rate_per_day, start_ms=fault_start,
                          horizon_s=args.days * 86400)
    devices = [MODELS[pl.kind](pl.device, args.seed * 1000 + k,
                               faults=[f for f in truth if f.device == pl.device])
               for k, pl in enumerate(places)]
    cfg = DetectSettings()
    engine = Engine(cfg)
    judge = Judge(cfg)
    events = []
    step = int(args.interval_s * 1000)
    end = fault_start + int(args.days * DAY_MS)
    c0 = time.process_time()
    readings = 0
    for now in range(start, end, step):
        sids: list[int] = []
        xs: list[float] = []
        tss: list[int] = []
        for pl, dev in zip(places, devices, strict=True):
            try:
                got = dev.read(now)
            except UnreachableError:
                continue
            for ev in dev.take_events():  # events first, as the worker takes them
                if not args.numbers_only:
                    events += judge.event(pl.site, pl.agent, pl.device, pl.kind, ev.kind, ev.severity,
                                          ev.message, ev.ts_ms)
            for r in got:
                if isinstance(r.value, float):
                    sids.append(engine.series(pl.site, pl.device, r.metric, r.unit, pl.agent, pl.kind))
                    xs.append(r.value)
                    tss.append(r.ts_ms)
                elif not args.numbers_only:
                    events += judge.reading(pl.site, pl.agent, pl.device, pl.kind, r.metric, r.value, r.ts_ms)
        readings += len(xs)
        events += engine.process(np.array(sids, np.int64), np.array(tss, np.int64), np.array(xs, np.float64))
        events += engine.tick(now)
        events += judge.tick(now)
    cpu = time.process_time() - c0
    found = [(e.site, e.device, e.anomaly) for e in events if e.anomaly.ts_ms >= fault_start]
    warmup_false = len({e.anomaly.id for e in events if e.anomaly.ts_ms < fault_start})
    early = collections.Counter(f"{e.anomaly.kind}/{e.anomaly.fault}" for e in events
                                if e.anomaly.ts_ms < fault_start and e.anomaly.state == "open")
    report = score(truth, detections(found), grace_s=args.grace_s)
    print(f"{len(places)} devices ({', '.join(MODELS)}), {args.warmup_days:g} fault-free days then "
          f"{args.days:g} days with {len(truth)} faults; {readings:,} readings in {cpu:.0f} s CPU")
    print(format_report(report))
    print(f"anomalies during the fault-free warm-up (all false): {warmup_false}: "
          f"{', '.join(f'{k} {n}' for k, n in early.most_common(8))}")
    matched = {aid for aid, _ in report.matches}
    false = collections.Counter(f"{a.kind}/{a.fault}" for _, _, a in found
                                if a.state == "open" and a.id not in matched)
    print(f"anomalies that match no injected fault: {sum(false.values())}: "
          f"{', '.join(f'{k} {n}' for k, n in false.most_common(10))}")
    out = report_json(report)
    total = out["all"]
    ttd = list(total["ttd_s"])
    print(json.dumps({
        "faults": total["faults"], "recall": total["recall"], "precision": total["precision"],
        "median_ttd_s": _median(ttd), "warmup_false_anomalies": warmup_false,
        "per_kind": {k["fault"]: {"recall": k["recall"], "precision": k["precision"],
                                  "median_ttd_s": _median(k["ttd_s"])} for k in out["kinds"]},
    }))


if __name__ == "__main__":
    main()
