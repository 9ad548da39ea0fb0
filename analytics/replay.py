"""``vigil analytics replay``: the streaming engine over recorded series, for NAB and SKAB.

Each input file is one device, replayed through the ``Engine`` with the one configuration
given (``DetectSettings``; no per-file tuning, label columns are never read). The whole
input is one batch: the engine itself splits it into rounds, one reading per series each,
in time order, so the scores are exactly what the live worker would produce.

Outputs, one CSV per input file at the same relative path under ``--output``
(``../shared/eval/README.md``):
- NAB: ``timestamp,score``: at each anomaly onset the strongest detector score behind it
  (in [0, 1)), 0 elsewhere. NAB charges every flagged row, so only onsets are flagged;
- SKAB: ``timestamp,is_anomaly,changepoint``: 1 while an anomaly is open, and 1 at its
  onset, since SKAB scores the alarm point by point.
"""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from analytics import AnalyticsError
from analytics.engine import SEVERITY_RANK, Engine
from analytics.settings import AnalyticsSettings, DetectSettings

LABEL_COLUMNS = frozenset({"anomaly", "changepoint", "label", "is_anomaly"})


def _parse_ts(text: str) -> int:
    t = text.strip().replace("T", " ").removesuffix("Z")
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise AnalyticsError(f"timestamp {text[:40]!r} is not ISO-8601 (YYYY-MM-DD HH:MM:SS)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def read_series(path: Path, fmt: str) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """(timestamps as written, epoch ms, sensor names, values rows x sensors)."""
    delim = ";" if fmt == "skab" else ","
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter=delim))
    if len(rows) < 2:
        raise AnalyticsError(f"{path}: no data rows")
    header = [h.strip() for h in rows[0]]
    ts_col = 0
    sensors = [j for j, h in enumerate(header) if j != ts_col and h not in LABEL_COLUMNS]
    if not sensors:
        raise AnalyticsError(f"{path}: no value columns besides {header}")
    stamps = [r[ts_col] for r in rows[1:]]
    ms = np.array([_parse_ts(s) for s in stamps], np.int64)
    try:
        values = np.array([[float(r[j]) for j in sensors] for r in rows[1:]], np.float64)
    except (ValueError, IndexError) as e:
        raise AnalyticsError(f"{path}: a value is not a number or a row is short ({e})") from None
    return stamps, ms, [header[j] for j in sensors], values


def _metric_name(name: str) -> str:
    clean = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name.strip())
    return ("m_" + clean if not clean[:1].isalpha() else clean)[:64]


def _rows(ms: np.ndarray, onset_events: list[tuple[str, int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(onset score per row, open 0/1 per row) from one device's (state, ts, score) events."""
    n = len(ms)
    row_of = {int(t): i for i, t in reversed(list(enumerate(ms.tolist())))}
    onset = np.zeros(n)
    active = np.zeros(n, np.int8)
    start: int | None = None
    for state, ts, score in onset_events:
        row = row_of[ts]
        if state == "open":
            onset[row] = max(onset[row], score)
            start = row
        elif state == "cleared" and start is not None:
            active[start:row] = 1
            start = None
    if start is not None:
        active[start:] = 1
    return onset, active


def replay_files(paths: list[Path], fmt: str,
                 cfg: DetectSettings) -> list[tuple[list[str], np.ndarray, np.ndarray]]:
    """(timestamps, onset score per row, open 0/1 per row) of each file, in order.

    Every file is its own device. Files of one series (NAB) share one engine, so a round
    scores one reading of every file at once (the engine keeps nothing across devices of
    single-metric kinds: the only cross-device state is the multivariate model of a kind,
    which needs two metrics); files of several series (SKAB) get a fresh engine each, so
    no model learns from another file."""
    groups = [paths] if fmt == "nab" else [[p] for p in paths]
    out: list[tuple[list[str], np.ndarray, np.ndarray]] = []
    for group in groups:
        engine = Engine(cfg)
        loaded = []
        sids, tss, xs = [], [], []
        for k, path in enumerate(group):
            stamps, ms, names, values = read_series(path, fmt)
            device = f"device-{k + 1}"
            ids = np.array([engine.series("replay", device, _metric_name(nm), kind=fmt) for nm in names],
                           np.int64)
            n, m = values.shape
            x = values.reshape(-1)
            good = np.isfinite(x)
            sids.append(np.tile(ids, n)[good])
            tss.append(np.repeat(ms, m)[good])
            xs.append(x[good])
            loaded.append((device, stamps, ms))
        events = engine.process(np.concatenate(sids), np.concatenate(tss), np.concatenate(xs))
        by_device: dict[str, list[tuple[str, int, float]]] = {}
        for e in events:
            a = e.anomaly
            score = e.score or 0.2 + 0.2 * SEVERITY_RANK[a.severity]
            by_device.setdefault(e.device, []).append((a.state, a.ts_ms, score))
        for device, stamps, ms in loaded:
            onset, active = _rows(ms, by_device.get(device, []))
            out.append((stamps, onset, active))
    return out


def protocol(fmt: str, cfg: DetectSettings) -> DetectSettings:
    """The configuration a format's protocol implies, the same for each of its files.

    SKAB's recordings last 20 minutes at 1 s, and their first 400 rows are the training
    part: ``shift``'s day of warm-up (there so a building's daily rhythm is learnt first)
    gives way to its 400 readings, which are exactly that part. ``surprise`` and the models
    keep theirs (a day; 500 rows): their long-run figures cannot be learnt from 400 rows."""
    if fmt == "skab":
        return cfg.model_copy(update={"shift_warmup_s": 0.0})
    return cfg


def replay(input_path: Path, fmt: str, output: Path, cfg: DetectSettings) -> list[Path]:
    if fmt not in ("nab", "skab"):
        raise AnalyticsError(f"format {fmt!r} is not nab or skab")
    cfg = protocol(fmt, cfg)
    if input_path.is_file():
        files, root = [input_path], input_path.parent
    elif input_path.is_dir():
        files, root = sorted(input_path.rglob("*.csv")), input_path
    else:
        raise AnalyticsError(f"input {input_path} is neither a CSV file nor a folder")
    if not files:
        raise AnalyticsError(f"no .csv files under {input_path}")
    written = []
    for f, (stamps, onset, active) in zip(files, replay_files(files, fmt, cfg), strict=True):
        out = output / f.relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:
            w = csv.writer(fh)
            if fmt == "nab":
                w.writerow(["timestamp", "score"])
                w.writerows(zip(stamps, (f"{v:.4f}" for v in onset), strict=True))
            else:
                w.writerow(["timestamp", "is_anomaly", "changepoint"])
                w.writerows(zip(stamps, active.tolist(), (int(v > 0) for v in onset), strict=True))
        written.append(out)
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Run the streaming detectors over recorded series and write detection CSVs "
                     "(../shared/eval/README.md). One configuration for every file (the [analytics.detect] "
                     "table of --config, or VIGIL_ANALYTICS_DETECT__*); label columns are never read.")
    p.add_argument("input", type=Path, help="a CSV file, or a folder searched recursively")
    p.add_argument("--format", required=True, choices=["nab", "skab"],
                   help="nab: timestamp,value; skab: ';'-separated, several sensors")
    p.add_argument("--output", required=True, type=Path, help="folder; mirrors the input's relative paths")


def main(settings: AnalyticsSettings, args: argparse.Namespace) -> int:
    """``vigil analytics replay INPUT --format nab|skab --output DIR``."""
    try:
        written = replay(args.input, args.format, args.output, settings.detect)
    except AnalyticsError as e:
        print(f"vigil analytics replay: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} detection files under {args.output}")
    return 0
