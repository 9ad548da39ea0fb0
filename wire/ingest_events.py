"""What ingest workers say on the bus: sequence gaps (for alerting) and the sequence numbers each
worker received (so workers of one shared-subscription group see one agent's whole stream).

Topics (``_ingest`` cannot be a site id, so they never collide with a site's topics):

    vigil/v1/_ingest/gap/{site}/{agent}     a gap in an agent's sequence numbers, opened or closed
    vigil/v1/_ingest/seen/{worker}          the sequence numbers a worker received lately

A gap is also published as an ``Anomaly`` (fault ``telemetry_gap``) on the site's ``_alarm``
topic for the agent (``gap_anomaly``), so alerting pages on it as on any anomaly.

Invariants:
- a gap is identified by (site, agent, first_seq): its ``id`` stays the same from
  "open" to "closed", so a consumer seeing the same event twice treats it as one;
- ``last_seq`` ≥ ``first_seq``; both are inclusive: the missing messages are
  ``first_seq..last_seq``;
- seen ranges are inclusive ``[lo, hi]`` pairs, at most ``MAX_SEEN_RANGES`` per message.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from wire.anomaly import Anomaly
from wire.errors import WireError
from wire.payloads import MAX_PAYLOAD_BYTES, Seq, TsMs
from wire.topics import PREFIX, AlarmTopic, check_id

INGEST_SEGMENT: Final = "_ingest"
MAX_SEEN_RANGES: Final = 10_000
GAP_FAULT: Final = "telemetry_gap"

Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")]
Range = tuple[Seq, Seq]


class GapEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Messages ``first_seq..last_seq`` of an agent did not arrive within ``open_after_s``."""

    v: Literal[1]
    site: Id
    agent: Id
    first_seq: Seq
    last_seq: Seq
    state: Literal["open", "closed"]
    opened_ms: TsMs  # when ingest first saw the gap (a later sequence number arrived)
    ts_ms: TsMs  # when this event was decided
    worker: Id  # the ingest worker that reports it

    @property
    def missing(self) -> int:
        return self.last_seq - self.first_seq + 1

    @property
    def id(self) -> str:
        return f"gap:{self.site}:{self.agent}:{self.first_seq}"


class SeenSeqs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Sequence numbers one worker received, per (site, agent), as inclusive ranges."""

    v: Literal[1]
    worker: Id
    seen: Annotated[tuple[tuple[Id, Id, tuple[Range, ...]], ...], msgspec.Meta(max_length=MAX_SEEN_RANGES)]


def gap_topic(site: str, agent: str) -> str:
    return f"{PREFIX}/{INGEST_SEGMENT}/gap/{check_id('site', site)}/{check_id('agent', agent)}"


def gap_filter() -> str:
    return f"{PREFIX}/{INGEST_SEGMENT}/gap/+/+"


def seen_topic(worker: str) -> str:
    return f"{PREFIX}/{INGEST_SEGMENT}/seen/{check_id('worker', worker)}"


def seen_filter() -> str:
    return f"{PREFIX}/{INGEST_SEGMENT}/seen/+"


def gap_anomaly(gap: GapEvent) -> tuple[AlarmTopic, Anomaly]:
    """The gap as an anomaly on the agent's alarm topic, so alerting pages on it unchanged."""
    summary = (f"{gap.missing} telemetry message(s) from agent {gap.agent} (sequence "
               f"{gap.first_seq}..{gap.last_seq}) never arrived")
    return AlarmTopic(gap.site, gap.agent), Anomaly(
        v=1, id=gap.id, state="open" if gap.state == "open" else "cleared", ts_ms=gap.ts_ms,
        started_ms=gap.opened_ms, severity="major", fault=GAP_FAULT, summary=summary, agent=gap.agent,
        detectors=("ingest_sequence",), cleared_ms=gap.ts_ms if gap.state == "closed" else None,
    )


_ENCODER: Final = msgspec.json.Encoder()
_GAP: Final = msgspec.json.Decoder(GapEvent)
_SEEN: Final = msgspec.json.Decoder(SeenSeqs)


def encode_event(event: GapEvent | SeenSeqs) -> bytes:
    return _ENCODER.encode(event)


def _decode(decoder: msgspec.json.Decoder[GapEvent] | msgspec.json.Decoder[SeenSeqs], name: str,
            payload: bytes) -> GapEvent | SeenSeqs:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError(f"{name} payload is {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES} limit")
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as e:
        raise WireError(f"invalid {name}: {e}") from None
    except msgspec.DecodeError as e:
        raise WireError(f"{name} payload is not valid JSON: {e}") from None


def decode_gap(payload: bytes) -> GapEvent:
    found = _decode(_GAP, "gap event", payload)
    assert isinstance(found, GapEvent)
    return found


def decode_seen(payload: bytes) -> SeenSeqs:
    found = _decode(_SEEN, "seen sequences", payload)
    assert isinstance(found, SeenSeqs)
    return found
