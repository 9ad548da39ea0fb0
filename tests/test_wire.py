"""Properties of the wire contract: topics and payloads round-trip, and bad input raises only WireError.

Also the settings loader every role uses (``RoleSettings.load``): precedence of overrides,
environment and TOML file, and errors that name the setting both ways.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from wire import (
    AlarmTopic,
    CommandTopic,
    ConfigError,
    Event,
    EventTopic,
    Message,
    MqttSettings,
    Reading,
    RoleSettings,
    Status,
    StatusTopic,
    Telemetry,
    TelemetryTopic,
    WireError,
    check_id,
    decode_event,
    decode_status,
    decode_telemetry,
    encode,
    parse_topic,
)
from wire.payloads import MAX_PAYLOAD_BYTES, MAX_TS_MS, METRIC_PATTERN, MIN_TS_MS
from wire.topics import ID_PATTERN

# -- strategies ---------------------------------------------------------------------------

ids = st.from_regex(ID_PATTERN, fullmatch=True)
devices = ids.filter(lambda d: d != "cmd")
topics = st.one_of(
    st.builds(StatusTopic, site=ids, agent=ids),
    st.builds(TelemetryTopic, site=ids, agent=ids, device=devices),
    st.builds(EventTopic, site=ids, agent=ids, device=devices),
    st.builds(CommandTopic, site=ids, agent=ids, name=ids),
    st.builds(AlarmTopic, site=ids, device=devices),
)
# Strings that are not ids: empty, too long, with MQTT wildcards/separators, leading '_',
# trailing newline (Python's `$` would let that through), non-ASCII.
bad_ids = st.one_of(
    st.just(""),
    st.just("a" * 65),
    st.just("_alarm"),
    st.just("dev\n"),
    ids.flatmap(lambda i: st.sampled_from([f"{i}/x", f"{i}+", f"#{i}", f"{i} x", f"{i}é", f"_{i}"])),
    st.text(min_size=1, max_size=80).filter(lambda s: not _fullmatch(ID_PATTERN, s)),
)


def _fullmatch(pattern: str, s: str) -> bool:
    import re

    return re.fullmatch(pattern, s) is not None


ts = st.integers(MIN_TS_MS, MAX_TS_MS)
seqs = st.integers(0, 2**63 - 1)
metrics = st.from_regex(METRIC_PATTERN.removeprefix("^").removesuffix("$"), fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(max_size=1024)
values = st.one_of(finite, st.booleans(), texts)
units = st.none() | st.text(min_size=1, max_size=32)
qualities = st.sampled_from(["good", "uncertain", "bad"])
readings = st.builds(Reading, ts_ms=ts, metric=metrics, value=values, unit=units, quality=qualities)
telemetry = st.builds(
    Telemetry, v=st.just(1), seq=seqs, readings=st.lists(readings, min_size=1, max_size=8).map(tuple)
)
events = st.builds(
    Event,
    v=st.just(1),
    seq=seqs,
    ts_ms=ts,
    kind=metrics,
    severity=st.sampled_from(["info", "warning", "minor", "major", "critical"]),
    message=texts,
    data=st.dictionaries(metrics, values, max_size=8),
)
statuses = st.builds(
    Status,
    v=st.just(1),
    state=st.sampled_from(["online", "offline"]),
    ts_ms=ts,
    boot=seqs,
    reason=texts,
)
messages = st.one_of(telemetry, events, statuses)

# Any JSON value, including what strict decoders must refuse: huge ints, NaN/Infinity
# tokens (not JSON at all), floats that overflow, deep-ish nesting.
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**200),
    st.integers(min_value=-(2**200), max_value=-(2**63) + 2),
    st.floats(),
    st.text(max_size=40),
    ts,
    st.sampled_from(["good", "online", "info", "", "temp"]),
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=40,
)
DECODERS = (decode_telemetry, decode_event, decode_status)
DECODE_AS: dict[type, Callable[[bytes], Message]] = {
    Telemetry: decode_telemetry,
    Event: decode_event,
    Status: decode_status,
}


def _decode_all(payload: bytes) -> None:
    """Feed ``payload`` to every decoder; anything but a value or WireError fails the test."""
    for decode_fn in DECODERS:
        try:
            decode_fn(payload)
        except WireError as e:
            assert str(e), "a WireError must say what is wrong"


def _same_types(a: object, b: object) -> None:
    """Equality alone would hide a bool that came back as a float (True == 1.0)."""
    if isinstance(a, msgspec.Struct):
        assert type(a) is type(b)
        for field in a.__struct_fields__:
            _same_types(getattr(a, field), getattr(b, field))
    elif isinstance(a, tuple | list):
        assert isinstance(b, tuple | list)
        for x, y in zip(a, b, strict=True):
            _same_types(x, y)
    elif isinstance(a, dict):
        assert isinstance(b, dict)
        for k in a:
            _same_types(a[k], b[k])
    else:
        assert type(a) is type(b), (a, b)


# -- topics -------------------------------------------------------------------------------


@given(topics)
def test_parse_topic_inverts_format(topic: Any) -> None:
    assert parse_topic(topic.format()) == topic


@given(st.text(max_size=200))
def test_parse_topic_raises_only_wire_error(text: str) -> None:
    try:
        topic = parse_topic(text)
    except WireError:
        return
    assert topic.format() == text


@given(st.lists(st.one_of(ids, bad_ids, st.sampled_from(["cmd", "_alarm", "status", "telemetry", "event"])),
                min_size=0, max_size=6))
def test_parse_topic_of_any_segments(segments: list[str]) -> None:
    text = "/".join(["vigil", "v1", *segments])
    try:
        topic = parse_topic(text)
    except WireError:
        return
    assert topic.format() == text


@given(bad_ids)
def test_invalid_ids_raise_wire_error(bad: str) -> None:
    for make in (
        lambda: check_id("site", bad),
        lambda: StatusTopic(site=bad, agent="a1"),
        lambda: StatusTopic(site="s1", agent=bad),
        lambda: TelemetryTopic(site="s1", agent="a1", device=bad),
        lambda: EventTopic(site="s1", agent="a1", device=bad),
        lambda: CommandTopic(site="s1", agent="a1", name=bad),
        lambda: AlarmTopic(site=bad, device="d1"),
    ):
        with pytest.raises(WireError):
            make()


def test_cmd_is_not_a_device() -> None:
    with pytest.raises(WireError, match="reserved"):
        TelemetryTopic(site="s", agent="a", device="cmd")
    assert parse_topic("vigil/v1/s/a/cmd/telemetry") == CommandTopic(site="s", agent="a", name="telemetry")


def test_non_string_topic_and_id() -> None:
    with pytest.raises(WireError, match="must be a string"):
        parse_topic(b"vigil/v1/s/a/status")  # type: ignore[arg-type]
    with pytest.raises(WireError, match="must be a string"):
        check_id("site", 5)  # type: ignore[arg-type]


# -- payloads -----------------------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_decode_inverts_encode(message: Telemetry | Event | Status) -> None:
    back = DECODE_AS[type(message)](encode(message))
    assert back == message
    _same_types(message, back)


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_wire_error(payload: bytes) -> None:
    _decode_all(payload)


@given(json_values)
def test_arbitrary_json_raises_only_wire_error(value: Any) -> None:
    # allow_nan writes NaN/Infinity tokens, which strict JSON readers must refuse cleanly.
    _decode_all(json.dumps(value, allow_nan=True).encode())


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_valid_message_with_one_field_replaced_raises_only_wire_error(
    message: Telemetry | Event | Status, data: st.DataObject
) -> None:
    """Near-misses reach the field validators that random JSON rarely gets to."""
    doc = json.loads(encode(message))
    target = doc
    if isinstance(message, Telemetry) and data.draw(st.booleans()):
        target = data.draw(st.sampled_from(doc["readings"]))
    key = data.draw(st.sampled_from(sorted(target)) | st.text(max_size=8))
    target[key] = data.draw(json_values)
    _decode_all(json.dumps(doc, allow_nan=True).encode())


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000,
        b'{"v":' * 100_000,
        b'{"v":1,"seq":0,"readings":[' + b"[" * 50_000,
        b'{"v":1,"seq":1e999,"readings":[]}',
        b'{"v":1,"seq":' + b"9" * 5000 + b',"readings":[]}',
        b'{"v":1,"seq":0,"ts_ms":1700000000000,"kind":"x","severity":"info","data":{"k":1e999}}',
        b"\xef\xbb\xbf{}",
        b"\x00",
        b"",
        b" " * 10,
    ],
)
def test_hostile_payloads_raise_only_wire_error(payload: bytes) -> None:
    _decode_all(payload)


def test_non_bytes_and_oversized_payloads() -> None:
    with pytest.raises(WireError, match="must be bytes, got str"):
        decode_status("{}")  # type: ignore[arg-type]
    with pytest.raises(WireError, match=f"over the {MAX_PAYLOAD_BYTES} limit"):
        decode_telemetry(b" " * (MAX_PAYLOAD_BYTES + 1))


READING: dict[str, Any] = {"ts_ms": 1_700_000_000_000, "metric": "temp", "value": 21.5}


def _telemetry(*readings: dict[str, Any], **top: Any) -> bytes:
    return json.dumps({"v": 1, "seq": 1, "readings": list(readings), **top}).encode()


@pytest.mark.parametrize(
    ("payload", "path", "problem"),
    [
        (_telemetry(READING, {**READING, "ts_ms": "x"}), "$.readings[1].ts_ms", "Expected `int`, got `str`"),
        (_telemetry({**READING, "ts_ms": 1_000}), "$.readings[0].ts_ms", ">= 1000000000000"),
        (_telemetry({**READING, "metric": "temp\n"}), "$.readings[0].metric", "matching regex"),
        (_telemetry({**READING, "metric": "9lives"}), "$.readings[0].metric", "matching regex"),
        # json.dumps would write Infinity; send the overflowing literal itself.
        (_telemetry({**READING, "value": 0.5}).replace(b"0.5", b"1e999"), "$.readings[0].value", "range"),
        (_telemetry({**READING, "value": None}), "$.readings[0].value", "got `null`"),
        (_telemetry({**READING, "quality": "great"}), "$.readings[0].quality", "Invalid enum value 'great'"),
        (_telemetry({**READING, "colour": "red"}), "$.readings[0]", "unknown field `colour`"),
        (_telemetry(READING, seq=-1), "$.seq", ">= 0"),
        (_telemetry(READING, v=2), "$.v", "2"),
        (_telemetry(), "$.readings", "length >= 1"),
    ],
)
def test_telemetry_errors_name_the_field(payload: bytes, path: str, problem: str) -> None:
    with pytest.raises(WireError) as info:
        decode_telemetry(payload)
    message = str(info.value)
    assert message.startswith("invalid telemetry"), message
    assert problem in message, message
    assert f"at `{path}`" in message, message


def test_event_and_status_errors_name_the_field() -> None:
    base = {"v": 1, "seq": 1, "ts_ms": 1_700_000_000_000, "kind": "door_forced", "severity": "major"}
    with pytest.raises(WireError, match=r"at `\$\.severity`"):
        decode_event(json.dumps({**base, "severity": "apocalyptic"}).encode())
    with pytest.raises(WireError, match=r"at `key` in `\$\.data`"):
        decode_event(json.dumps({**base, "data": {"bad key": 1}}).encode())
    with pytest.raises(WireError, match=r"Object missing required field `ts_ms`"):
        decode_status(b'{"v":1,"state":"online"}')
    with pytest.raises(WireError, match=r"at `\$\.state`"):
        decode_status(b'{"v":1,"state":"asleep","ts_ms":1700000000000}')
    with pytest.raises(WireError, match=r"not valid JSON"):
        decode_status(b'{"v":1,')


def test_reading_refuses_non_finite_values() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            Reading(ts_ms=1_700_000_000_000, metric="t", value=bad)


def test_integer_json_values_become_floats() -> None:
    t = decode_telemetry(_telemetry({**READING, "value": 3}, {**READING, "ts_ms": READING["ts_ms"] + 1,
                                                               "value": True}))
    assert [type(r.value) for r in t.readings] == [float, bool]


# -- settings -------------------------------------------------------------------------------


class DemoSettings(RoleSettings):
    section: ClassVar[str] = "demo"
    model_config = SettingsConfigDict(env_prefix="VIGIL_TESTDEMO_")

    port: int = Field(8080, ge=1, le=65535)
    name: str = "demo"
    mqtt: MqttSettings = Field(default_factory=MqttSettings)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.upper().startswith("VIGIL_TESTDEMO_"):
            monkeypatch.delenv(key)
    return monkeypatch


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vigil.toml"
    path.write_text(text)
    return path


def test_settings_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = DemoSettings.load()
    assert (s.port, s.name, s.mqtt.port) == (8080, "demo", 1883)


def test_settings_file_then_env_then_overrides(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _toml(
        tmp_path, '[demo]\nport = 9001\nname = "from-file"\n[demo.mqtt]\nhost = "broker"\nport = 1884\n'
    )
    from_file = DemoSettings.load(path)
    assert (from_file.port, from_file.name, from_file.mqtt.host, from_file.mqtt.port) == (
        9001, "from-file", "broker", 1884,
    )  # fmt: skip

    clean_env.setenv("VIGIL_TESTDEMO_PORT", "9002")
    clean_env.setenv("VIGIL_TESTDEMO_MQTT__PORT", "1885")
    env_over_file = DemoSettings.load(path)
    assert env_over_file.port == 9002
    assert env_over_file.name == "from-file"
    # Nested values merge key by key: the file's host stays, the environment's port wins.
    assert (env_over_file.mqtt.host, env_over_file.mqtt.port) == ("broker", 1885)

    assert DemoSettings.load(path, port=9003).port == 9003


def test_settings_ignore_other_sections(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _toml(tmp_path, "[other]\nport = 1\n[demo]\nname = 'x'\n")
    assert DemoSettings.load(path).port == 8080


def test_bad_env_value_names_env_var_and_file_key(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _toml(tmp_path, "[demo]\n")
    clean_env.setenv("VIGIL_TESTDEMO_PORT", "eighty")
    with pytest.raises(ConfigError) as info:
        DemoSettings.load(path)
    message = str(info.value)
    assert "VIGIL_TESTDEMO_PORT" in message
    assert f"demo.port in {path}" in message
    assert "'eighty'" in message


def test_bad_file_value_names_env_var_and_file_key(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _toml(tmp_path, "[demo.mqtt]\nport = 70000\n")
    with pytest.raises(ConfigError) as info:
        DemoSettings.load(path)
    message = str(info.value)
    assert "VIGIL_TESTDEMO_MQTT__PORT" in message
    assert f"demo.mqtt.port in {path}" in message
    assert "less than or equal to 65535" in message


def test_unknown_file_key_is_an_error(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _toml(tmp_path, "[demo]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"demo\.prot"):
        DemoSettings.load(path)


def test_missing_or_malformed_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        DemoSettings.load(tmp_path / "nope.toml")
    bad = _toml(tmp_path, "[demo\nport = \n")
    with pytest.raises(ConfigError, match=str(bad)):
        DemoSettings.load(bad)


def test_config_error_is_a_wire_error() -> None:
    assert issubclass(ConfigError, WireError)
    assert issubclass(WireError, ValueError)


def test_printable_ascii_ids_match_the_documented_rule() -> None:
    allowed = set(string.ascii_letters + string.digits + "_.-")
    for ch in map(chr, range(32, 127)):
        ok = _fullmatch(ID_PATTERN, "a" + ch)
        assert ok == (ch in allowed), ch


# -- agent link: acknowledgements, health, birth ------------------------------------------


def test_agent_level_topics_round_trip() -> None:
    from wire.topics import AckTopic, HealthTopic, ack_filter, health_filter

    for topic in (AckTopic("hq", "gw-1"), HealthTopic("hq", "gw-1")):
        assert parse_topic(topic.format()) == topic
    assert ack_filter("hq") == "vigil/v1/hq/+/ack"
    assert health_filter() == "vigil/v1/+/+/health"


def test_ack_round_trip_and_reversed_range() -> None:
    from wire.agent import Ack, decode_ack

    ack = Ack(v=1, worker="ingest-1", ts_ms=MIN_TS_MS, ranges=((1, 5), (9, 9)))
    assert decode_ack(encode(ack)) == ack
    assert ack.covers(3) and ack.covers(9) and not ack.covers(7)
    with pytest.raises(WireError, match=r"ack range \[5, 1\] is reversed"):
        decode_ack(b'{"v":1,"worker":"w","ts_ms":%d,"ranges":[[5,1]]}' % MIN_TS_MS)
    with pytest.raises(WireError, match="ranges"):
        decode_ack(b'{"v":1,"worker":"w","ts_ms":%d,"ranges":[]}' % MIN_TS_MS)


def test_health_and_birth_with_devices_round_trip() -> None:
    from wire.agent import AgentHealth, DeviceHealth, decode_health

    health = AgentHealth(
        v=1, ts_ms=MIN_TS_MS, boot=3, outbox_depth=2, outbox_bytes=300, oldest_unacked_age_s=1.5,
        dropped=0, poll_errors=4, publish_p99_s=0.02,
        devices={"pump-1": DeviceHealth(state="offline", since_ms=MIN_TS_MS, reason="timeout")},
    )
    assert decode_health(encode(health)) == health
    birth = Status(v=1, state="online", ts_ms=MIN_TS_MS, boot=3, version="1.2", devices={"pump-1": "pump"})
    assert decode_status(encode(birth)) == birth
    with pytest.raises(WireError, match="devices"):
        decode_status(b'{"v":1,"state":"online","ts_ms":%d,"devices":{"a/b":"pump"}}' % MIN_TS_MS)


def test_historical_flag_is_omitted_when_false() -> None:
    live = Telemetry(v=1, seq=1, readings=(Reading(ts_ms=MIN_TS_MS, metric="t", value=1.0),))
    assert b"historical" not in encode(live)
    old = Telemetry(v=1, seq=1, readings=live.readings, historical=True)
    assert decode_telemetry(encode(old)).historical is True
