"""The point map shared by every protocol driver, and its sans-IO reporting logic.

A *point* is one value a device exposes (a register, an OID, a BACnet object) mapped to a
metric. Every protocol's point model extends ``PointBase`` with its own address fields;
what happens to a raw value after the protocol read it lives here, once:

1. ``convert``: ``states`` (raw value -> state, e.g. ifOperStatus ``1 -> up``), or
   ``value_type`` coercion, then ``raw * scale + offset`` rounded to ``decimals``;
2. ``PointReporter.due``: which points are due at this poll (a point may be polled less
   often than its device, ``poll_interval_s``);
3. ``PointReporter.report``: deadband / report-on-change. A numeric point whose value moved
   less than ``deadband`` since its last *reported* value (not its last read one, so a slow
   drift is still reported once it adds up) is not reported again until ``max_silence_s``
   passed since its last report; a bool or text point with a deadband is reported when it
   changes. Without a deadband every read is reported.

Invariants:
- numeric values leave as finite Python floats (never ints: a metric must never change
  field type in the store, see wire.payloads); a value that is not finite after scaling,
  or a raw value that is not in ``states``, is a ``PointError`` of that point, never a
  reading;
- a point that fails is not reported (there is nothing to report) and, after it recovers,
  its next value is reported whatever the deadband, so a consumer never keeps a value
  from before an outage as current;
- ``PointReporter`` does no I/O and takes ``now_ms`` from its caller: tests drive it with
  an explicit clock.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.errors import DriverError
from wire import Reading
from wire.payloads import METRIC_PATTERN, Quality

log = logging.getLogger(__name__)

Raw = int | float | bool | str | bytes
Value = float | bool | str
MAX_TEXT = 1024  # wire.payloads.Text


class PointError(DriverError):
    """One point could not be read or converted; the device's other points are fine."""


class PointBase(BaseModel):
    """What every protocol's point has: where the value goes and how it is reported."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(pattern=METRIC_PATTERN)
    unit: str | None = Field(None, min_length=1, max_length=32)
    scale: float = 1.0
    offset: float = 0.0
    decimals: int | None = Field(None, ge=0, le=9)
    # How to read the raw value before scaling: "auto" keeps the protocol's type (numbers
    # stay numbers, booleans booleans), "number" parses text such as UCD-SNMP's laLoad
    # "0.15", "bool" maps non-zero to true, "text" keeps the value as a string.
    value_type: Literal["auto", "number", "bool", "text"] = "auto"
    # raw value (as written in YAML; keys are compared as text) -> reported value.
    states: dict[str, float | bool | str] | None = None
    poll_interval_s: float | None = Field(None, gt=0, le=86_400)
    deadband: float | None = Field(None, ge=0)
    max_silence_s: float = Field(900.0, gt=0, le=86_400)

    @field_validator("states", mode="before")
    @classmethod
    def _state_keys_as_text(cls, v: Any) -> Any:
        # YAML gives `1: up` an int key; raw values are matched by their text form.
        if isinstance(v, dict):
            return {_key(k): val for k, val in v.items()}
        return v

    @field_validator("states")
    @classmethod
    def _states_not_empty(cls, v: dict[str, Value] | None) -> dict[str, Value] | None:
        if v is not None and not v:
            raise ValueError("states is empty: map at least one raw value, or leave states out")
        if v is not None and len({type(x) for x in v.values()}) > 1:
            # One metric, one field type in the store.
            raise ValueError(
                "all states must map to the same type (all text, all numbers or all booleans); "
                "YAML reads bare on/off/yes/no as booleans: quote them"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PointBase:
        if self.states is not None and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError("a point with states cannot also have scale or offset")
        if self.value_type in ("bool", "text") and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"a value_type {self.value_type!r} point cannot have scale or offset")
        return self


def check_unique_metrics(points: Sequence[PointBase]) -> None:
    """For options validators: two points feeding one metric would interleave in the store."""
    seen: set[str] = set()
    for p in points:
        if p.metric in seen:
            raise ValueError(f"metric {p.metric!r} is listed twice")
        seen.add(p.metric)


def _key(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return str(raw)


def _text(raw: Raw) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return text.strip()[:MAX_TEXT]


def _to_bool(point: PointBase, raw: Raw) -> bool:
    if not isinstance(raw, str | bytes):
        return bool(raw)
    text = _text(raw).lower()
    if text in ("1", "true", "on", "yes", "active"):
        return True
    if text in ("0", "false", "off", "no", "inactive"):
        return False
    raise PointError(f"point {point.metric}: {text!r} is not a boolean")


def convert(point: PointBase, raw: Raw) -> Value:
    """A raw protocol value as the reading's value; raises PointError naming the point."""
    if point.states is not None:
        key = _text(raw) if isinstance(raw, str | bytes) else _key(raw)
        if key not in point.states:
            known = ", ".join(sorted(point.states)[:10])
            raise PointError(f"point {point.metric}: raw value {key!r} is not in its states ({known})")
        return point.states[key]
    kind = point.value_type
    if kind == "text":
        return _text(raw)
    if kind == "bool":
        return _to_bool(point, raw)
    if isinstance(raw, bool) and kind == "auto":
        return raw
    if isinstance(raw, str | bytes):
        if kind == "auto":
            return _text(raw)
        try:
            number = float(_text(raw))
        except ValueError:
            raise PointError(f"point {point.metric}: {_text(raw)[:40]!r} is not a number") from None
    else:
        number = float(raw)
    value = number * point.scale + point.offset
    if point.decimals is not None:
        value = round(value, point.decimals)
    if not math.isfinite(value):
        raise PointError(f"point {point.metric}: value {value} is not finite (raw {raw!r})")
    return float(value)


@dataclass(slots=True)
class _State:
    next_due_ms: int | None = None
    last_value: Value | None = None
    last_report_ms: int | None = None
    failing: bool = False


class PointReporter:
    """Per-device point bookkeeping: what is due, what to report, which points fail."""

    def __init__(self, points: Sequence[PointBase]) -> None:
        self.points = tuple(points)
        self._states = [_State() for _ in self.points]

    def due(self, now_ms: int) -> list[int]:
        """Indexes of the points to read at this poll (every point without its own interval)."""
        out = []
        for i, (p, s) in enumerate(zip(self.points, self._states, strict=True)):
            if p.poll_interval_s is None or s.next_due_ms is None:
                out.append(i)
                continue
            interval_ms = round(p.poll_interval_s * 1000)
            # A device poll a little early (scheduler jitter) still reads the point, or a
            # 60 s point on a 10 s device would slip to 70 s.
            if now_ms + min(500, interval_ms // 10) >= s.next_due_ms:
                out.append(i)
        return out

    def report(self, index: int, raw: Raw, now_ms: int, *, quality: Quality = "good") -> Reading | None:
        """Convert a point's raw value and say whether it is reported at ``now_ms``.

        Raises PointError if the value cannot be converted (the point counts as failed).
        """
        p, s = self.points[index], self._states[index]
        self._schedule(p, s, now_ms)
        try:
            value = convert(p, raw)
        except PointError:
            s.failing = True
            s.last_value = None
            raise
        s.failing = False
        if not self._should_report(p, s, value, now_ms):
            return None
        s.last_value = value
        s.last_report_ms = now_ms
        return Reading(ts_ms=now_ms, metric=p.metric, value=value, unit=p.unit, quality=quality)

    def read_point(
        self, index: int, raw: Callable[[], Raw], now_ms: int, *, device: str, where: str = ""
    ) -> tuple[Reading | None, bool]:
        """Report one point whose raw value ``raw()`` gives (it raises PointError when the device
        answered an error for it): ``(reading or None, whether the point was read)``.

        One place for every protocol to log a point's failure once when it starts and once
        when it recovers, so a refused point never floods the log at every poll."""
        p = self.points[index]
        was_failing = self.is_failing(index)
        try:
            try:
                value = raw()
            except PointError:
                self.failed(index, now_ms)
                raise
            reading = self.report(index, value, now_ms)  # marks the point failed itself
        except PointError as e:
            if not was_failing:
                at = f" ({where})" if where else ""
                log.warning("device %s: point %s%s: %s (logged again when it recovers)",
                            device, p.metric, at, e)
            return None, False
        if was_failing:
            log.info("device %s: point %s recovered", device, p.metric)
        return reading, True

    def failed(self, index: int, now_ms: int) -> bool:
        """Record that a point could not be read; True when it was fine before (log it)."""
        p, s = self.points[index], self._states[index]
        self._schedule(p, s, now_ms)
        first = not s.failing
        s.failing = True
        s.last_value = None  # report the first value after recovery whatever the deadband
        return first

    def is_failing(self, index: int) -> bool:
        return self._states[index].failing

    @staticmethod
    def _schedule(p: PointBase, s: _State, now_ms: int) -> None:
        if p.poll_interval_s is None:
            return
        interval_ms = round(p.poll_interval_s * 1000)
        # Keep the point on its grid; after a long gap restart the grid from now instead of
        # reading it at every poll until it caught up.
        nxt = (s.next_due_ms if s.next_due_ms is not None else now_ms) + interval_ms
        s.next_due_ms = nxt if nxt > now_ms else now_ms + interval_ms

    @staticmethod
    def _should_report(p: PointBase, s: _State, value: Value, now_ms: int) -> bool:
        if p.deadband is None or s.last_value is None or s.last_report_ms is None:
            return True
        if now_ms - s.last_report_ms >= p.max_silence_s * 1000:
            return True
        last = s.last_value
        if type(value) is not type(last):
            return True
        if isinstance(value, float) and isinstance(last, float):
            moved = abs(value - last)
            return moved >= p.deadband if p.deadband > 0 else moved > 0
        return value != last


__all__ = ["PointBase", "PointError", "PointReporter", "Raw", "Value", "check_unique_metrics", "convert"]
