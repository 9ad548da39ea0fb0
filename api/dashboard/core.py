"""The dashboard's decisions, as pure functions of data and ``now``: no I/O, no clock.

- ``sla_state``: a work order is ``breached`` once a timer it still runs has passed (or was
  recorded as breached), ``at_risk`` when less than ``AT_RISK_FRACTION`` of that timer's
  window is left, ``on_time`` otherwise (and for orders with no SLA);
- ``site_health``: one word per site for the wall screen, from the worst active alarm and
  from how much of the fleet is offline;
- ``daily_band``: the band a trend chart draws as "normal": for each hour of the day, where
  the signal's hourly lows and highs usually are (median -+ 3 scaled MADs over the last two
  weeks), so a daily cycle (a supply temperature, a lift's traffic) does not look anomalous
  every night; anomalous hours are left out so a fault does not widen its own band;
- ``normal_band``: the fallback with too little history for that: one flat band from the
  bucket means of the range shown, anomalous buckets left out.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

SlaState = Literal["on_time", "at_risk", "breached"]
Health = Literal["ok", "degraded", "alarm", "critical"]
SEVERITIES: Final = ("info", "warning", "minor", "major", "critical")
ACTIVE_ALARM_STATES: Final = ("open", "updated")
AT_RISK_FRACTION: Final = 0.25
# A site with at least this share of its devices offline is degraded even with no alarm.
DEGRADED_OFFLINE_FRACTION: Final = 0.1
# Median +- this many scaled MADs: about +-3 sigma for normal data, robust to the outliers.
BAND_MADS: Final = 3.0
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
MIN_DAYS_PER_HOUR: Final = 3  # fewer same-hour samples than this: no daily band


def _spread(values: Sequence[float]) -> tuple[float, float]:
    """(median, scaled MAD), the MAD floored so a flat signal still gets a visible band."""
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values) * 1.4826
    return med, mad if mad > 0 else max(abs(med) * 0.01 / BAND_MADS, 1e-9)


def daily_band(
    hourly: Sequence[tuple[int, float, float]], anomalous: Sequence[tuple[int, int]], at: Sequence[int]
) -> tuple[list[float], list[float]] | None:
    """Low and high of the normal band at each time in ``at``, from ``hourly`` (start_ms, min, max)
    buckets; None unless every hour of the day has ``MIN_DAYS_PER_HOUR`` normal samples."""
    lows: dict[int, list[float]] = {}
    highs: dict[int, list[float]] = {}
    for ts, lo, hi in hourly:
        if any(a <= ts + HOUR_MS and ts <= b for a, b in anomalous):
            continue
        hour = ts % DAY_MS // HOUR_MS
        lows.setdefault(hour, []).append(lo)
        highs.setdefault(hour, []).append(hi)
    if len(lows) < 24 or min(len(v) for v in lows.values()) < MIN_DAYS_PER_HOUR:
        return None
    band = {}
    for hour, hour_lows in lows.items():
        lo_med, lo_mad = _spread(hour_lows)
        hi_med, hi_mad = _spread(highs[hour])
        band[hour] = (lo_med - BAND_MADS * lo_mad, hi_med + BAND_MADS * hi_mad)
    return [band[t % DAY_MS // HOUR_MS][0] for t in at], [band[t % DAY_MS // HOUR_MS][1] for t in at]


@dataclass(frozen=True, slots=True)
class SlaView:
    created_ms: int
    responded_ms: int | None
    resolved_ms: int | None
    respond_due_ms: int | None
    resolve_due_ms: int | None
    respond_breached_ms: int | None
    resolve_breached_ms: int | None


def sla_state(wo: SlaView, now_ms: int) -> tuple[SlaState, int | None]:
    """The order's SLA state and the deadline it is racing (None when no timer runs)."""
    if wo.respond_breached_ms is not None or wo.resolve_breached_ms is not None:
        return "breached", wo.resolve_due_ms if wo.resolve_due_ms is not None else wo.respond_due_ms
    if wo.resolved_ms is not None:
        return "on_time", None
    # Responding comes first; once responded to, the resolve timer is the one that counts.
    due = (
        wo.respond_due_ms if wo.responded_ms is None and wo.respond_due_ms is not None else wo.resolve_due_ms
    )
    if due is None:
        return "on_time", None
    if now_ms >= due:
        return "breached", due
    window = max(due - wo.created_ms, 1)
    return ("at_risk" if (due - now_ms) < AT_RISK_FRACTION * window else "on_time"), due


def worst_severity(severities: Iterable[str]) -> str | None:
    ranked = [SEVERITIES.index(s) for s in severities if s in SEVERITIES]
    return SEVERITIES[max(ranked)] if ranked else None


def site_health(
    alarms_by_severity: dict[str, int], devices_total: int, devices_offline: int, agents_offline: int
) -> Health:
    if alarms_by_severity.get("critical", 0):
        return "critical"
    if alarms_by_severity.get("major", 0):
        return "alarm"
    if (
        any(alarms_by_severity.get(s, 0) for s in ("minor", "warning"))
        or agents_offline
        or (devices_total and devices_offline / devices_total >= DEGRADED_OFFLINE_FRACTION)
    ):
        return "degraded"
    return "ok"


def normal_band(
    means: Sequence[tuple[int, float]], anomalous: Sequence[tuple[int, int]]
) -> tuple[float, float] | None:
    """(low, high) from bucket means outside the ``anomalous`` (start_ms, end_ms) intervals;
    None with fewer than 3 such buckets (no band beats a made-up one)."""
    values = [v for ts, v in means if not any(lo <= ts <= hi for lo, hi in anomalous)]
    if len(values) < 3:
        return None
    med, mad = _spread(values)
    return med - BAND_MADS * mad, med + BAND_MADS * mad
