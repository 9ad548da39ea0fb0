"""What ingest accepts, and the reason code and human reason for everything it does not (sans-IO).

``check_message`` takes the raw topic bytes, the payload, ``now_ms`` and a ``Policy``, and
returns an ``Accepted`` (possibly with some readings split off as rejected) or raises
``InputError``. It never touches a socket, a clock or a store.

The hot path is msgspec's strict decode plus two cheap checks on success (reading times
inside the window, and a byte count that rules out duplicate keys). Everything slower,
working out *why* a payload is bad, runs only after the decode has already failed, so
bad input costs more than good input and never slows the good.

Invariants:
- every rejection carries one ``Code`` (stable, for filters, metrics and alerting) and a
  reason a person can act on, naming the field where there is one;
- a message whose only fault is some readings outside the time window is split: its good
  readings are accepted, the others rejected as one Telemetry of the same ``seq``, so a
  clock that jumped loses nothing else;
- a duplicate JSON key is refused, never resolved: msgspec (like most decoders) keeps the
  last one silently, and which value the device meant is unknowable.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from wire import StatusTopic, Telemetry, TelemetryTopic, WireError, parse_topic
from wire.agent import AgentHealth, decode_health
from wire.payloads import MAX_PAYLOAD_BYTES, Status, decode_status, decode_telemetry
from wire.topics import HealthTopic

# A valid telemetry payload nests 3 deep (object, readings array, reading object); a status
# 1. Deeper is never valid, and beyond this it is not worth parsing to explain.
MAX_DEPTH: Final = 16


class Code(StrEnum):
    """Why a message became a dead letter. Stable names: filters, metrics and alerts use them."""

    EMPTY_PAYLOAD = "empty_payload"
    OVERSIZE = "oversize"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"  # not JSON at all, or truncated
    TOO_DEEP = "too_deep"
    DUPLICATE_KEY = "duplicate_key"
    NON_FINITE = "non_finite"  # NaN, Infinity, or a number out of float range
    WRONG_TYPE = "wrong_type"  # JSON, but not the shape of the wire contract
    BAD_NAME = "bad_name"  # a metric name or unit InfluxDB's line protocol cannot carry as sent
    BAD_TOPIC = "bad_topic"  # not a Vigil topic, or a malformed site/agent/device id
    UNKNOWN_SITE = "unknown_site"
    UNKNOWN_DEVICE = "unknown_device"  # not among the devices of its agent's latest birth (ingest.births)
    TOPIC_MISMATCH = "topic_mismatch"  # topic and payload disagree
    TS_OUT_OF_WINDOW = "ts_out_of_window"
    STORE_REFUSED = "store_refused"  # the store refused the data itself (HTTP 400/413/422)
    INTERNAL = "internal"  # a bug in ingest; the message is kept for replay once fixed


class InputError(Exception):
    """The message cannot be stored; ``code`` says which kind of fault, the text says what."""

    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Policy:
    """What ingest accepts beyond the wire contract (from IngestSettings)."""

    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_age_ms: int | None = 30 * 86_400_000  # None: any past time the contract admits
    max_ahead_ms: int | None = 3_600_000  # None: any future time the contract admits
    sites: frozenset[str] = frozenset()  # empty: every site is known


@dataclass(slots=True)
class Accepted:
    topic: TelemetryTopic | StatusTopic | HealthTopic
    message: Telemetry | Status | AgentHealth
    # Readings split off a telemetry message: (code, reason, a Telemetry of just those readings).
    rejected: list[tuple[Code, str, Telemetry]] = field(default_factory=list)


def check_message(raw_topic: bytes, payload: bytes, now_ms: int, policy: Policy) -> Accepted:
    """Decode and check one message; raise InputError with a code and reason if it cannot be stored."""
    try:
        topic_text = raw_topic.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(Code.BAD_TOPIC, f"topic is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        topic = parse_topic(topic_text)
    except WireError as e:
        raise InputError(Code.BAD_TOPIC, str(e)) from None
    if policy.sites and getattr(topic, "site", None) not in policy.sites:
        raise InputError(Code.UNKNOWN_SITE, f"site {getattr(topic, 'site', '')!r} is not one this ingest "
                                          f"takes ({', '.join(sorted(policy.sites))})")
    if not payload:
        raise InputError(Code.EMPTY_PAYLOAD, "payload is empty (0 bytes)")
    if len(payload) > policy.max_payload_bytes:
        raise InputError(Code.OVERSIZE, f"payload is {len(payload)} bytes, over the limit of "
                                      f"{policy.max_payload_bytes}")
    if isinstance(topic, TelemetryTopic):
        try:
            telemetry = decode_telemetry(payload)
        except WireError as e:
            raise explain(payload, str(e), topic) from None
        _check_duplicates(payload, len(telemetry.readings))
        return _check_window(topic, telemetry, now_ms, policy)
    if isinstance(topic, StatusTopic):
        try:
            status = decode_status(payload)
        except WireError as e:
            raise explain(payload, str(e), topic) from None
        _check_duplicates(payload, 0)
        return Accepted(topic, status)
    if isinstance(topic, HealthTopic):
        try:
            health = decode_health(payload)
        except WireError as e:
            raise explain(payload, str(e), topic) from None
        _check_duplicates(payload, 0)
        return Accepted(topic, health)
    raise InputError(Code.BAD_TOPIC,
                     f"ingest does not take {type(topic).__name__} messages ({topic_text[:120]!r})")


# -- after a successful decode -------------------------------------------------------------------

_TELEMETRY_KEYS: Final = (b'"v"', b'"seq"', b'"readings"')
_READING_KEYS: Final = (b'"ts_ms"', b'"metric"', b'"value"')
_OPTIONAL_READING_KEYS: Final = (b'"unit"', b'"quality"')


def _check_duplicates(payload: bytes, readings: int) -> None:
    """Refuse a payload with a repeated key in any object.

    Fast path: in a clean payload every required key appears exactly once per object
    (``bytes.count`` runs in C). Only when a count is off, or the payload uses ``\\u``
    escapes (which can spell a key differently), is it parsed again to be sure: a key's
    name inside a string value is then not mistaken for a duplicate.
    """
    if readings:
        clean = (
            b"\\u" not in payload
            and all(payload.count(k) == 1 for k in _TELEMETRY_KEYS)
            and all(payload.count(k) == readings for k in _READING_KEYS)
            and all(payload.count(k) <= readings for k in _OPTIONAL_READING_KEYS)
        )
        if clean:
            return
    # Statuses are rare (one per agent connect): always the exact check.
    duplicate = find_duplicate_key(payload)
    if duplicate is not None:
        raise InputError(Code.DUPLICATE_KEY, f"key {duplicate[0]!r} appears twice in the object at "
                                             f"{duplicate[1]}: which value was meant is unknowable")


def find_duplicate_key(payload: bytes) -> tuple[str, str] | None:
    """The first repeated key and the JSON path of its object, or None (or None if not JSON)."""
    found: list[tuple[str, str]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen and not found:
                found.append((k, "an object"))
            seen.add(k)
        return dict(pairs)

    try:
        json.loads(payload, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return None
    if not found:
        return None
    key = found[0][0]
    return key, _path_of_duplicate(payload, key)


def _path_of_duplicate(payload: bytes, key: str) -> str:
    """Best-effort JSON path of the object holding the duplicate (``$`` or ``$.readings[i]``)."""
    try:
        pairs_top = json.loads(payload, object_pairs_hook=lambda p: p)
    except ValueError:
        return "$"
    if isinstance(pairs_top, list):
        keys = [k for k, _ in pairs_top]
        if keys.count(key) > 1:
            return "$"
        for k, v in pairs_top:
            if k == "readings" and isinstance(v, list):
                for i, item in enumerate(v):
                    if isinstance(item, list) and [k2 for k2, _ in item].count(key) > 1:
                        return f"$.readings[{i}]"
    return "$"


def _check_window(topic: TelemetryTopic, message: Telemetry, now_ms: int, policy: Policy) -> Accepted:
    low = now_ms - policy.max_age_ms if policy.max_age_ms is not None else None
    high = now_ms + policy.max_ahead_ms if policy.max_ahead_ms is not None else None
    readings = message.readings
    if (low is None or min(r.ts_ms for r in readings) >= low) and (
        high is None or max(r.ts_ms for r in readings) <= high
    ):
        return Accepted(topic, message)
    good = [r for r in readings if (low is None or r.ts_ms >= low) and (high is None or r.ts_ms <= high)]
    bad = tuple(r for r in readings if r not in good)
    old = [r.ts_ms for r in bad if low is not None and r.ts_ms < low]
    new = [r.ts_ms for r in bad if high is not None and r.ts_ms > high]
    parts = []
    if old:
        parts.append(f"{len(old)} reading(s) older than {policy.max_age_ms} ms before now (oldest ts_ms "
                     f"{min(old)}, now {now_ms})")
    if new:
        parts.append(f"{len(new)} reading(s) more than {policy.max_ahead_ms} ms ahead of now (newest ts_ms "
                     f"{max(new)}, now {now_ms})")
    reason = ("; ".join(parts) + ": the device's clock is wrong, or the window "
              "(ts_max_age_s/ts_max_ahead_s) is too narrow")
    rejected = Telemetry(v=message.v, seq=message.seq, readings=bad)
    if not good:
        raise InputError(Code.TS_OUT_OF_WINDOW, reason)
    kept = Telemetry(v=message.v, seq=message.seq, readings=tuple(good))
    return Accepted(topic, kept, [(Code.TS_OUT_OF_WINDOW, reason, rejected)])


# -- after a failed decode: why ---------------------------------------------------------------------

_BRACKETS: Final = re.compile(rb'[\[\]{}"\\]')
_NON_FINITE: Final = ("NaN", "Infinity", "-Infinity")
_PATH: Final = re.compile(r"\$[\w.\[\]]*")


def nesting_depth(payload: bytes) -> int:
    """The deepest nesting of arrays/objects, ignoring brackets inside strings."""
    depth = deepest = 0
    in_string = False
    skip_at = -1  # the position right after a backslash: the character there is escaped
    for m in _BRACKETS.finditer(payload):
        ch = m.group()
        if in_string:
            if m.start() == skip_at:
                continue
            if ch == b"\\":
                skip_at = m.end()
            elif ch == b'"':
                in_string = False
            continue
        if ch == b'"':
            in_string = True
        elif ch in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif ch in (b"]", b"}"):
            depth -= 1
    return deepest


def explain(  # noqa: PLR0911  # one return per kind of fault reads best
    payload: bytes, decoder_error: str, topic: TelemetryTopic | StatusTopic | HealthTopic
) -> InputError:
    """The code and reason for a payload the strict decoder refused (slow path, bad input only)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        return InputError(Code.INVALID_UTF8, f"payload is not valid UTF-8 ({e.reason} at byte {e.start}): "
                                           "JSON must be UTF-8")
    depth = nesting_depth(payload)
    if depth > MAX_DEPTH:
        return InputError(Code.TOO_DEEP, f"payload nests {depth} levels deep; a Vigil message nests at "
                                         f"most 3 (refused beyond {MAX_DEPTH})")
    constants: list[str] = []

    def constant(name: str) -> float:
        constants.append(name)
        return 0.0

    try:
        parsed = json.loads(text, parse_constant=constant)
    except ValueError as e:
        at_end = getattr(e, "pos", 0) >= len(text.rstrip())
        kind = "truncated" if "Expecting" in str(e) and at_end else "not JSON"
        return InputError(Code.INVALID_JSON, f"payload is {kind}: {decoder_error} ({e})")
    except RecursionError:
        return InputError(Code.TOO_DEEP, "payload nests too deeply to parse")
    if constants:
        return InputError(Code.NON_FINITE, f"payload uses {constants[0]}, which JSON does not allow: values "
                                         "must be finite numbers")
    if "Number out of range" in decoder_error or "must be finite" in decoder_error:
        return InputError(Code.NON_FINITE, f"{decoder_error}: values must be finite numbers")
    mismatch = _mismatch(parsed, topic)
    if mismatch is not None:
        return InputError(Code.TOPIC_MISMATCH, mismatch)
    path = _PATH.search(decoder_error)
    at = path.group() if path else ""
    if at.endswith(".metric") or at.endswith(".unit"):
        return InputError(Code.BAD_NAME, f"{decoder_error} (names may not carry spaces, commas, '=', quotes "
                                         "or control characters: line protocol would split on them)")
    if at.endswith(".ts_ms") and (">=" in decoder_error or "<=" in decoder_error):
        return InputError(Code.TS_OUT_OF_WINDOW, f"{decoder_error}: the device's clock is wrong")
    return InputError(Code.WRONG_TYPE, decoder_error)


def _mismatch(parsed: object, topic: TelemetryTopic | StatusTopic | HealthTopic) -> str | None:
    """How the payload contradicts its topic, if it does."""
    if not isinstance(parsed, dict):
        return None
    for key in ("site", "agent", "device"):
        said = parsed.get(key)
        meant = getattr(topic, key, None)
        if said is not None and meant is not None and said != meant:
            return f"payload says {key} {str(said)[:64]!r} but the topic {topic.format()} says {meant!r}"
    kind = ("telemetry" if isinstance(topic, TelemetryTopic)
            else "status" if isinstance(topic, StatusTopic) else "health")
    looks = _looks_like(parsed)
    if looks is not None and looks != kind:
        return f"payload is a {looks} message but the topic {topic.format()} is a {kind} topic"
    return None


def _looks_like(parsed: dict[str, Any]) -> str | None:
    keys = set(parsed)
    if "readings" in keys:
        return "telemetry"
    if "outbox_depth" in keys:
        return "health"
    if "state" in keys:
        return "status"
    if {"kind", "severity"} <= keys:
        return "event"
    return None
