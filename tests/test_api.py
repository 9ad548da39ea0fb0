"""The HTTP API on both stores: every route, exact round-trips, and every error case.

Each store-backed test runs twice, on the embedded file store and on a fresh database of
the real InfluxDB (tests/services.py). Data goes in through the store's own ``write`` and
``write_status`` with wire types, as ingest writes it; the API is built with
``create_app(settings)`` as servers build it, with only the clock overridden so that
presence and default ranges are deterministic.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from api import deps
from api.errors import explain_validation
from api.main import create_app
from api.presence import device_presence
from api.schemas import ReadingOut, ReadingsOut
from api.server import run
from api.settings import ApiSettings
from api.timerange import (
    MAX_MS,
    SECONDS_LOOKALIKE,
    QueryError,
    bucket_count,
    format_step,
    iso,
    nice_step,
    parse_step,
    parse_time,
    window,
)
from ingest.store import AgentState, DeadLetter, DeviceSeen, RawReading, Store, StoreSettings, open_store
from tests.services import auth_headers, free_port
from wire import ConfigError, Reading, Status, StatusTopic, Telemetry, TelemetryTopic
from wire.payloads import Quality

NOW = 1_717_243_200_000  # 2024-06-01T12:00:00Z, a whole hour, so buckets line up
MIN = 60_000
OFFLINE_AFTER_S = 60.0

# -- the fleet written to the store --------------------------------------------------------

# Floats that a lossy path (str(float) truncation, float32, JSON rounding) would change.
EXTREMES = [0.1 + 0.2, 1 / 3, 1e-300, -1.5e300, 5e-324, 2.0**53, 123456789.12345679, -0.5, 0.0, 1e22]
TEXTS = ["idle", 'says "hi", a=b c\\d', "Grüße ✓ 温度", "", "x" * 1024]
QUALITIES: list[Quality] = ["good", "uncertain", "bad"]


def _temp(i: int) -> float:
    return 20 + (i % 7) * 0.25 + i * 0.01


@dataclass(frozen=True)
class Sent:
    ts_ms: int
    value: float | bool | str
    quality: Quality


def _ahu_readings() -> dict[str, list[Sent]]:
    """hq/ahu-1: every 10 s over the last 30 min, ending 10 s before NOW."""
    start = NOW - 30 * MIN
    sent: dict[str, list[Sent]] = {"temp": [], "fan_on": [], "mode": [], "extreme": []}
    for i in range(180):
        ts = start + i * 10_000
        sent["temp"].append(Sent(ts, _temp(i), QUALITIES[i % 3]))
        sent["fan_on"].append(Sent(ts, i % 2 == 0, "good"))
        sent["mode"].append(Sent(ts, TEXTS[i % len(TEXTS)], "good"))
        if i < len(EXTREMES):
            sent["extreme"].append(Sent(ts, EXTREMES[i], "good"))
    return sent


AHU = _ahu_readings()


def _telemetry(seq: int, readings: list[Reading]) -> Telemetry:
    return Telemetry(v=1, seq=seq, readings=tuple(readings))


def _populate(store: Store) -> None:
    store.write_status(
        StatusTopic("hq", "agent-1"), Status(v=1, state="online", ts_ms=NOW - 3_600_000, boot=3)
    )
    store.write_status(
        StatusTopic("hq", "agent-2"),
        Status(v=1, state="offline", ts_ms=NOW - 600_000, boot=7, reason="connection lost"),
    )
    store.write_status(
        StatusTopic("mall", "agent-3"), Status(v=1, state="online", ts_ms=NOW - 60_000, boot=1)
    )
    ahu = [
        Reading(
            ts_ms=s.ts_ms,
            metric=metric,
            value=s.value,
            quality=s.quality,
            unit="°C" if metric == "temp" else None,
        )
        for metric, sent in AHU.items()
        for s in sent
    ]
    batch = [
        # Split in two messages, as an agent would over time.
        (TelemetryTopic("hq", "agent-1", "ahu-1"), _telemetry(1, ahu[: len(ahu) // 2])),
        (TelemetryTopic("hq", "agent-1", "ahu-1"), _telemetry(2, ahu[len(ahu) // 2 :])),
        (
            TelemetryTopic("hq", "agent-2", "door-1"),
            _telemetry(1, [Reading(ts_ms=NOW - 5 * MIN, metric="open", value=False)]),
        ),
        (
            TelemetryTopic("hq", "agent-1", "pump-1"),
            _telemetry(3, [Reading(ts_ms=NOW - 10 * MIN, metric="rpm", value=1450.0)]),
        ),
        (
            TelemetryTopic("mall", "agent-3", "esc-1"),
            _telemetry(1, [Reading(ts_ms=NOW - 5_000, metric="speed", value=0.5)]),
        ),
        (
            TelemetryTopic("hq", "agent-9", "ghost-1"),
            _telemetry(1, [Reading(ts_ms=NOW - 1_000, metric="x", value=1.0)]),
        ),
    ]
    store.write(batch)
    store.write_dead_letters(
        [
            DeadLetter(received_ms=NOW - 3_000, topic="vigil/v1/hq/agent-1/ahu-1/telemetry",
                       payload=b'{"v":2}', reason="invalid telemetry: Invalid enum value 2 - at `$.v`"),
            DeadLetter(received_ms=NOW - 2_000, topic="vigil/v1/hq/x/y/z/w",
                       payload=b"\xff\x00abc\xe2\x82", reason="topic matches no Vigil topic"),
            DeadLetter(received_ms=NOW - 1_000, topic="vigil/v1/hq/agent-1/ahu-1/telemetry",
                       payload=b"\xe2\x82\xac" * 3000, reason="telemetry payload is not valid JSON"),
        ]
    )  # fmt: skip


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(params=["embedded", "influx"])
def store_settings(request: pytest.FixtureRequest) -> StoreSettings:
    settings: StoreSettings = request.getfixturevalue(f"{request.param}_settings")
    return settings


@pytest.fixture
def populated(store_settings: StoreSettings) -> StoreSettings:
    store = open_store(store_settings)
    try:
        _populate(store)
    finally:
        store.close()
    return store_settings


def _api_settings(store: StoreSettings, **kw: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "store": store,
        "offline_after_s": OFFLINE_AFTER_S,
        "max_readings": 1_000,
        "dead_letter_payload_bytes": 64,
        **kw,
    }
    return ApiSettings.load(**values)


def _client(settings: ApiSettings, store: Store | None = None) -> TestClient:
    app = create_app(settings, store)
    app.dependency_overrides[deps.now_ms] = lambda: NOW
    # every route but /healthz needs a caller: an admin token made in the API's database
    return TestClient(app, raise_server_exceptions=False, headers=auth_headers(settings.database_url))


@pytest.fixture
def client(populated: StoreSettings) -> Iterator[TestClient]:
    with _client(_api_settings(populated)) as c:
        yield c


def _detail(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"detail"}, body
    detail = body["detail"]
    assert isinstance(detail, str) and detail.endswith("."), detail
    return detail


# -- health, agents, devices -----------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_agents(client: TestClient) -> None:
    r = client.get("/api/v1/agents")
    assert r.status_code == 200
    assert r.json()["agents"] == [
        {"site": "hq", "agent": "agent-1", "state": "online", "boot": 3, "ts_ms": NOW - 3_600_000,
         "time": "2024-06-01T11:00:00.000Z", "reason": ""},
        {"site": "hq", "agent": "agent-2", "state": "offline", "boot": 7, "ts_ms": NOW - 600_000,
         "time": "2024-06-01T11:50:00.000Z", "reason": "connection lost"},
        {"site": "mall", "agent": "agent-3", "state": "online", "boot": 1, "ts_ms": NOW - 60_000,
         "time": "2024-06-01T11:59:00.000Z", "reason": ""},
    ]  # fmt: skip
    only_mall = client.get("/api/v1/agents", params={"site": "mall"}).json()["agents"]
    assert [a["agent"] for a in only_mall] == ["agent-3"]


def test_devices_with_presence(client: TestClient) -> None:
    r = client.get("/api/v1/devices")
    assert r.status_code == 200
    by_id = {(d["site"], d["device"]): d for d in r.json()["devices"]}
    assert list(by_id) == [
        ("hq", "ahu-1"),
        ("hq", "door-1"),
        ("hq", "ghost-1"),
        ("hq", "pump-1"),
        ("mall", "esc-1"),
    ]

    ahu = by_id["hq", "ahu-1"]
    assert (ahu["agent"], ahu["last_seen_ms"], ahu["last_seen"]) == (
        "agent-1",
        NOW - 10_000,
        "2024-06-01T11:59:50.000Z",
    )
    assert (ahu["online"], ahu["state"]) == (True, "online")
    assert "10 s ago" in ahu["reason"]

    door = by_id["hq", "door-1"]
    assert (door["online"], door["state"]) == (False, "offline")
    assert "agent-2" in door["reason"] and "connection lost" in door["reason"]

    pump = by_id["hq", "pump-1"]
    assert (pump["online"], pump["state"]) == (False, "stale")
    assert "10 min ago" in pump["reason"] and "silent" in pump["reason"]

    ghost = by_id["hq", "ghost-1"]
    assert (ghost["online"], ghost["state"]) == (False, "offline")
    assert "no status" in ghost["reason"]

    assert by_id["mall", "esc-1"]["state"] == "online"


def test_device_filters(client: TestClient) -> None:
    def ids(**params: str) -> list[str]:
        r = client.get("/api/v1/devices", params=params)
        assert r.status_code == 200, r.text
        return [d["device"] for d in r.json()["devices"]]

    assert ids(site="mall") == ["esc-1"]
    assert ids(agent="agent-1") == ["ahu-1", "pump-1"]
    assert ids(site="hq", agent="agent-2") == ["door-1"]
    assert ids(site="nowhere") == []
    assert "site id 'a/b' is invalid" in _detail(client.get("/api/v1/devices", params={"site": "a/b"}), 422)
    assert "agent id '_x' is invalid" in _detail(client.get("/api/v1/devices", params={"agent": "_x"}), 422)


def test_device_detail(client: TestClient) -> None:
    r = client.get("/api/v1/devices/hq/ahu-1")
    assert r.status_code == 200
    body = r.json()
    assert body["metrics"] == ["extreme", "fan_on", "mode", "temp"]
    assert body["state"] == "online"
    assert body["agent_status"]["boot"] == 3
    ghost = client.get("/api/v1/devices/hq/ghost-1").json()
    assert ghost["agent_status"] is None and ghost["metrics"] == ["x"]


def test_unknown_and_invalid_device(client: TestClient) -> None:
    detail = _detail(client.get("/api/v1/devices/hq/nope"), 404)
    assert "No device 'nope' has been seen at site 'hq'" in detail and "/api/v1/devices" in detail
    # Known device id, wrong site.
    assert "at site 'mall'" in _detail(client.get("/api/v1/devices/mall/ahu-1"), 404)
    assert "site id '-hq' is invalid" in _detail(client.get("/api/v1/devices/-hq/ahu-1"), 422)
    assert "device id 'a+b' is invalid" in _detail(
        client.get(f"/api/v1/devices/hq/{quote('a+b')}/series?metric=t"), 422
    )
    assert "device id" in _detail(client.get("/api/v1/devices/hq/" + "d" * 65 + "/readings?metric=t"), 422)


# -- readings ------------------------------------------------------------------------------


def _readings(client: TestClient, metric: str, **params: Any) -> dict[str, Any]:
    r = client.get("/api/v1/devices/hq/ahu-1/readings", params={"metric": metric, **params})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    # The route writes its JSON with msgspec, not through the model: hold it to the model.
    ReadingsOut.model_validate(body)
    return body


def test_raw_readings_have_the_documented_fields() -> None:
    assert [f.name for f in dataclasses.fields(RawReading)] == list(ReadingOut.model_fields)


@pytest.mark.parametrize("metric", ["temp", "fan_on", "mode", "extreme"])
def test_readings_round_trip_exactly(client: TestClient, metric: str) -> None:
    body = _readings(client, metric, start=NOW - 3_600_000, end=NOW)
    got = [(r["ts_ms"], r["value"], r["quality"]) for r in body["readings"]]
    want = [(s.ts_ms, s.value, s.quality) for s in AHU[metric]]
    assert got == want
    # == would accept True for 1.0 and 0.0 for -0.0; the types must survive too.
    assert [type(r["value"]) for r in body["readings"]] == [type(s.value) for s in AHU[metric]]
    for r, s in zip(body["readings"], AHU[metric], strict=True):
        if isinstance(s.value, float):
            assert math.copysign(1, r["value"]) == math.copysign(1, s.value)
    assert (body["truncated"], body["next_start_ms"]) == (False, None)
    assert (body["start"], body["end"]) == ("2024-06-01T11:00:00.000Z", "2024-06-01T12:00:00.000Z")


def test_readings_range_is_half_open_and_defaults_to_the_last_hour(client: TestClient) -> None:
    temps = AHU["temp"]
    body = _readings(client, "temp", start=temps[10].ts_ms, end=temps[20].ts_ms)
    assert [r["ts_ms"] for r in body["readings"]] == [s.ts_ms for s in temps[10:20]]
    default = _readings(client, "temp")
    assert (default["start_ms"], default["end_ms"]) == (NOW - 3_600_000, NOW)
    assert len(default["readings"]) == 180
    only_end = _readings(client, "temp", end=temps[5].ts_ms)
    assert only_end["start_ms"] == temps[5].ts_ms - 3_600_000
    assert len(only_end["readings"]) == 5


def test_readings_pages(client: TestClient) -> None:
    seen: list[int] = []
    start: int = NOW - 3_600_000
    pages = 0
    while True:
        body = _readings(client, "temp", start=start, end=NOW, limit=50)
        seen += [r["ts_ms"] for r in body["readings"]]
        pages += 1
        if not body["truncated"]:
            assert body["next_start_ms"] is None
            break
        assert len(body["readings"]) == 50
        start = body["next_start_ms"]
    assert pages == 4
    assert seen == [s.ts_ms for s in AHU["temp"]]
    exact = _readings(client, "temp", start=NOW - 3_600_000, end=NOW, limit=180)
    assert (len(exact["readings"]), exact["truncated"]) == (180, False)


def test_readings_errors(client: TestClient) -> None:
    url = "/api/v1/devices/hq/ahu-1/readings"
    assert _detail(client.get(url), 422) == "query parameter 'metric' is required."
    detail = _detail(client.get(url, params={"metric": "temp", "limit": "many"}), 422)
    assert "query parameter 'limit'" in detail and "integer" in detail and "'many'" in detail
    assert "greater than or equal to 1" in _detail(
        client.get(url, params={"metric": "temp", "limit": 0}), 422
    )
    detail = _detail(client.get(url, params={"metric": "temp", "limit": 1_001}), 422)
    assert "limit=1001 is over the maximum of 1000" in detail and "next_start_ms" in detail
    detail = _detail(client.get(url, params={"metric": "humidity"}), 404)
    assert "has no metric 'humidity'; its metrics are: extreme, fan_on, mode, temp" in detail
    assert "not a valid metric name" in _detail(client.get(url, params={"metric": "te mp"}), 422)
    assert "not a valid metric name" in _detail(client.get(url, params={"metric": "temp\n"}), 422)


# -- series ----------------------------------------------------------------------------------


def _series(client: TestClient, metric: str = "temp", **params: Any) -> dict[str, Any]:
    r = client.get("/api/v1/devices/hq/ahu-1/series", params={"metric": metric, **params})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _expected_buckets(start: int, end: int, step: int) -> list[tuple[int, float, float, float, int]]:
    groups: dict[int, list[float]] = {}
    for s in AHU["temp"]:
        if start <= s.ts_ms < end:
            groups.setdefault(s.ts_ms // step * step, []).append(float(s.value))
    return [(ts, sum(v) / len(v), min(v), max(v), len(v)) for ts, v in sorted(groups.items())]


def _check_buckets(body: dict[str, Any], want: list[tuple[int, float, float, float, int]]) -> None:
    got = body["buckets"]
    assert [b["ts_ms"] for b in got] == [w[0] for w in want]
    assert [b["time"] for b in got] == [iso(w[0]) for w in want]
    for b, (_, mean, lo, hi, n) in zip(got, want, strict=True):
        assert (b["min"], b["max"], b["count"]) == (lo, hi, n)
        assert b["mean"] == pytest.approx(mean, rel=1e-12)


def test_series_per_minute(client: TestClient) -> None:
    body = _series(client, start=NOW - 30 * MIN, end=NOW, step="1m")
    assert (body["step_ms"], body["step"]) == (MIN, "1m")
    want = _expected_buckets(NOW - 30 * MIN, NOW, MIN)
    assert len(want) == 30 and all(w[4] == 6 for w in want)
    _check_buckets(body, want)


def test_series_unaligned_range(client: TestClient) -> None:
    # [NOW-95 s, NOW-25 s) with 1-minute steps: epoch-aligned buckets at NOW-2 min (3
    # readings: -90, -80, -70 s) and NOW-1 min (4 readings: -60 .. -30 s).
    body = _series(client, start=NOW - 95_000, end=NOW - 25_000, step=60_000)
    want = _expected_buckets(NOW - 95_000, NOW - 25_000, MIN)
    assert [(w[0], w[4]) for w in want] == [(NOW - 2 * MIN, 3), (NOW - MIN, 4)]
    _check_buckets(body, want)


@pytest.mark.parametrize(
    ("step", "step_ms"),
    [("250ms", 250), ("30s", 30_000), ("5m", 300_000), ("1h30m", 5_400_000), ("7000", 7_000)],
)
def test_series_step_spellings(client: TestClient, step: str, step_ms: int) -> None:
    body = _series(client, start=NOW - 30 * MIN, end=NOW, step=step)
    assert body["step_ms"] == step_ms
    _check_buckets(body, _expected_buckets(NOW - 30 * MIN, NOW, step_ms))


def test_series_defaults(client: TestClient) -> None:
    body = _series(client)
    # The last hour, cut into at most 500 round steps: 10 s gives 360.
    assert (body["start_ms"], body["end_ms"], body["step"]) == (NOW - 3_600_000, NOW, "10s")
    _check_buckets(body, _expected_buckets(NOW - 3_600_000, NOW, 10_000))


def test_series_time_spellings(client: TestClient) -> None:
    ms = _series(client, start=NOW - 30 * MIN, end=NOW, step="5m")
    for start in ("2024-06-01T11:30:00Z", "2024-06-01T11:30:00.000+00:00", "2024-06-01T13:30:00+02:00"):
        assert _series(client, start=start, end=NOW, step="5m") == ms
    # A '+' not escaped in a query string arrives as a space; it is read as the offset's '+'.
    r = client.get(
        f"/api/v1/devices/hq/ahu-1/series?metric=temp&start=2024-06-01T13:30:00+02:00&end={NOW}&step=5m"
    )
    assert r.status_code == 200 and r.json() == ms


def test_series_of_non_numeric_metrics_is_empty(client: TestClient) -> None:
    assert _series(client, "mode", start=NOW - 30 * MIN, end=NOW, step="1m")["buckets"] == []


def test_series_errors(client: TestClient) -> None:
    url = "/api/v1/devices/hq/ahu-1/series"

    def err(status: int = 422, **params: Any) -> str:
        return _detail(client.get(url, params={"metric": "temp", **params}), status)

    detail = err(start=NOW, end=NOW)
    assert "start (2024-06-01T12:00:00.000Z) must be before end (2024-06-01T12:00:00.000Z)" in detail
    assert "end defaults to now" in err(start=NOW + MIN)
    assert "start='yesterday' is not a time" in err(start="yesterday")
    assert "no UTC offset" in err(start="2024-06-01T11:00:00")
    assert "end='1717243200.5' has a fraction" in err(end="1717243200.5")
    assert "milliseconds" in err(end=str(NOW * 1000))
    assert (
        f"looks like epoch seconds (1970-01-20 as milliseconds); times are epoch milliseconds: end={NOW}"
        in err(end=str(NOW // 1000))
    )
    # Every problem with start, end and step is told in one reply, start first.
    detail = err(start="soon", end="later", step="fast")
    assert detail.index("start='soon'") < detail.index("end='later'") < detail.index("step='fast'")
    assert "before 1970" in err(start="-5")
    assert "step='5 minutes' is not a duration" in err(step="5 minutes")
    assert "must be positive" in err(step="0s")
    assert "must be positive" in err(step="-1m")
    detail = err(start=NOW - 86_400_000, end=NOW, step="1s")
    assert "86400 buckets, over the maximum of 10000" in detail and "use step=10s or longer" in detail
    assert "has no metric 'hum'" in err(404, metric="hum")
    assert "No device 'nope'" in _detail(
        client.get("/api/v1/devices/hq/nope/series", params={"metric": "t"}), 404
    )
    # Parameter problems are reported before the store is asked about the device.
    assert "is not a time" in _detail(
        client.get("/api/v1/devices/hq/nope/series", params={"metric": "t", "start": "x"}), 422
    )


def test_series_bucket_limit_is_a_setting(populated: StoreSettings) -> None:
    with _client(_api_settings(populated, max_series_buckets=30)) as c:
        url = "/api/v1/devices/hq/ahu-1/series"
        ok = c.get(url, params={"metric": "temp", "start": NOW - 30 * MIN, "end": NOW, "step": "1m"})
        assert ok.status_code == 200
        detail = _detail(
            c.get(url, params={"metric": "temp", "start": NOW - 31 * MIN, "end": NOW, "step": "1m"}), 422
        )
        assert "31 buckets, over the maximum of 30" in detail and "use step=2m" in detail


# -- dead letters ----------------------------------------------------------------------------


def test_dead_letters(client: TestClient) -> None:
    r = client.get("/api/v1/dead-letters")
    assert r.status_code == 200
    letters = r.json()["dead_letters"]
    assert [d["received_ms"] for d in letters] == [NOW - 1_000, NOW - 2_000, NOW - 3_000]
    big, binary, small = letters
    assert small == {
        "received_ms": NOW - 3_000,
        "received": "2024-06-01T11:59:57.000Z",
        "topic": "vigil/v1/hq/agent-1/ahu-1/telemetry",
        "reason": "invalid telemetry: Invalid enum value 2 - at `$.v`",
        "payload": '{"v":2}',
        "payload_bytes": 7,
        "payload_truncated": False,
    }
    # Not UTF-8 (a lone 0xff, a cut-off euro sign): shown as escapes, the rest as text.
    assert binary["payload"] == "\\xff\x00abc\\xe2\\x82"
    # 9,000 bytes of euro signs cut at 64 bytes: 21 whole signs, then the first byte of one.
    assert (big["payload_bytes"], big["payload_truncated"]) == (9_000, True)
    assert big["payload"] == "€" * 21 + "\\xe2"
    assert [d["received_ms"] for d in client.get("/api/v1/dead-letters?limit=2").json()["dead_letters"]] == [
        NOW - 1_000, NOW - 2_000,
    ]  # fmt: skip
    assert "over the maximum of 1000" in _detail(client.get("/api/v1/dead-letters?limit=1001"), 422)
    assert "query parameter 'limit'" in _detail(client.get("/api/v1/dead-letters?limit=-1"), 422)


# -- the app as a whole ----------------------------------------------------------------------


def test_unknown_route_and_method(client: TestClient) -> None:
    assert "There is no route /api/v1/nothing" in _detail(client.get("/api/v1/nothing"), 404)
    assert "POST is not allowed on /api/v1/devices" in _detail(client.post("/api/v1/devices"), 405)


def test_openapi_documents_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    # Other packages add their routers: these are the backbone's, and every route of any
    # package must carry a summary and a declared tag.
    assert set(paths) >= {
        "/healthz",
        "/api/v1/devices",
        "/api/v1/agents",
        "/api/v1/devices/{site}/{device}",
        "/api/v1/devices/{site}/{device}/series",
        "/api/v1/devices/{site}/{device}/readings",
        "/api/v1/dead-letters",
    }
    for path, ops in paths.items():
        for op in ops.values():
            assert op.get("summary") and op.get("tags"), path
    declared = {t["name"] for t in spec["tags"]}
    assert declared >= {"health", "devices", "agents", "dead letters"}
    used = {tag for ops in paths.values() for op in ops.values() for tag in op["tags"]}
    assert used <= declared, used - declared
    assert client.get("/docs").status_code == 200


def test_a_store_passed_in_is_used_and_left_open(populated: StoreSettings) -> None:
    store = open_store(populated)
    try:
        with _client(_api_settings(StoreSettings(path=populated.path.parent / "unused.db")), store) as c:
            assert c.get("/api/v1/devices/hq/ahu-1").status_code == 200
        store.ping()  # still open after the app shut down
        assert [d.device for d in store.devices() if d.site == "mall"] == ["esc-1"]
    finally:
        store.close()


def test_store_outage_gives_503(influx_settings: StoreSettings) -> None:
    dead = influx_settings.model_copy(
        update={"influx_url": f"http://127.0.0.1:{free_port()}", "timeout_s": 2.0}
    )
    with _client(_api_settings(dead)) as c:
        r = c.get("/healthz")
        assert r.status_code == 503
        assert r.json()["status"] == "unavailable"
        assert "did not answer" in r.json()["detail"]
        detail = _detail(c.get("/api/v1/devices"), 503)
        assert "did not answer" in detail and "Try again" in detail


# -- server.run ------------------------------------------------------------------------------


def _serve_in_thread(
    settings: ApiSettings, store: Store | None = None
) -> tuple[threading.Thread, threading.Event, str]:
    stop = threading.Event()
    urls: list[str] = []
    started = threading.Event()
    errors: list[BaseException] = []

    def on_ready(url: str) -> None:
        urls.append(url)
        started.set()

    def target() -> None:
        try:
            run(settings, stop, store, ready=on_ready)
        except BaseException as e:
            errors.append(e)
            started.set()

    thread = threading.Thread(target=target, name="api-under-test")
    thread.start()
    assert started.wait(20), "the API did not start within 20 s"
    assert not errors, errors
    return thread, stop, urls[0]


def test_run_serves_until_stopped(populated: StoreSettings) -> None:
    settings = _api_settings(populated, port=0)
    thread, stop, url = _serve_in_thread(settings)
    try:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
        r = httpx.get(f"{url}/api/v1/devices", params={"site": "mall"}, timeout=10,
                      headers=auth_headers(settings.database_url))
        assert [d["device"] for d in r.json()["devices"]] == ["esc-1"]
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive(), "run() did not return after stop_event was set"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_run_leaves_a_passed_store_open(populated: StoreSettings) -> None:
    store = open_store(populated)
    try:
        settings = _api_settings(populated, port=0)
        thread, stop, url = _serve_in_thread(settings, store)
        headers = auth_headers(settings.database_url)
        assert httpx.get(f"{url}/api/v1/agents", timeout=10, headers=headers).status_code == 200
        stop.set()
        thread.join(15)
        assert not thread.is_alive()
        store.ping()
    finally:
        store.close()


def test_run_on_a_busy_port_says_so(embedded_settings: StoreSettings) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}.*VIGIL_API_PORT"):
            run(_api_settings(embedded_settings, port=port), threading.Event())


# -- pure cores: times, steps, presence, messages ---------------------------------------------


@given(st.integers(1, MAX_MS))
def test_format_step_is_read_back(ms: int) -> None:
    assert parse_step(format_step(ms)) == ms


@given(st.integers(0, MAX_MS))
def test_iso_is_read_back(ms: int) -> None:
    assert parse_time("t", iso(ms)) == ms
    if not SECONDS_LOOKALIKE[0] <= ms < SECONDS_LOOKALIKE[1]:
        assert parse_time("t", str(ms)) == ms


@given(st.integers(0, MAX_MS - 1), st.integers(1, 10**12), st.integers(1, 20_000))
def test_nice_step_fits(start: int, span: int, max_buckets: int) -> None:
    end = min(start + span, MAX_MS)
    step = nice_step(start, end, max_buckets)
    assert bucket_count(start, end, step) <= max_buckets
    assert parse_step(format_step(step)) == step


@given(st.text(max_size=100))
def test_time_and_step_parsers_raise_only_query_error(text: str) -> None:
    parsers: list[Callable[[], int]] = [lambda: parse_time("start", text), lambda: parse_step(text)]
    for parse in parsers:
        try:
            parse()
        except QueryError as e:
            assert str(e)


def test_parse_time_cases() -> None:
    assert parse_time("t", " 1717243200000 ") == NOW
    assert parse_time("t", "2024-06-01T12:00:00.0009Z") == NOW  # sub-millisecond: floor
    assert parse_time("t", "2024-06-01T11:59:59.9999Z") == NOW - 1
    assert parse_time("t", "2024-06-01T14:00:00 0200") == NOW
    for bad, words in [("", "empty"), ("9" * 70, "characters long"), ("²", "not a time"),
                       ("2024-06-01", "no UTC offset"), ("12.5", "fraction")]:  # fmt: skip
        with pytest.raises(QueryError, match=words):
            parse_time("t", bad)


def test_window_defaults() -> None:
    assert window(None, None, NOW, 3_600_000) == (NOW - 3_600_000, NOW)
    assert window(None, None, 1_000, 3_600_000) == (0, 1_000)
    with pytest.raises(QueryError, match="end defaults to now"):
        window(str(NOW), None, NOW, 1)


def test_bucket_count_is_epoch_aligned() -> None:
    assert bucket_count(0, 60_000, 60_000) == 1
    assert bucket_count(59_999, 60_001, 60_000) == 2
    assert bucket_count(NOW - 95_000, NOW - 25_000, 60_000) == 2


def test_presence_rules() -> None:
    dev = DeviceSeen(site="s", device="d", agent="a", last_seen_ms=NOW - 30_000)
    up = AgentState(site="s", agent="a", state="online", ts_ms=NOW - 1, boot=1, reason="")
    down = AgentState(site="s", agent="a", state="offline", ts_ms=NOW - 1, boot=1, reason="last will")
    assert device_presence(dev, up, NOW, 60_000).state == "online"
    assert device_presence(dev, up, NOW, 60_000).online
    assert device_presence(dev, up, NOW, 29_999).state == "stale"
    p = device_presence(dev, down, NOW, 60_000)
    assert (p.state, p.online) == ("offline", False) and "last will" in p.reason
    assert device_presence(dev, None, NOW, 60_000).state == "offline"
    future = DeviceSeen(site="s", device="d", agent="a", last_seen_ms=NOW + 5_000)
    p = device_presence(future, up, NOW, 60_000)
    assert p.state == "online" and "future" in p.reason


def test_validation_messages_read_as_sentences() -> None:
    text = explain_validation(
        [
            {"type": "missing", "loc": ("query", "metric"), "msg": "Field required", "input": None},
            {"type": "int_parsing", "loc": ("query", "limit"), "msg": "Input should be a valid integer",
             "input": "x"},
        ]
    )  # fmt: skip
    assert text == (
        "query parameter 'metric' is required. "
        "query parameter 'limit': Input should be a valid integer (got 'x')."
    )
