"""Work order events maintenance publishes: SLA breaches on ``vigil/v1/{site}/_maintenance/sla``
and state changes (``WorkOrderUpdate``, further down) on ``.../_maintenance/workorder``.

Alerting pages the crew on them. A breach is published once per work order and timer
(``respond``: work not started in time; ``resolve``: not resolved in time), at QoS 1, so a
consumer may see it more than once and must treat the same ``id`` as one event.

Invariants:
- ``id`` is ``wo<work order>-<timer>-<n>`` where ``n`` counts the order's reopenings: stable
  across redeliveries, new if a reopened order breaches again;
- ``due_ms`` is the deadline that was missed; ``breached_ms`` when maintenance noticed
  (at or after ``due_ms``).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from wire.errors import WireError
from wire.payloads import Kind, Text, TsMs, decode
from wire.topics import PREFIX, check_id

SLA_SEGMENT: Final = "_maintenance"
SlaTimer = Literal["respond", "resolve"]
Priority = Literal["P1", "P2", "P3", "P4"]
WorkOrderState = Literal["new", "assigned", "in_progress", "on_hold", "resolved", "closed", "cancelled"]
BreachId = Annotated[str, msgspec.Meta(pattern=r"^wo[0-9]{1,18}-(respond|resolve)-[0-9]{1,6}\Z")]
Ident = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")]


class SlaBreach(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    v: Literal[1]
    id: BreachId
    work_order: Annotated[int, msgspec.Meta(ge=1)]
    timer: SlaTimer
    priority: Priority
    state: WorkOrderState
    due_ms: TsMs
    breached_ms: TsMs
    title: Text
    equipment: Ident | None = None  # the equipment code within the site
    device: Ident | None = None
    fault: Kind | None = None
    assignee: Text | None = None
    crew: Text | None = None


_ENCODER: Final = msgspec.json.Encoder()


def sla_topic(site: str) -> str:
    return f"{PREFIX}/{check_id('site', site)}/{SLA_SEGMENT}/sla"


def sla_filter(site: str | None = None) -> str:
    return f"{PREFIX}/{site or '+'}/{SLA_SEGMENT}/sla"


def encode_sla_breach(event: SlaBreach) -> bytes:
    return _ENCODER.encode(event)


def decode_sla_breach(payload: bytes) -> SlaBreach:
    """Decode an SLA breach event; raise WireError naming what is wrong."""
    return decode(SlaBreach, payload)


# -- work order updates: ``vigil/v1/{site}/_maintenance/workorder`` -----------------------------
#
# Maintenance publishes one on every state change of a work order (created, each transition,
# a reopen, the closed loop's automatic close), at QoS 1 through its outbox, so a consumer
# may see one more than once, and, rarely, an older one after a newer one.
#
# Invariants:
# - ``seq`` counts the order's state changes (1 = created) and only grows: a consumer keeps the
#   highest ``seq`` it has applied per work order and ignores anything not above it;
# - ``id`` is ``wo<work order>-<seq>``: stable across redeliveries;
# - ``devices`` are the bus devices of the site bound to ``equipment`` in the asset ledger
#   when the change was made, plus the order's own device: the (site, device) pairs whose
#   alarms the work order concerns.

WORKORDER_SUFFIX: Final = "workorder"
UpdateId = Annotated[str, msgspec.Meta(pattern=r"^wo[0-9]{1,18}-[0-9]{1,9}\Z")]
AnomalyRef = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}\Z")]
WorkOrderChange = Literal["created", "transition", "reopened"]
MAX_DEVICES: Final = 256


class WorkOrderUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    v: Literal[1]
    id: UpdateId
    work_order: Annotated[int, msgspec.Meta(ge=1)]
    seq: Annotated[int, msgspec.Meta(ge=1)]
    change: WorkOrderChange
    state: WorkOrderState
    priority: Priority
    site: Ident
    ts_ms: TsMs
    previous: WorkOrderState | None = None  # None when created
    actor: Text | None = None  # who made the change (``system:verify`` for the closed loop)
    equipment: Ident | None = None  # the equipment code within the site
    devices: Annotated[tuple[Ident, ...], msgspec.Meta(max_length=MAX_DEVICES)] = ()
    fault: Kind | None = None
    anomaly_id: AnomalyRef | None = None




def workorder_topic(site: str) -> str:
    return f"{PREFIX}/{check_id('site', site)}/{SLA_SEGMENT}/{WORKORDER_SUFFIX}"


def workorder_filter(site: str | None = None) -> str:
    return f"{PREFIX}/{site or '+'}/{SLA_SEGMENT}/{WORKORDER_SUFFIX}"


def encode_workorder_update(event: WorkOrderUpdate) -> bytes:
    return _ENCODER.encode(event)


def decode_workorder_update(payload: bytes) -> WorkOrderUpdate:
    """Decode a work order update; raise WireError naming what is wrong."""
    event = decode(WorkOrderUpdate, payload)
    if event.id != f"wo{event.work_order}-{event.seq}":
        expected = f"wo{event.work_order}-{event.seq}"
        raise WireError(f"invalid work order update: id {event.id!r} does not match work order "
                        f"{event.work_order} and seq {event.seq} (expected {expected!r})")
    return event
