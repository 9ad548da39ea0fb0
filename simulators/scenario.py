"""Which faults a simulated fleet suffers, and the ground truth written about them.

Two sources, combinable:
- a scenario file (YAML), each fault named: device, fault, start, duration, strength
  (and the metric of a sensor fault)::

      faults:
        - {device: pump-01, fault: bearing_wear, start: 10m, duration: 4h, strength: 1.0}
        - {device: space-sensor-02, fault: sensor_drift, metric: temp_c, start: 0, duration: 1h}
      random: {rate_per_day: 2, seed: 7}   # optional: draw more at random

  Times are offsets from the fleet's start in simulated time: seconds (``90``), or a
  duration (``90s``, ``10m``, ``2h``, ``1h30m``, ``1d``); ``start`` may also be an
  ISO-8601 time with an offset;
- at random: each device draws faults that apply to its kind as a Poisson process of
  ``rate_per_day`` per device per simulated day, one at a time, from a seed.

Invariants:
- pure: the same plan, seed, rate, horizon and start give the same faults; a device's
  random faults depend only on the seed and the device id, not on the rest of the fleet;
- a fault that names an unknown device, a fault that does not apply to the device's
  kind, or a metric the device has no sensor for, is refused with the file, the entry
  and the problem, before anything runs; every problem of a file is reported at once;
- the ground truth lists exactly the faults the models were given, with their expected
  effects (``simulators.faults``); truncated to the run at its end, so a fault the run
  never reached is not claimed.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import random
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from simulators.base import stable_seed
from simulators.errors import SimError
from simulators.faults import FAULTS, SENSOR_FAULTS, Fault, expected_effects
from simulators.models import MODELS


class Placement(NamedTuple):
    """Where a device is: what a fault needs to know about it."""

    site: str
    agent: str
    device: str
    kind: str


_NUM = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"^(?:{_NUM}d)?(?:{_NUM}h)?(?:{_NUM}m)?(?:{_NUM}s)?$")


def parse_duration_s(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"1h30m"``, ``"2d"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 90, 90s, 10m or 1h30m, got {value!r}")
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            x = float(value)  # "90": seconds, as the number 90 would be
            if math.isfinite(x):
                return x
        m = _DURATION.match(value.strip())
        if m and any(m.groups()):
            d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
            return d * 86400 + h * 3600 + mi * 60 + s
    raise ValueError(f"expected a duration such as 90, 90s, 10m or 1h30m, got {value!r}")


def sensor_metrics(kind: str) -> tuple[str, ...]:
    """Metrics of a device kind a sensor fault can hit."""
    return tuple(m.name for m in MODELS[kind].metrics if m.scale is not None)


class _FaultEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str
    fault: str
    start: float | str | datetime = 0.0
    duration: float | str
    strength: float = Field(1.0, gt=0, le=10)
    metric: str | None = None

    @field_validator("fault")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in FAULTS:
            raise ValueError(f"unknown fault {v!r}; known: {', '.join(FAULTS)}")
        return v

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: float | str) -> float:
        s = parse_duration_s(v)
        if s <= 0:
            raise ValueError(f"duration must be positive, got {v!r}")
        return s

    @field_validator("start")
    @classmethod
    def _start(cls, v: float | str | datetime) -> float | datetime:
        if isinstance(v, datetime):
            if v.tzinfo is None:
                raise ValueError(f"start {v.isoformat()} has no UTC offset; add one (e.g. Z)")
            return v
        if isinstance(v, str) and "T" in v:
            t = datetime.fromisoformat(v.replace("Z", "+00:00"))
            if t.tzinfo is None:
                raise ValueError(f"start {v!r} has no UTC offset; add one (e.g. Z)")
            return t
        s = parse_duration_s(v)
        if s < 0:
            raise ValueError(f"start must not be negative, got {v!r}")
        return s


class RandomFaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_day: float = Field(ge=0, le=1000)
    seed: int | None = None


class _ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    faults: list[Any] = Field(default_factory=list)
    random: RandomFaults | None = None


class Scenario(NamedTuple):
    faults: tuple[Fault, ...]
    random: RandomFaults | None


def load_scenario(path: Path, placements: Sequence[Placement], start_ms: int) -> Scenario:
    """Read a scenario file and resolve its faults against the fleet; raise SimError naming
    the file, the entry and every problem."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise SimError(f"cannot read scenario {path}: {e}") from None
    except yaml.YAMLError as e:
        raise SimError(f"scenario {path} is not valid YAML: {e}") from None
    return parse_scenario(data, placements, start_ms, source=str(path))


def parse_scenario(data: Any, placements: Sequence[Placement], start_ms: int, *,
                   source: str = "<scenario>") -> Scenario:
    if data is None:
        data = {}
    problems: list[str] = []
    try:
        head = _ScenarioFile.model_validate(data)
    except ValidationError as e:
        raise SimError(f"invalid scenario {source}:\n" + "\n".join(
            f"  {'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}" for err in e.errors()
        )) from None
    where_is = {p.device: p for p in placements}
    faults: list[Fault] = []
    for i, item in enumerate(head.faults):
        label = f"faults[{i}]"
        if isinstance(item, dict) and isinstance(item.get("device"), str):
            label += f" ({item['device']})"
        try:
            entry = _FaultEntry.model_validate(item)
        except ValidationError as e:
            problems.extend(f"{label}.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            continue
        place = where_is.get(entry.device)
        if place is None:
            problems.append(f"{label}.device: no device {entry.device!r} in this fleet "
                            f"(devices are named like {', '.join(list(where_is)[:3])})")
            continue
        kind = FAULTS[entry.fault]
        if place.kind not in kind.kinds:
            problems.append(f"{label}.fault: {entry.fault} does not apply to a {place.kind} "
                            f"(it applies to {', '.join(kind.kinds)})")
            continue
        metric = entry.metric
        if entry.fault in SENSOR_FAULTS:
            allowed = sensor_metrics(place.kind)
            if metric is None:
                metric = allowed[0]
            elif metric not in allowed:
                problems.append(f"{label}.metric: a {place.kind} has no sensor {metric!r} "
                                f"(sensors: {', '.join(allowed)})")
                continue
        elif metric is not None:
            problems.append(f"{label}.metric: only sensor faults ({', '.join(SENSOR_FAULTS)}) take a metric")
            continue
        if isinstance(entry.start, datetime):
            begin = int(entry.start.timestamp() * 1000)
        else:
            begin = start_ms + round(float(entry.start) * 1000)
        assert isinstance(entry.duration, float)
        faults.append(_fault(place, entry.fault, begin, begin + round(entry.duration * 1000),
                             entry.strength, metric))
    if problems:
        raise SimError(f"invalid scenario {source}:\n" + "\n".join(f"  {p}" for p in problems))
    return Scenario(tuple(faults), head.random)


def _fault(place: Placement, fault: str, start_ms: int, end_ms: int, strength: float,
           metric: str | None) -> Fault:
    return Fault(device=place.device, fault=fault, start_ms=start_ms, end_ms=end_ms, strength=strength,
                 metric=metric, site=place.site, device_kind=place.kind, agent=place.agent,
                 effects=expected_effects(fault, metric, [m.name for m in MODELS[place.kind].metrics]))


def random_faults(placements: Iterable[Placement], *, seed: int, rate_per_day: float, start_ms: int,
                  horizon_s: float) -> list[Fault]:
    """Faults drawn at random over ``[start_ms, start_ms + horizon_s)``, none overlapping on
    one device; each device's draw depends only on ``seed`` and its id."""
    if rate_per_day <= 0 or horizon_s <= 0:
        return []
    out: list[Fault] = []
    mean_gap_s = 86400.0 / rate_per_day
    for place in placements:
        kinds = [k for k in FAULTS.values() if place.kind in k.kinds]
        if not kinds:
            continue
        rng = random.Random(stable_seed("faults", seed, place.device))
        weights = [k.weight for k in kinds]
        t = 0.0
        while True:
            t += rng.expovariate(1.0 / mean_gap_s)
            if t >= horizon_s:
                break
            kind = rng.choices(kinds, weights)[0]
            duration = rng.uniform(*kind.duration_s)
            strength = round(rng.uniform(0.7, 1.5), 2)
            metric = rng.choice(sensor_metrics(place.kind)) if kind.name in SENSOR_FAULTS else None
            begin = start_ms + round(t * 1000)
            out.append(_fault(place, kind.name, begin, begin + round(duration * 1000), strength, metric))
            t += duration
    out.sort(key=lambda f: (f.start_ms, f.device))
    return out


# -- ground truth -----------------------------------------------------------------------

_COLUMNS = ("site", "agent", "device", "device_kind", "fault", "start_ms", "end_ms", "start", "end",
            "strength", "metric", "effects")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def truncate(faults: Iterable[Fault], end_ms: int) -> list[Fault]:
    """The faults a run that ended at ``end_ms`` actually injected, ending by then."""
    return [dataclasses.replace(f, end_ms=min(f.end_ms, end_ms)) for f in faults if f.start_ms < end_ms]


def fault_record(f: Fault) -> dict[str, Any]:
    return {"site": f.site, "agent": f.agent, "device": f.device, "device_kind": f.device_kind,
            "fault": f.fault, "start_ms": f.start_ms, "end_ms": f.end_ms, "start": _iso(f.start_ms),
            "end": _iso(f.end_ms), "strength": f.strength, "metric": f.metric, "effects": dict(f.effects)}


def write_ground_truth(path: Path, faults: Sequence[Fault], **about: Any) -> None:
    """Write the faults as JSON (``.json``) or CSV (any other suffix), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    records = [fault_record(f) for f in sorted(faults, key=lambda f: (f.start_ms, f.device))]
    try:
        with tmp.open("w", encoding="utf-8", newline="") as out:
            if path.suffix.lower() == ".json":
                json.dump({"v": 1, **about, "faults": records}, out, indent=1)
                out.write("\n")
            else:
                w = csv.DictWriter(out, fieldnames=_COLUMNS)
                w.writeheader()
                for r in records:
                    w.writerow({**r, "metric": r["metric"] or "",
                                "effects": ";".join(f"{k}:{v}" for k, v in r["effects"].items())})
        tmp.replace(path)
    except OSError as e:
        raise SimError(f"cannot write ground truth {path}: {e}") from None


def run_window(path: Path) -> tuple[int | None, int | None]:
    """(start_ms, end_ms) of the run a JSON ground truth describes; (None, None) if unknown
    (a CSV, or a run still going)."""
    if path.suffix.lower() != ".json":
        return None, None
    try:
        about = json.loads(path.read_text(encoding="utf-8"))
        return about.get("start_ms"), about.get("end_ms")
    except (OSError, ValueError, AttributeError):
        return None, None


def read_ground_truth(path: Path) -> list[Fault]:
    """Faults from a ground-truth file written by ``write_ground_truth``; SimError if not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SimError(f"cannot read ground truth {path}: {e}") from None
    try:
        if path.suffix.lower() == ".json":
            rows: list[dict[str, Any]] = json.loads(text)["faults"]
        else:
            rows = []
            for r in csv.DictReader(text.splitlines()):
                effects = dict(x.split(":", 1) for x in r["effects"].split(";") if x)
                rows.append({**r, "metric": r["metric"] or None, "effects": effects})
        return [Fault(device=str(r["device"]), fault=str(r["fault"]), start_ms=int(r["start_ms"]),
                      end_ms=int(r["end_ms"]), strength=float(r["strength"]), metric=r.get("metric"),
                      site=str(r.get("site") or ""), device_kind=str(r.get("device_kind") or ""),
                      agent=str(r.get("agent") or ""), effects=dict(r.get("effects") or {}))
                for r in rows]
    except (ValueError, KeyError, TypeError) as e:
        raise SimError(f"{path} is not a ground-truth file (JSON with a 'faults' list, or CSV with "
                       f"columns {', '.join(_COLUMNS)}): {type(e).__name__}: {e}") from None
