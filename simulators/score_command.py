"""``vigil sim score``: compare a run's ground truth with the anomalies Vigil raised.

Registered in ``vigil.cli.ACTIONS``; prints precision, recall and time to detect per
fault kind (``simulators.score``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simulators.errors import SimError
from simulators.scenario import parse_duration_s, read_ground_truth, run_window
from simulators.score import format_report, load_anomalies, report_json, score
from simulators.settings import SimSettings


def duration(text: str) -> float:
    try:
        return parse_duration_s(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--truth", type=Path, required=True, help="ground truth a run wrote (.json or .csv)")
    p.add_argument("--anomalies", type=Path, required=True,
                   help='JSON lines {"topic": "vigil/v1/<site>/_alarm/<device>", "payload": <anomaly>}')
    p.add_argument("--grace", type=duration, default=600.0,
                   help="an anomaly up to this long after a fault ended still counts (default 10m)")
    p.add_argument("--early", type=duration, default=0.0,
                   help="an anomaly up to this long before a fault started still counts (default 0)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def main(settings: SimSettings, args: argparse.Namespace) -> int:
    try:
        truth = read_ground_truth(args.truth)
        loaded = load_anomalies(args.anomalies)
    except SimError as e:
        print(f"vigil sim score: {e}", file=sys.stderr)
        return 2
    for problem in loaded.problems[:20]:
        print(f"skipped: {problem}", file=sys.stderr)
    if len(loaded.problems) > 20:
        print(f"skipped {len(loaded.problems) - 20} more bad line(s)", file=sys.stderr)
    # Anomalies outside the run (before it, or the fleet going offline as it stopped) say
    # nothing about the faults: a JSON ground truth knows the run's window.
    start_ms, end_ms = run_window(args.truth)
    lo, hi = start_ms or 0, end_ms or 2**63
    detections = [d for d in loaded.detections if lo <= d.detected_ms < hi]
    outside = len(loaded.detections) - len(detections)
    report = score(truth, detections, grace_s=args.grace, early_s=args.early)
    if args.json:
        print(json.dumps({**report_json(report), "skipped_lines": len(loaded.problems),
                          "outside_run": outside}))
    else:
        n = len(loaded.detections)
        skipped = f" ({len(loaded.problems)} bad line(s) skipped)" if loaded.problems else ""
        print(f"{len(truth)} injected fault(s) in {args.truth}; {n} anomal{'y' if n == 1 else 'ies'} in "
              f"{args.anomalies}{skipped}")
        if outside:
            print(f"{outside} anomal{'y' if outside == 1 else 'ies'} outside the run's window ignored")
        print(format_report(report))
    return 0
