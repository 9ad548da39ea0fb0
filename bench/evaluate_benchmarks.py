"""Offline evaluation: the streaming detectors on NAB and SKAB ``valve1``, scored by the
shared scorer. Prints figures; the last line is one JSON object.

Runs ``vigil analytics replay`` (one configuration for every file, labels never read) into
a temporary folder, then ``score.py`` from ``--eval`` on it. The data stays where it is
(``--data``); nothing is copied into the repository.

    .venv/bin/python bench/evaluate_benchmarks.py --data ../shared/data --eval ../shared/eval
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                   help="folder holding nab/ and skab-dev/ (default ../shared/data)")
    p.add_argument("--eval", type=Path, default=ROOT.parent / "shared" / "eval",
                   help="folder holding score.py (default ../shared/eval)")
    p.add_argument("--only", choices=["nab", "skab"], help="run one benchmark only")
    p.add_argument("--keep", type=Path, help="write detections here instead of a temporary folder")
    args = p.parse_args()
    vigil = [sys.executable, "-m", "vigil.cli", "analytics", "replay"]
    score = [sys.executable, str(args.eval / "score.py")]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vigil-eval-") as tmp:
        base = args.keep or Path(tmp)
        if args.only in (None, "nab"):
            t0 = time.monotonic()
            run([*vigil, str(args.data / "nab" / "data"), "--format", "nab", "--output", str(base / "nab")])
            replay_s = time.monotonic() - t0
            run([*score, "--bench", "nab", "--data-root", str(args.data / "nab"), "--detections",
                 str(base / "nab"), "--json", str(base / "nab.json")])
            res = json.loads((base / "nab.json").read_text())
            for profile in ("standard", "reward_low_FP", "reward_low_FN"):
                r = res[profile]
                print(f"NAB {profile:14s} {r['score']:6.2f}  windows {r['detected']}/{r['windows']}  "
                      f"false detections {r['fp_detections']}  threshold {r['threshold']}")
                out[f"nab_{profile}"] = round(float(r["score"]), 2)
            out["nab_replay_s"] = round(replay_s, 1)
        if args.only in (None, "skab"):
            # the defaults, as `vigil analytics replay --format skab` runs them (analytics.replay.protocol)
            run([*vigil, str(args.data / "skab-dev" / "data" / "valve1"), "--format", "skab", "--output",
                 str(base / "skab" / "valve1")])
            run([*score, "--bench", "skab", "--data-root", str(args.data / "skab-dev"), "--detections",
                 str(base / "skab"), "--json", str(base / "skab.json")])
            s = json.loads((base / "skab.json").read_text())
            print(f"SKAB valve1: F1 {s['f1']:.2f}  FAR {s['far']:.1f} %  MAR {s['mar']:.1f} %  "
                  f"changepoints missed {s['cp_missed']}/{s['cp_total']}, "
                  f"mean delay {s['cp_mean_delay_s']} s")
            out.update(skab_valve1_f1=round(float(s["f1"]), 3), skab_valve1_far_pct=round(float(s["far"]), 1),
                       skab_valve1_mar_pct=round(float(s["mar"]), 1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
