"""Devices seen on the bus, their presence, and their stored readings (raw and per step).

Invariants:
- parameters are checked before the store is asked anything, and every problem with
  start, end and step is reported in one 422, so a bad request costs no query;
- then the device must be known (404) and have the metric (404 listing its metrics);
- a series never asks the store for more than ``max_series_buckets`` buckets, nor a
  readings page for more than ``max_readings`` (+1, to tell a full page from a cut one);
- ranges are half-open ``[start, end)`` in epoch ms, as in the store (api.timerange).
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from fastapi import APIRouter, HTTPException, Query, Response

from api.auth import PrincipalDep
from api.deps import DeviceRef, DeviceRefDep, NowMsDep, SettingsDep, StoreDep
from api.presence import device_presence
from api.routers.agents import agent_out
from api.schemas import (
    BAD_PARAM,
    NOT_FOUND,
    BucketOut,
    DeviceDetail,
    DeviceList,
    DeviceOut,
    ReadingsOut,
    SeriesOut,
)
from api.security.policy import check_site_filter
from api.timerange import (
    QueryError,
    bucket_count,
    format_step,
    iso,
    join,
    nice_step,
    parse_step,
    window,
)
from ingest.store import AgentState, DeviceSeen, Store
from wire import check_id
from wire.payloads import METRIC_PATTERN

router = APIRouter(prefix="/api/v1", tags=["devices"])

DEFAULT_SPAN_MS = 3_600_000
_JSON = msgspec.json.Encoder()
_METRIC_RE = re.compile(METRIC_PATTERN)

TIME_DOC = (
    "Epoch milliseconds (`1717243200000`) or ISO-8601 with an offset (`2024-06-01T12:00:00Z`, "
    "`...+02:00`; send `+` as `%2B`). Times without an offset are rejected, not guessed."
)
MetricQuery = Annotated[str, Query(description="Metric name, as listed by the device's `metrics`.")]
StartQuery = Annotated[str | None, Query(description=f"Inclusive start; default end - 1 h. {TIME_DOC}")]
EndQuery = Annotated[str | None, Query(description=f"Exclusive end; default now. {TIME_DOC}")]


def _device_out(
    d: DeviceSeen, agents: dict[tuple[str, str], AgentState], now: int, after_ms: int
) -> DeviceOut:
    p = device_presence(d, agents.get((d.site, d.agent)), now, after_ms)
    return DeviceOut(
        site=d.site,
        device=d.device,
        agent=d.agent,
        last_seen_ms=d.last_seen_ms,
        last_seen=iso(d.last_seen_ms),
        online=p.online,
        state=p.state,
        reason=p.reason,
    )


def _agents_by_id(store: Store) -> dict[tuple[str, str], AgentState]:
    return {(a.site, a.agent): a for a in store.agents()}


def _unknown_device(ref: DeviceRef) -> HTTPException:
    return HTTPException(
        404,
        f"No device {ref.device!r} has been seen at site {ref.site!r}; "
        "GET /api/v1/devices lists the known devices",
    )


def _check_metric(store: Store, ref: DeviceRef, metric: str) -> None:
    """404 unless the device is known and has stored ``metric``."""
    if not _METRIC_RE.fullmatch(metric):
        raise QueryError(
            f"metric={metric[:80]!r} is not a valid metric name: 1-64 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter"
        )
    metrics = store.metrics(ref.site, ref.device)
    if not metrics:
        raise _unknown_device(ref)
    if metric not in metrics:
        shown = ", ".join(metrics[:50]) + (f" and {len(metrics) - 50} more" if len(metrics) > 50 else "")
        raise HTTPException(
            404,
            f"Device {ref.device!r} at site {ref.site!r} has no metric {metric!r}; its metrics are: {shown}",
        )


@router.get(
    "/devices",
    summary="Devices seen on the bus, with whether each is online",
    response_model=DeviceList,
    responses=BAD_PARAM,
)
def list_devices(
    store: StoreDep,
    settings: SettingsDep,
    now: NowMsDep,
    caller: PrincipalDep,
    site: Annotated[str | None, Query(description="Only devices of this site.")] = None,
    agent: Annotated[str | None, Query(description="Only devices last seen through this agent.")] = None,
) -> DeviceList:
    if site is not None:
        check_id("site", site)
        check_site_filter(caller, site)
    if agent is not None:
        check_id("agent", agent)
    after_ms = round(settings.offline_after_s * 1000)
    agents = _agents_by_id(store)
    devices = sorted(
        (
            d
            for d in store.devices()
            if (site is None or d.site == site) and (agent is None or d.agent == agent)
            and caller.sees(d.site)
        ),
        key=lambda d: (d.site, d.device),
    )
    return DeviceList(devices=[_device_out(d, agents, now, after_ms) for d in devices])


@router.get(
    "/devices/{site}/{device}",
    summary="One device, its presence and its metrics",
    response_model=DeviceDetail,
    responses={**NOT_FOUND, **BAD_PARAM},
)
def get_device(ref: DeviceRefDep, store: StoreDep, settings: SettingsDep, now: NowMsDep) -> DeviceDetail:
    seen = next((d for d in store.devices() if d.site == ref.site and d.device == ref.device), None)
    if seen is None:
        raise _unknown_device(ref)
    agents = _agents_by_id(store)
    out = _device_out(seen, agents, now, round(settings.offline_after_s * 1000))
    status = agents.get((seen.site, seen.agent))
    return DeviceDetail(
        **out.model_dump(),
        agent_status=agent_out(status) if status is not None else None,
        metrics=store.metrics(ref.site, ref.device),
    )


@router.get(
    "/devices/{site}/{device}/series",
    summary="Mean, min, max and count of a metric per step",
    response_model=SeriesOut,
    responses={**NOT_FOUND, **BAD_PARAM},
)
def get_series(
    ref: DeviceRefDep,
    store: StoreDep,
    settings: SettingsDep,
    now: NowMsDep,
    metric: MetricQuery,
    start: StartQuery = None,
    end: EndQuery = None,
    step: Annotated[
        str | None,
        Query(
            description="Bucket width: whole milliseconds (`250`) or a duration "
            "(`250ms`, `30s`, `5m`, `1h30m`). Default: the smallest round step giving at most "
            "`target_series_buckets` (500) buckets. Buckets start at "
            "multiples of the step since the epoch; only buckets with numeric readings are returned."
        ),
    ] = None,
) -> SeriesOut:
    problems: list[str] = []
    start_ms = end_ms = step_ms = 0
    try:
        start_ms, end_ms = window(start, end, now, DEFAULT_SPAN_MS)
    except QueryError as e:
        problems.append(str(e))
    try:
        step_ms = parse_step(step) if step is not None else 0
    except QueryError as e:
        problems.append(str(e))
    if problems:
        raise QueryError(join(problems))
    if step_ms == 0:
        step_ms = nice_step(start_ms, end_ms, settings.target_series_buckets)
    n = bucket_count(start_ms, end_ms, step_ms)
    if n > settings.max_series_buckets:
        fit = format_step(nice_step(start_ms, end_ms, settings.max_series_buckets))
        raise QueryError(
            f"step={format_step(step_ms)} cuts {iso(start_ms)}..{iso(end_ms)} into {n} buckets, over the "
            f"maximum of {settings.max_series_buckets}; use step={fit} or longer, or a shorter range"
        )
    _check_metric(store, ref, metric)
    buckets = store.series(ref.site, ref.device, metric, start_ms, end_ms, step_ms)
    return SeriesOut(
        site=ref.site,
        device=ref.device,
        metric=metric,
        start_ms=start_ms,
        end_ms=end_ms,
        start=iso(start_ms),
        end=iso(end_ms),
        step_ms=step_ms,
        step=format_step(step_ms),
        buckets=[
            BucketOut(ts_ms=b.ts_ms, time=iso(b.ts_ms), mean=b.mean, min=b.min, max=b.max, count=b.count)
            for b in buckets
        ],
    )


@router.get(
    "/devices/{site}/{device}/readings",
    summary="The stored readings of a metric, exactly as the edge stamped them",
    response_model=ReadingsOut,
    responses={**NOT_FOUND, **BAD_PARAM},
)
def get_readings(
    ref: DeviceRefDep,
    store: StoreDep,
    settings: SettingsDep,
    now: NowMsDep,
    metric: MetricQuery,
    start: StartQuery = None,
    end: EndQuery = None,
    limit: Annotated[
        int | None,
        Query(ge=1, description="At most this many, oldest first; default and maximum `max_readings`."),
    ] = None,
) -> Response:
    start_ms, end_ms = window(start, end, now, DEFAULT_SPAN_MS)
    if limit is None:
        limit = settings.max_readings
    elif limit > settings.max_readings:
        raise QueryError(
            f"limit={limit} is over the maximum of {settings.max_readings}; page through the range "
            "with start=next_start_ms from each reply"
        )
    _check_metric(store, ref, metric)
    # One extra tells a full page from a truncated one.
    rows = store.readings(ref.site, ref.device, metric, start_ms, end_ms, limit + 1)
    truncated = len(rows) > limit
    rows = rows[:limit]
    body = {
        "site": ref.site,
        "device": ref.device,
        "metric": metric,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "start": iso(start_ms),
        "end": iso(end_ms),
        "limit": limit,
        "truncated": truncated,
        # A reading is unique per (device, metric, ts_ms), so the next page starts 1 ms later.
        "next_start_ms": rows[-1].ts_ms + 1 if truncated else None,
        # RawReading has exactly ReadingOut's fields; msgspec writes the dataclasses directly
        # (about 25x faster than building pydantic models for 100,000 readings), with
        # floats in their shortest exact form. tests/test_api.py checks the shape against
        # ReadingsOut.
        "readings": rows,
    }
    return Response(_JSON.encode(body), media_type="application/json")
