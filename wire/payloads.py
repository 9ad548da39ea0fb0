"""Versioned JSON payloads of the Vigil bus, decoded strictly.

Invariants:
- ``decode_*`` either returns a typed, validated value or raises ``WireError`` whose
  message names the field and the problem (msgspec's JSON path, e.g. ``$.readings[3].ts_ms``);
  no other exception escapes, whatever bytes arrive;
- ``decode_x(encode(m)) == m`` for every valid message ``m``;
- timestamps are epoch milliseconds set at the edge when a reading is measured. Ingest
  never re-stamps them, so a redelivered reading lands on the same stored point;
- numeric values are finite floats (ints in JSON are accepted and become floats), so a
  metric never changes field type between an integer and a float reading in the store.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from wire.errors import WireError

VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 1 << 20
MAX_READINGS: Final = 10_000
# 2001-09-09 .. 2262-04-11: anything outside is a clock that was never set, or garbage.
MIN_TS_MS: Final = 1_000_000_000_000
MAX_TS_MS: Final = 9_223_372_036_854  # InfluxDB stores nothing after 2262-04-11
METRIC_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$"

TsMs = Annotated[int, msgspec.Meta(ge=MIN_TS_MS, le=MAX_TS_MS)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
# msgspec checks a pattern with Python's re.search, whose `$` also matches before a final
# newline, so "temp\n" passed as a metric name (a line-protocol hazard). `\Z` is the true
# end of text. METRIC_PATTERN keeps `$` for pydantic users: its Rust engine has no `\Z`,
# and its `$` is already strict.
_METRIC_STRICT: Final = METRIC_PATTERN.removesuffix("$") + r"\Z"
MetricName = Annotated[str, msgspec.Meta(pattern=_METRIC_STRICT)]
# Same rule as wire.topics.ID_PATTERN (a device id is a topic segment).
DeviceId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")]
MAX_DEVICES: Final = 10_000
Unit = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
Text = Annotated[str, msgspec.Meta(max_length=1024)]
Kind = Annotated[str, msgspec.Meta(pattern=_METRIC_STRICT)]
Value = float | bool | Text
Quality = Literal["good", "uncertain", "bad"]
Severity = Literal["info", "warning", "minor", "major", "critical"]
AgentState = Literal["online", "offline"]


class Reading(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One measurement: when (edge clock), what, the value, and how much to trust it."""

    ts_ms: TsMs
    metric: MetricName
    value: Value
    unit: Unit | None = None
    quality: Quality = "good"

    def __post_init__(self) -> None:
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError(f"value of {self.metric!r} must be finite, got {self.value}")


class Telemetry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A batch of readings of one device, numbered by the agent's publish sequence.

    ``seq`` is the agent's, not the device's: it grows by one per telemetry message across
    all devices of the agent and continues across agent restarts (the outbox keeps it), so
    ingest can acknowledge it (``wire.agent.Ack``) and see gaps. ``historical`` marks a
    message replayed from the agent's outbox after an outage (Sparkplug's is_historical):
    its readings are old, so consumers that act on "now" (presence, late-data rules) must
    not take them as fresh."""

    v: Literal[1]
    seq: Seq
    readings: Annotated[tuple[Reading, ...], msgspec.Meta(min_length=1, max_length=MAX_READINGS)]
    historical: bool = False


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Something that happened at a device: door forced, fire alarm, tamper."""

    v: Literal[1]
    seq: Seq
    ts_ms: TsMs
    kind: Kind
    severity: Severity
    message: Text = ""
    data: Annotated[dict[MetricName, Value], msgspec.Meta(max_length=64)] = {}


class Status(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """An agent's retained presence. ``boot`` grows on every agent start (Sparkplug's bdSeq),
    so a restart is visible even when no offline message was seen in between.

    Ordering: an agent's current status is the one with the greatest ``ts_ms``, ties going
    to the later arrival. The birth (online) and the last will (offline) of one connection
    both carry the ``ts_ms`` of that connect, so a will that fires replaces its own birth,
    and a stale will from an older connection never replaces a newer birth."""

    v: Literal[1]
    state: AgentState
    ts_ms: TsMs
    boot: Seq = 0
    reason: Text = ""
    # In a birth: the agent's software version and the devices it reads, id -> equipment
    # kind ("pump", "chiller", "door", ...). Ingest refuses telemetry of a device its agent
    # did not announce; analytics picks detectors by kind. Empty in a will or goodbye.
    version: Annotated[str, msgspec.Meta(max_length=64)] = ""
    devices: Annotated[dict[DeviceId, Kind], msgspec.Meta(max_length=MAX_DEVICES)] = {}


Message = Telemetry | Event | Status
# Any payload type of the contract: these and those of wire.anomaly, wire.workorder, ...
M = TypeVar("M", bound=msgspec.Struct)

_ENCODER: Final = msgspec.json.Encoder()
_DECODERS: Final[dict[type[msgspec.Struct], msgspec.json.Decoder[Any]]] = {}


def encode(message: msgspec.Struct) -> bytes:
    """Serialise a payload of the contract (any of its Struct types) to its JSON bytes."""
    return _ENCODER.encode(message)


def decode(kind: type[M], payload: bytes) -> M:
    """Decode ``payload`` as the contract type ``kind``; raise WireError naming what is wrong."""
    name = re.sub(r"(?<!^)(?=[A-Z])", " ", kind.__name__).lower()  # SlaBreach -> "sla breach"
    decoder = _DECODERS.get(kind)
    if decoder is None:  # built once per type; a Decoder is immutable and thread-safe
        decoder = _DECODERS.setdefault(kind, msgspec.json.Decoder(kind))
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise WireError(f"{name} payload must be bytes, got {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError(f"{name} payload is {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES} limit")
    try:
        return decoder.decode(payload)  # type: ignore[no-any-return]
    except msgspec.ValidationError as e:
        raise WireError(f"invalid {name}: {e}") from None
    except msgspec.DecodeError as e:
        raise WireError(f"{name} payload is not valid JSON: {e}") from None
    except RecursionError:
        raise WireError(f"{name} payload is nested too deeply") from None


def decode_telemetry(payload: bytes) -> Telemetry:
    return decode(Telemetry, payload)


def decode_event(payload: bytes) -> Event:
    return decode(Event, payload)


def decode_status(payload: bytes) -> Status:
    return decode(Status, payload)
