"""Anomaly events: what analytics publishes on ``vigil/v1/{site}/_alarm/{device}``.

Maintenance turns them into work orders, alerting pages people, the dashboard colours
tiles. One anomaly has one ``id`` for its whole life; each state change is one event.

Invariants:
- ``id`` is stable across the anomaly's life and across replays: a consumer that sees
  the same (id, state, ts_ms) twice must treat it as one event (delivery is at least once);
- ``fault`` names the kind of fault (e.g. ``vibration_high``, ``sensor_stuck``), so that
  (site, device, fault) identifies "the same problem on the same equipment" for
  deduplication into one work order;
- ``state`` goes open → updated* → cleared; an event for a cleared id that opens again
  uses a new id;
- ``ts_ms`` is the time of this state change on the edge clock (the reading that caused it).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from wire.payloads import Kind, MetricName, Severity, Text, TsMs, decode

AnomalyState = Literal["open", "updated", "cleared"]
AnomalyId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}\Z")]


class Anomaly(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    v: Literal[1]
    id: AnomalyId
    state: AnomalyState
    ts_ms: TsMs
    started_ms: TsMs
    severity: Severity
    fault: Kind
    summary: Text  # a sentence a technician understands
    kind: Kind | None = None  # equipment kind, e.g. "pump"
    agent: Kind | None = None
    metrics: Annotated[tuple[MetricName, ...], msgspec.Meta(max_length=64)] = ()
    detectors: Annotated[tuple[Kind, ...], msgspec.Meta(max_length=32)] = ()
    expected: Annotated[dict[MetricName, float], msgspec.Meta(max_length=64)] = {}
    observed: Annotated[dict[MetricName, float], msgspec.Meta(max_length=64)] = {}
    cleared_ms: TsMs | None = None


def decode_anomaly(payload: bytes) -> Anomaly:
    """Decode an anomaly event; raise WireError naming what is wrong."""
    return decode(Anomaly, payload)
