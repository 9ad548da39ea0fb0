"""Query times and steps as people write them, turned into epoch milliseconds — a pure core.

Choices (documented in the API's OpenAPI descriptions too):
- a time is either whole epoch milliseconds (``1717243200000``) or ISO-8601 with an
  explicit offset (``2024-06-01T12:00:00Z``, ``2024-06-01T14:00:00+02:00``). A time with
  no offset is rejected rather than guessed: reading it as UTC would silently shift the
  window of an operator who meant local time. Because an unescaped ``+`` in a query
  string arrives as a space, ``...T14:00:00 02:00`` is read as ``+02:00``;
- a step is whole milliseconds (``250``) or a duration made of ``<int><unit>`` parts,
  units ``ms s m h d w`` (``250ms``, ``30s``, ``5m``, ``1h30m``);
- with no step given, the step is the smallest "round" one (1 s, 2 s, 5 s, 10 s, 15 s,
  30 s, 1 m, ...) that cuts the range into at most the target number of buckets, so
  dashboards get boundaries that line up with the clock;
- buckets start at multiples of the step since the epoch (the store's convention), so a
  range spans ``ceil(end / step) - floor(start / step)`` of them.

Every rejection raises ``QueryError`` with a sentence that names the parameter, the
value received, and what would be accepted.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from wire.payloads import MAX_TS_MS

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Largest time or step accepted: the wire contract's newest timestamp (year 2286).
MAX_MS: Final = MAX_TS_MS + 1

_UNIT_MS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# ASCII digits only: ``\d`` and str.isdigit() also match digits int() cannot read ("²").
_STEP_PART: Final = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")
_STEP_FULL: Final = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w))+")
_INT: Final = re.compile(r"[+-]?[0-9]+")
# Epoch seconds of 2001..5138 read as milliseconds fall in 1970-01-12..1973-03-03, before
# any timestamp the wire contract accepts (MIN_TS_MS is 2001): refused, not silently empty.
SECONDS_LOOKALIKE: Final = (10**9, 10**11)
# Longer input is refused before int() sees it: int() of 4,300+ digits raises.
MAX_TEXT: Final = 64
# "2024-06-01T14:00:00 02:00": the '+' of an offset decoded as a space by the query string.
_SPACE_OFFSET: Final = re.compile(r"^(\S+T\S+) ([0-9]{2}(?::?[0-9]{2})?)$")
# Round steps, smallest first; past the last one, whole weeks.
_NICE_STEPS_MS: Final = (
    1, 2, 5, 10, 20, 50, 100, 200, 500,
    1_000, 2_000, 5_000, 10_000, 15_000, 30_000,
    60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000,
    3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000,
    86_400_000, 172_800_000, 604_800_000,
)  # fmt: skip


class QueryError(ValueError):
    """A query parameter cannot be used; the message says which, why, and what would work."""


def iso(ms: int) -> str:
    """``ms`` as ISO-8601 UTC with milliseconds and a ``Z``, computed without float rounding."""
    return (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(name: str, text: str) -> int:
    """Epoch milliseconds from ``text`` (epoch ms or ISO-8601 with an offset)."""
    raw = text.strip()
    if not raw:
        raise QueryError(f"{name} is empty: give epoch milliseconds or ISO-8601 such as 2024-06-01T12:00:00Z")
    if len(raw) > MAX_TEXT:
        raise QueryError(f"{name} is {len(raw)} characters long; a time is at most {MAX_TEXT}")
    if _INT.fullmatch(raw):
        ms = int(raw)
        if SECONDS_LOOKALIKE[0] <= ms < SECONDS_LOOKALIKE[1]:
            raise QueryError(
                f"{name}={raw} looks like epoch seconds ({iso(ms)[:10]} as milliseconds); "
                f"times are epoch milliseconds: {name}={ms * 1000}"
            )
    elif re.fullmatch(r"[+-]?[0-9]+\.[0-9]*", raw):
        raise QueryError(f"{name}={raw[:40]!r} has a fraction: epoch times are whole milliseconds")
    else:
        ms = _parse_iso(name, raw)
    if ms < 0:
        raise QueryError(f"{name}={raw[:40]!r} is before 1970-01-01T00:00:00Z, the earliest time accepted")
    if ms > MAX_MS:
        raise QueryError(
            f"{name}={raw[:40]!r} is after {iso(MAX_MS)}: epoch times are in milliseconds "
            "(13 digits today), not microseconds or nanoseconds"
        )
    return ms


def _parse_iso(name: str, raw: str) -> int:
    candidate = _SPACE_OFFSET.sub(r"\1+\2", raw)
    try:
        parsed = datetime.fromisoformat(candidate)
    except ValueError:
        raise QueryError(
            f"{name}={raw[:40]!r} is not a time: give epoch milliseconds (1717243200000) or "
            "ISO-8601 with an offset (2024-06-01T12:00:00Z)"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise QueryError(
            f"{name}={raw[:40]!r} has no UTC offset: add Z for UTC or an offset such as +02:00 "
            "(send '+' as %2B in a URL)"
        )
    delta = parsed - EPOCH
    # timedelta is exact in microseconds; keep the floor so sub-ms times round down.
    return delta // timedelta(milliseconds=1)


def parse_step(text: str) -> int:
    """Milliseconds from ``text`` (integer ms or a duration like ``5m``, ``1h30m``)."""
    raw = text.strip().lower().replace(" ", "")
    if len(raw) > MAX_TEXT:
        raise QueryError(f"step is {len(raw)} characters long; a step is at most {MAX_TEXT}")
    if raw.startswith("-"):
        raise QueryError(f"step={text[:40]!r} must be positive, e.g. 30s, 5m or 1h")
    if _INT.fullmatch(raw):
        ms = int(raw)
    elif _STEP_FULL.fullmatch(raw):
        ms = sum(int(n) * _UNIT_MS[unit] for n, unit in _STEP_PART.findall(raw))
    else:
        raise QueryError(
            f"step={text[:40]!r} is not a duration: give whole milliseconds (250) or "
            "<int><unit> parts with units ms, s, m, h, d, w (250ms, 30s, 5m, 1h30m)"
        )
    if ms <= 0:
        raise QueryError(f"step={text[:40]!r} must be positive, e.g. 30s, 5m or 1h")
    if ms > MAX_MS:
        raise QueryError(f"step={text[:40]!r} is longer than any time range; use a shorter step")
    return ms


def format_step(ms: int) -> str:
    """The shortest ``<int><unit>`` spelling of ``ms`` that ``parse_step`` reads back."""
    if ms <= 0:
        return f"{ms}ms"
    parts: list[str] = []
    rest = ms
    for unit in ("w", "d", "h", "m", "s", "ms"):
        n, rest = divmod(rest, _UNIT_MS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def bucket_count(start_ms: int, end_ms: int, step_ms: int) -> int:
    """How many epoch-aligned steps touch ``[start_ms, end_ms)``."""
    return -(-end_ms // step_ms) - start_ms // step_ms


def nice_step(start_ms: int, end_ms: int, max_buckets: int) -> int:
    """The smallest round step that gives ``[start_ms, end_ms)`` at most ``max_buckets``."""
    for step in _NICE_STEPS_MS:
        if bucket_count(start_ms, end_ms, step) <= max_buckets:
            return step
    week = _NICE_STEPS_MS[-1]
    weeks = max(1, -(-(end_ms - start_ms) // (week * max_buckets)))
    # Alignment may add one bucket at each end; grow until it fits.
    while bucket_count(start_ms, end_ms, weeks * week) > max_buckets:
        weeks += 1
    return weeks * week


def window(start: str | None, end: str | None, now_ms: int, default_span_ms: int) -> tuple[int, int]:
    """``[start_ms, end_ms)`` from optional texts: end defaults to now, start to end - span.

    A problem with each of start and end is reported together, so one reply fixes both.
    """
    problems: list[str] = []
    given: dict[str, int] = {}
    for name, text in (("start", start), ("end", end)):
        if text is not None:
            try:
                given[name] = parse_time(name, text)
            except QueryError as e:
                problems.append(str(e))
    if problems:
        raise QueryError(join(problems))
    end_ms = given.get("end", now_ms)
    start_ms = given.get("start", max(0, end_ms - default_span_ms))
    if start_ms >= end_ms:
        defaulted = " (end defaults to now)" if end is None else ""
        raise QueryError(
            f"start ({iso(start_ms)}) must be before end ({iso(end_ms)}){defaulted}; "
            "the range is half-open [start, end)"
        )
    return start_ms, end_ms


def join(problems: list[str]) -> str:
    """Several problems as one message, a sentence each."""
    return " ".join(p if p.endswith(".") else p + "." for p in problems)
