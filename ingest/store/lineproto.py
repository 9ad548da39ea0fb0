"""InfluxDB line protocol for Vigil's schema, built as plain strings (the ingest hot path).

No per-reading objects: a message's tag prefix is built once, each reading is one f-string,
and metric/unit escapes are cached because a fleet repeats a small set of them.

Invariants:
- one reading is one line ``<metric>,device=<d>,site=<s>[,unit=<u>] <field>=<v>[,quality="q"] <ts_ms>``
  (tags sorted by key, as InfluxDB prefers). The field name carries the value's type: floats in
  ``value``, booleans in ``value_bool``, strings in ``value_text``; so a metric that one device
  reports as a number and another as text never meets InfluxDB's "field type conflict" (a
  partial write that would turn a whole batch into a non-retryable error);
- ``quality`` is written only when it is not "good" (most readings are good; an absent
  field reads back as good);
- string field values escape only ``\\`` and ``"`` (the rule every InfluxDB version shares);
  newlines, tabs and other characters go in raw, which the 1.x/2.x parser accepts inside
  quotes and the 3.x parser splits lines the same way;
- tag values escape ``,`` ``=`` and space. A backslash or control character cannot be
  written in a tag value on every version (1.x keeps ``\\\\`` doubled and refuses a trailing
  ``\\``; 3.x refuses a trailing ``\\``; no version takes a newline), so in a unit they are
  replaced by U+FFFD: the unit is a label for people, and the reading itself is unaffected;
- a metric name that does not match ``wire.payloads.METRIC_PATTERN`` (possible only for a
  Reading built in code, since decoding checks it) raises ``ValueError`` rather than being
  rewritten, so what is stored is always what was sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from wire.payloads import METRIC_PATTERN, Reading

# InfluxDB stores time as int64 nanoseconds: 2262-04-11T23:47:16.854Z is the last
# representable millisecond, while the wire contract accepts edge clocks up to 2286.
MAX_INFLUX_TS_MS: Final = 9_223_372_036_854

_METRIC_RE: Final = re.compile(METRIC_PATTERN)
_TAG_ESCAPES: Final = str.maketrans(
    {",": "\\,", "=": "\\=", " ": "\\ ", "\\": "\ufffd", "\x7f": "\ufffd"}
    | {chr(c): "\ufffd" for c in range(0x20)}
)
_STRING_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"'})
_CACHE_LIMIT: Final = 100_000  # metric names and units repeat; this only bounds a pathological fleet

_measurements: dict[str, str] = {}
_unit_tags: dict[str | None, str] = {None: ""}


def tag_value(value: str) -> str:
    """A tag value as line protocol (see the module docstring for what cannot be kept)."""
    return value.translate(_TAG_ESCAPES)


def string_field(value: str) -> str:
    """A string field value, quoted."""
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def measurement(metric: str) -> str:
    """The measurement for a metric name; ValueError if the name breaks the wire contract."""
    found = _measurements.get(metric)
    if found is not None:
        return found
    if not isinstance(metric, str) or not _METRIC_RE.fullmatch(metric):
        raise ValueError(f"metric name {str(metric)[:80]!r} does not match {METRIC_PATTERN}")
    if len(_measurements) >= _CACHE_LIMIT:
        _measurements.clear()
    _measurements[metric] = metric  # the pattern admits nothing that needs escaping
    return metric


def unit_tag(unit: str | None) -> str:
    """``,unit=<escaped>``, or nothing when the reading has no unit."""
    found = _unit_tags.get(unit)
    if found is not None:
        return found
    text = f",unit={tag_value(unit)}" if unit else ""
    if len(_unit_tags) >= _CACHE_LIMIT:
        _unit_tags.clear()
        _unit_tags[None] = ""
    _unit_tags[unit] = text
    return text


def series_tags(site: str, device: str) -> str:
    """The tag part shared by every reading of one device (after the measurement)."""
    return f",device={tag_value(device)},site={tag_value(site)}"


def reading_lines(site: str, device: str, readings: Iterable[Reading], out: list[str]) -> int:
    """Append one line per reading to ``out``; return the newest ``ts_ms`` among them.

    ValueError if a reading cannot be stored as sent (bad metric name, a time past InfluxDB's
    range, a value of no wire type); nothing is appended for later readings then.
    """
    tags = series_tags(site, device)
    meas_get, unit_get = _measurements.get, _unit_tags.get
    newest = 0
    append = out.append
    for r in readings:
        v = r.value
        t = type(v)
        if t is float:
            field = f"value={v!r}"
        elif t is bool:
            field = "value_bool=true" if v else "value_bool=false"
        elif t is str:
            field = "value_text=" + string_field(v)  # type: ignore[arg-type]
        elif t is int:  # a Reading built in code; decoding makes numbers floats
            field = f"value={float(v)!r}"
        else:
            raise ValueError(f"value of {r.metric!r} is a {t.__name__}, not a float, bool or str")
        if r.quality != "good":
            field += ",quality=" + string_field(r.quality)
        ts = r.ts_ms
        newest = max(newest, ts)
        meas = meas_get(r.metric) or measurement(r.metric)
        unit = unit_get(r.unit)
        if unit is None:
            unit = unit_tag(r.unit)
        append(f"{meas}{tags}{unit} {field} {ts}")
    if newest > MAX_INFLUX_TS_MS:
        raise ValueError(
            f"a reading of {site}/{device} has ts_ms {newest}, after {MAX_INFLUX_TS_MS} "
            "(2262-04-11), the last time InfluxDB can store: the device's clock is wrong"
        )
    return newest


def device_line(site: str, device: str, agent: str, last_seen_ms: int, day_start_ms: int) -> str:
    """The day's point of a device in ``_vigil_device`` (time: start of the UTC day, ms)."""
    return (
        f"_vigil_device{series_tags(site, device)} "
        f"agent={string_field(agent)},last_seen_ms={last_seen_ms}i {day_start_ms}"
    )


def status_line(site: str, agent: str, state: str, boot: int, reason: str, ts_ms: int) -> str:
    """An agent status in ``_vigil_agent_status`` (time: the status's ``ts_ms``, ms)."""
    return (
        f"_vigil_agent_status,agent={tag_value(agent)},site={tag_value(site)} "
        f"boot={boot}i,reason={string_field(reason)},state={string_field(state)} {ts_ms}"
    )


def health_line(site: str, agent: str, payload_json: str, ts_ms: int) -> str:
    """An agent health report in ``_vigil_agent_health`` (time: the report's ``ts_ms``, ms)."""
    return (
        f"_vigil_agent_health,agent={tag_value(agent)},site={tag_value(site)} "
        f"payload={string_field(payload_json)} {ts_ms}"
    )


def accounting_line(site: str, agent: str, worker: str, payload_json: str, ts_ms: int) -> str:
    """One worker's account of one agent in ``_vigil_ingest_accounting`` (time in ms)."""
    return (
        f"_vigil_ingest_accounting,agent={tag_value(agent)},site={tag_value(site)},"
        f"worker={tag_value(worker)} payload={string_field(payload_json)} {ts_ms}"
    )


def dead_letter_line(topic: str, payload_field: str, payload: str, reason: str, ts_ns: int,
                     code: str = "") -> str:
    """A dead letter in ``_vigil_dead_letter`` (time in ns; ``payload_field`` names the encoding)."""
    return (
        f"_vigil_dead_letter code={string_field(code)},{payload_field}={string_field(payload)},"
        f"reason={string_field(reason)},topic={string_field(topic)} {ts_ns}"
    )
