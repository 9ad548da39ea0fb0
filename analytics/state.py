"""Snapshots of a worker's learned state, so a restart does not relearn for two days.

What is kept: the series registry (site, device, metric, unit, agent, kind, in id order),
every learned array of the engine, its detectors and the model bank (baselines, seasonal
buckets, last values, evidence, device intervals), the engine's open anomalies, and the
events judge's open anomalies and held states. Models are not in it: they are in the
database by version (``analytics.db``).

Format: one ``.npz`` file (numpy's zip of arrays; loaded with ``allow_pickle=False``, so
reading it runs no code) with a JSON ``meta`` entry, written to a temporary name and
renamed, so a crash mid-write leaves the previous snapshot intact.

Restoring builds a fresh engine from the current settings, registers the series again in
the same order (so ids match), then takes back each saved array whose name, dtype and
trailing shape still match. Arrays derived from the settings (rule limits, physical
ranges: ``CONFIGURED``) are never taken back, so a changed rule applies at once; an array
a newer detector no longer has, or has in another shape, is skipped and that part
relearns. Every skip is reported.

Invariants: snapshot and restore run on the scoring thread (nothing changes under them);
``_darrive`` (when data last arrived) is set to the restore time, so the time analytics
was down does not count as the devices being late.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import numpy as np

from analytics import AnalyticsError
from analytics.engine import Engine, Open
from analytics.events import Judge
from analytics.settings import DetectSettings

FORMAT: Final = 1
# arrays filled from the settings when a series is registered, not learned
CONFIGURED: Final = {
    "threshold": {"_hi", "_lo", "_hyst", "_dur", "_rate", "_sev"},
    "range": {"_lo", "_hi"},
}


def _arrays(prefix: str, obj: object, skip: set[str] | None = None) -> dict[str, np.ndarray[Any, Any]]:
    return {f"{prefix}.{k}": v for k, v in vars(obj).items()
            if isinstance(v, np.ndarray) and (skip is None or k not in skip)}


def snapshot(engine: Engine, judge: Judge, *, saved_ms: int) -> bytes:
    """The learned state of ``engine`` and ``judge`` as the bytes of an ``.npz`` file."""
    series = [[site, device, metric, engine._unit[sid], engine._info[engine._sdev[sid]].agent,
               engine._info[engine._sdev[sid]].kind]
              for (site, device, metric), sid in sorted(engine._series.items(), key=lambda kv: kv[1])]
    devices = [[i.site, i.device, i.agent, i.kind] for i in engine._info]
    meta = {
        "format": FORMAT, "saved_ms": saved_ms, "series": series, "devices": devices,
        "open": [[did, asdict(a)] for did, a in engine._open.items()],
        "silent": [[did, asdict(a)] for did, a in engine._silent.items()],
        "offline_agents": sorted(engine._offline_agents), "readings": engine.readings,
        "judge": judge.snapshot(),
        "detectors": [d.name for d in engine.detectors],
    }
    arrays = _arrays("engine", engine)
    arrays |= _arrays("models", engine.models)
    for d in engine.detectors:
        arrays |= _arrays(f"detector.{d.name}", d, CONFIGURED.get(d.name, set()))
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def save(path: Path, data: bytes) -> None:
    """Write atomically: a temporary file, flushed, then renamed over the old snapshot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _take(prefix: str, obj: object, saved: Any, skipped: list[str]) -> int:
    n = 0
    for key in saved.files:
        if not key.startswith(prefix + "."):
            continue
        attr = key[len(prefix) + 1:]
        if "." in attr:
            continue
        cur = getattr(obj, attr, None)
        new = saved[key]
        if not isinstance(cur, np.ndarray) or cur.dtype != new.dtype or cur.shape[1:] != new.shape[1:] \
                or new.shape[0] < cur.shape[0]:
            skipped.append(key)
            continue
        setattr(obj, attr, new.copy())
        n += 1
    return n


def restore(data: bytes, cfg: DetectSettings, *, now_ms: int) -> tuple[Engine, Judge, list[str]]:
    """A fresh engine and judge with the learned state of ``data``, and what was skipped."""
    try:
        saved = np.load(io.BytesIO(data), allow_pickle=False)
        meta = json.loads(bytes(saved["meta"]).decode())
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise AnalyticsError(f"the state snapshot is unreadable ({e}); delete it to start learning "
                             "afresh") from None
    if meta.get("format") != FORMAT:
        raise AnalyticsError(f"the state snapshot has format {meta.get('format')}, this version reads "
                             f"{FORMAT}; delete it to start learning afresh")
    engine, judge = Engine(cfg), Judge(cfg)
    for site, device, agent, kind in meta["devices"]:
        engine.device(site, device, agent, kind)
    for site, device, metric, unit, agent, kind in meta["series"]:
        engine.series(site, device, metric, unit or None, agent, kind)
    skipped: list[str] = []
    _take("engine", engine, saved, skipped)
    _take("models", engine.models, saved, skipped)
    for d in engine.detectors:
        _take(f"detector.{d.name}", d, saved, skipped)
    engine._darrive[: len(engine._info)] = now_ms
    engine._open = {int(did): Open(**a) for did, a in meta["open"]}
    engine._silent = {int(did): Open(**a) for did, a in meta["silent"]}
    engine._offline_agents = {(str(s), str(a)) for s, a in meta["offline_agents"]}
    engine.readings = int(meta["readings"])
    judge.restore(meta["judge"])
    return engine, judge, skipped


__all__ = ["restore", "save", "snapshot"]
