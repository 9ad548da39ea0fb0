"""What passes between an edge agent and the rest of Vigil besides its readings: the end-to-end
acknowledgement ingest sends it, and the health report it publishes about itself.

Topics (``wire.topics``):

    vigil/v1/{site}/{agent}/ack       ingest -> agent, QoS 1, not retained   (``Ack``)
    vigil/v1/{site}/{agent}/health    agent -> all, QoS 1, retained          (``AgentHealth``)

Why an acknowledgement above MQTT's: a broker's PUBACK means the broker has the message,
not that it is safe — Mosquitto acknowledges before it writes to disk, and a ``kill -9`` of
the broker loses what it held. So an agent keeps every telemetry message in its outbox until
ingest says the message's readings are durably written to the store.

Why ranges and not one high-water mark: workers of one shared subscription split an agent's
stream, so a worker that stored message 120 says nothing about message 119, which another
worker may still hold. Each worker acknowledges exactly the sequence numbers it stored.

Invariants:
- an ``Ack`` names only telemetry sequence numbers whose readings ingest has durably written
  (a 2xx from InfluxDB, the embedded store's commit) or durably dead-lettered: either way the
  agent must never send them again;
- ranges are inclusive ``[lo, hi]`` pairs with ``lo <= hi``; they may overlap and repeat
  (acks are at-least-once): the agent deletes what they cover and ignores what it no longer
  holds; a lost ``Ack`` costs only a resend, whose readings land on the same points;
- ``boot`` in ``AgentHealth`` is the agent's boot epoch, as in its ``Status``.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from wire.errors import WireError
from wire.payloads import DeviceId, Seq, Text, TsMs, decode

MAX_ACK_RANGES: Final = 10_000
Range = tuple[Seq, Seq]
WorkerId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")]
Count = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]


class Ack(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Telemetry messages of one agent that ingest has durably stored (see module doc)."""

    v: Literal[1]
    worker: WorkerId  # the ingest worker that stored them (for logs; not used to decide)
    ts_ms: TsMs
    ranges: Annotated[tuple[Range, ...], msgspec.Meta(min_length=1, max_length=MAX_ACK_RANGES)]

    def __post_init__(self) -> None:
        for lo, hi in self.ranges:
            if lo > hi:
                raise ValueError(f"ack range [{lo}, {hi}] is reversed")

    def covers(self, seq: int) -> bool:
        return any(lo <= seq <= hi for lo, hi in self.ranges)


class DeviceHealth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """How polling one device goes. ``offline`` = its last poll failed (the agent may be fine)."""

    state: Literal["online", "offline"]
    since_ms: TsMs  # when it entered this state
    poll_errors: Count = 0  # failed polls since the agent started
    reason: Text = ""  # the last error, for an offline device


class AgentHealth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """An agent's own health, published retained every ``interval`` and on rebirth."""

    v: Literal[1]
    ts_ms: TsMs
    boot: Seq
    outbox_depth: Count  # telemetry messages held, not yet acknowledged by ingest
    outbox_bytes: Count
    oldest_unacked_age_s: Seconds  # 0 when the outbox is empty
    dropped: Count  # messages dropped by the outbox bound since the agent started
    poll_errors: Count  # failed polls of all devices since the agent started
    publish_p99_s: Seconds  # queue-to-ack latency, p99 over the last interval
    devices: Annotated[dict[DeviceId, DeviceHealth], msgspec.Meta(max_length=10_000)] = {}
    version: Annotated[str, msgspec.Meta(max_length=64)] = ""
    # Why the last ``reload`` command was refused (the old config keeps running); "" if it was not.
    config_error: Text = ""


def decode_ack(payload: bytes) -> Ack:
    """Decode an acknowledgement; raise WireError saying what is wrong."""
    return decode(Ack, payload)


def decode_health(payload: bytes) -> AgentHealth:
    """Decode an agent health report; raise WireError saying what is wrong."""
    return decode(AgentHealth, payload)


__all__ = ["Ack", "AgentHealth", "DeviceHealth", "WireError", "decode_ack", "decode_health"]
