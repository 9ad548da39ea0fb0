"""The one Store contract, run on every implementation: the embedded file and InfluxDB (for real,
1.6.7 behind the nginx ``/api/v2/write`` mapping of services.md). Each test gets a fresh file
or a fresh database. Then the InfluxDB store's own error translation, through real servers.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence

import msgspec
import pytest

from ingest.store import (
    AgentHealthRecord,
    AgentState,
    AgentTally,
    Bucket,
    DeadLetter,
    DeviceSeen,
    RawReading,
    Store,
    StoreError,
    StoreSettings,
    open_store,
)
from ingest.store.influx import InfluxStore
from tests.services import InfluxServer, free_port
from wire import Reading, Status, StatusTopic, Telemetry, TelemetryTopic
from wire.agent import AgentHealth, DeviceHealth
from wire.payloads import MAX_PAYLOAD_BYTES, Quality, Value
from wire.topics import HealthTopic

HOUR_MS = 3_600_000
T0 = 1_700_000_000_000 // HOUR_MS * HOUR_MS  # an hour boundary, so steps divide it
FAR = T0 + 1000 * HOUR_MS


@pytest.fixture(params=["embedded", "influx"])
def store_settings(request: pytest.FixtureRequest) -> StoreSettings:
    settings: StoreSettings = request.getfixturevalue(f"{request.param}_settings")
    return settings


@pytest.fixture
def store(store_settings: StoreSettings) -> Iterator[Store]:
    s = open_store(store_settings)
    yield s
    s.close()


def msg(
    device: str,
    readings: Sequence[tuple[int, str, Value] | tuple[int, str, Value, str | None, Quality]],
    *,
    site: str = "s1",
    agent: str = "a1",
    seq: int = 0,
) -> tuple[TelemetryTopic, Telemetry]:
    """One telemetry message: readings as (ts_ms, metric, value[, unit, quality])."""
    built = []
    for r in readings:
        if len(r) == 3:
            built.append(Reading(ts_ms=r[0], metric=r[1], value=r[2]))
        else:
            built.append(Reading(ts_ms=r[0], metric=r[1], value=r[2], unit=r[3], quality=r[4]))
    topic = TelemetryTopic(site=site, agent=agent, device=device)
    return topic, Telemetry(v=1, seq=seq, readings=tuple(built))


def read_all(store: Store, device: str, metric: str, site: str = "s1") -> list[RawReading]:
    return store.readings(site, device, metric, 0, FAR, 100_000)


# -- the contract --------------------------------------------------------------------------------


def test_readings_come_back_exactly_as_written(store: Store) -> None:
    store.write([
        msg("d1", [
            (T0, "temp", 21.5, "degC", "good"),
            (T0 + 1, "temp", -0.25, "degC", "uncertain"),
            (T0 + 2, "temp", 1.0, "degC", "bad"),  # integral: must stay a float
            (T0 + 3, "temp", 1e22, None, "good"),
            (T0 + 4, "temp", 5e-324, None, "good"),
            (T0, "door_open", True),
            (T0 + 10, "door_open", False, None, "bad"),
            (T0, "mode", "auto"),
            (T0 + 7, "mode", "", None, "uncertain"),
        ]),
    ])
    temp = read_all(store, "d1", "temp")
    assert temp == [
        RawReading(T0, 21.5, "good"),
        RawReading(T0 + 1, -0.25, "uncertain"),
        RawReading(T0 + 2, 1.0, "bad"),
        RawReading(T0 + 3, 1e22, "good"),
        RawReading(T0 + 4, 5e-324, "good"),
    ]
    assert all(type(r.value) is float for r in temp)
    door = read_all(store, "d1", "door_open")
    assert door == [RawReading(T0, True, "good"), RawReading(T0 + 10, False, "bad")]
    assert all(type(r.value) is bool for r in door)
    mode = read_all(store, "d1", "mode")
    assert mode == [RawReading(T0, "auto", "good"), RawReading(T0 + 7, "", "uncertain")]


def test_readings_range_is_half_open_ascending_and_limited(store: Store) -> None:
    store.write([msg("d1", [(T0 + i * 1000, "temp", float(i)) for i in (5, 3, 9, 0, 1)])])
    got = store.readings("s1", "d1", "temp", T0 + 1000, T0 + 9000, 100)
    assert [r.ts_ms for r in got] == [T0 + 1000, T0 + 3000, T0 + 5000]
    assert [r.value for r in store.readings("s1", "d1", "temp", T0, FAR, 2)] == [0.0, 1.0]
    assert store.readings("s1", "d1", "temp", T0, FAR, 0) == []
    assert store.readings("s1", "d1", "temp", T0 + 5000, T0 + 5000, 10) == []


def test_a_reading_written_again_replaces_itself(store: Store) -> None:
    m = msg("d1", [(T0, "temp", 20.0, "degC", "good"), (T0 + 1000, "temp", 21.0, "degC", "good")], seq=1)
    store.write([m, m])  # redelivered within one batch
    store.write([m])  # and again later
    assert [r.value for r in read_all(store, "d1", "temp")] == [20.0, 21.0]
    assert store.series("s1", "d1", "temp", T0, FAR, HOUR_MS) == [Bucket(T0, 20.5, 20.0, 21.0, 2)]
    store.write([msg("d1", [(T0, "temp", 25.0, "degC", "good")], seq=2)])  # same identity, new value
    assert read_all(store, "d1", "temp") == [RawReading(T0, 25.0, "good"),
                                             RawReading(T0 + 1000, 21.0, "good")]


def test_series_buckets_are_epoch_aligned_half_open_and_numeric_only(store: Store) -> None:
    step = 60_000
    store.write([
        msg("d1", [
            (T0 - 1, "temp", 100.0),  # before the range
            (T0 + 5_000, "temp", 1.0),
            (T0 + 15_000, "temp", 2.0),
            (T0 + 59_999, "temp", 6.0),
            (T0 + 60_000, "temp", 10.0),  # first instant of the second bucket
            (T0 + 185_000, "temp", -4.0),  # fourth bucket; the third has nothing
            (T0 + 240_000, "temp", 50.0),  # == end: excluded
        ]),
        msg("d1", [(T0 + 20_000, "temp", "sensor fault"), (T0 + 21_000, "temp", True)]),  # not numbers
    ])
    got = store.series("s1", "d1", "temp", T0, T0 + 240_000, step)
    assert [(b.ts_ms, b.min, b.max, b.count) for b in got] == [
        (T0, 1.0, 6.0, 3),
        (T0 + 60_000, 10.0, 10.0, 1),
        (T0 + 180_000, -4.0, -4.0, 1),
    ]
    assert got[0].mean == pytest.approx(3.0)
    assert all(b.ts_ms % step == 0 for b in got)

    # A start inside a bucket: the bucket keeps its epoch-aligned time, counts only what is in range.
    got = store.series("s1", "d1", "temp", T0 + 10_000, T0 + 60_001, step)
    assert [(b.ts_ms, b.count, b.min, b.max) for b in got] == [(T0, 2, 2.0, 6.0),
                                                              (T0 + 60_000, 1, 10.0, 10.0)]
    assert got[0].mean == pytest.approx(4.0)

    # A step that does not divide an hour still aligns on the epoch, not on the start.
    odd = 7_000
    got = store.series("s1", "d1", "temp", T0, T0 + 240_000, odd)
    numbers_at = (T0 + 5_000, T0 + 15_000, T0 + 59_999, T0 + 60_000, T0 + 185_000)
    assert [b.ts_ms for b in got] == sorted({ts // odd * odd for ts in numbers_at})
    assert sum(b.count for b in got) == 5

    store.write([msg("d1", [(T0, "state", "open"), (T0 + 1, "alarm", True)])])
    assert store.series("s1", "d1", "state", T0, FAR, step) == []
    assert store.series("s1", "d1", "alarm", T0, FAR, step) == []
    assert store.series("s1", "d1", "temp", T0 + 60_000, T0, step) == []
    with pytest.raises(ValueError, match="step_ms"):
        store.series("s1", "d1", "temp", T0, FAR, 0)


def test_metrics_of_a_device_sorted(store: Store) -> None:
    store.write([
        msg("d1", [(T0, "temp.supply-1", 1.0), (T0, "Humidity", 40.0), (T0, "door_open", False)]),
        msg("d2", [(T0, "pressure", 1.0)]),
        msg("d1", [(T0, "co2", 400.0)], site="s2"),
    ])
    assert store.metrics("s1", "d1") == sorted(["temp.supply-1", "Humidity", "door_open"])
    assert store.metrics("s1", "d2") == ["pressure"]
    assert store.metrics("s2", "d1") == ["co2"]


def test_devices_seen_keep_the_newest_edge_time_and_latest_agent(store: Store) -> None:
    assert store.devices() == []
    store.write([
        msg("d1", [(T0 + 5_000, "temp", 1.0), (T0 + 9_000, "temp", 2.0), (T0 + 7_000, "rh", 3.0)]),
        msg("d2", [(T0, "temp", 1.0)], agent="a2"),
        msg("d1", [(T0 + 8_000, "temp", 3.0)]),
    ])
    assert store.devices() == [DeviceSeen("s1", "d1", "a1", T0 + 9_000), DeviceSeen("s1", "d2", "a2", T0)]
    # Older readings arriving later (an edge buffer draining) never move last_seen back;
    # the agent is the one the device last came through.
    store.write([msg("d1", [(T0 + 1_000, "temp", 0.0)], agent="a9")])
    store.write([msg("d2", [(T0 + 60_000, "temp", 0.0)], agent="a2")])
    assert store.devices() == [DeviceSeen("s1", "d1", "a9", T0 + 9_000),
                               DeviceSeen("s1", "d2", "a2", T0 + 60_000)]


def test_agent_status_latest_wins(store: Store) -> None:
    assert store.agents() == []
    a1, a2 = StatusTopic(site="s1", agent="a1"), StatusTopic(site="s1", agent="a2")
    store.write_status(a1, Status(v=1, state="online", ts_ms=T0, boot=3))
    store.write_status(a2, Status(v=1, state="online", ts_ms=T0 + 5, boot=1))
    # The last will carries the time of the connect that armed it: same ts_ms, written later.
    store.write_status(a1, Status(v=1, state="offline", ts_ms=T0, boot=3, reason="connection lost"))
    assert store.agents() == [
        AgentState("s1", "a1", "offline", T0, 3, "connection lost"),
        AgentState("s1", "a2", "online", T0 + 5, 1, ""),
    ]
    store.write_status(a1, Status(v=1, state="online", ts_ms=T0 + 60_000, boot=4))
    store.write_status(a1, Status(v=1, state="offline", ts_ms=T0 - 60_000, boot=2, reason="stale"))  # older
    assert store.agents()[0] == AgentState("s1", "a1", "online", T0 + 60_000, 4, "")


def test_agent_health_latest_wins_and_round_trips(store: Store) -> None:
    assert store.agent_health() == []
    h1, h2 = HealthTopic(site="s1", agent="a1"), HealthTopic(site="s1", agent="a2")
    full = AgentHealth(v=1, ts_ms=T0, boot=3, outbox_depth=12, outbox_bytes=4096, oldest_unacked_age_s=1.5,
                       dropped=2, poll_errors=7, publish_p99_s=0.04, version="1.2 \"q\" é",
                       devices={"pump-1": DeviceHealth(state="online", since_ms=T0 - 1000),
                                "door-2": DeviceHealth(state="offline", since_ms=T0, poll_errors=7,
                                                       reason="timeout, no answer\nat all")})
    store.write_health(h1, full)
    store.write_health(h2, AgentHealth(v=1, ts_ms=T0 + 5, boot=1, outbox_depth=0, outbox_bytes=0,
                                       oldest_unacked_age_s=0, dropped=0, poll_errors=0, publish_p99_s=0))
    older = msgspec.structs.replace(full, ts_ms=T0 - 60_000, outbox_depth=999)
    store.write_health(h1, older)  # a stale retained copy must not replace the newer report
    got = store.agent_health()
    assert [(r.site, r.agent) for r in got] == [("s1", "a1"), ("s1", "a2")]
    assert got[0] == AgentHealthRecord("s1", "a1", full)
    newer = msgspec.structs.replace(full, ts_ms=T0 + 60_000, outbox_depth=0, devices={})
    store.write_health(h1, newer)
    assert store.agent_health()[0].health == newer


def test_ingest_accounting_latest_per_worker_and_agent(store: Store) -> None:
    assert store.accounting() == []
    t1 = AgentTally(site="s1", agent="a1", worker="w1", ts_ms=T0, received_messages=10, received_readings=500,
                    stored_messages=9, stored_readings=450, duplicates=1, dead_letters={"wrong_type": 1},
                    gaps_opened=2, missing_messages=3, open_gaps=((4, 5), (9, 9)))
    t2 = AgentTally(site="s1", agent="a1", worker="w2", ts_ms=T0 + 1, received_messages=4)
    t3 = AgentTally(site="s0", agent="a9", worker="w1", ts_ms=T0)
    store.write_accounting([t1, t2, t3])
    assert store.accounting() == [t3, t1, t2]
    newer = msgspec.structs.replace(t1, ts_ms=T0 + 10_000, received_messages=20, open_gaps=())
    store.write_accounting([newer])
    assert store.accounting() == [t3, newer, t2]


def test_dead_letters_round_trip_newest_first(store: Store) -> None:
    assert store.dead_letters(10) == []
    binary = bytes(range(256)) + b"\xff\xfe\x00 not utf-8"
    text = '{"v":1, "seq": "x"}\n\t"quoted" \\ back\\slash \u00b0C \U0001f600 \x00'.encode()
    letters = [
        DeadLetter(T0, "vigil/v1/s1/a1/d1/telemetry", binary, "invalid telemetry: not JSON"),
        DeadLetter(T0, "vigil/v1/s1/a1/d2/telemetry", text, 'invalid telemetry: $.seq "x"'),
        DeadLetter(T0, "some/other topic", b"", "empty"),  # same millisecond, all three kept
        DeadLetter(T0 + 1, "vigil/v1/s1/a1/d3/telemetry", b"{}", "InfluxDB refused: 400"),
    ]
    store.write_dead_letters(letters[:2])
    store.write_dead_letters(letters[2:])
    got = store.dead_letters(10)
    assert got[0] == letters[3]
    assert sorted(got[1:], key=lambda d: d.topic) == sorted(letters[:3], key=lambda d: d.topic)
    assert len(store.dead_letters(2)) == 2


def test_dead_letters_by_code_and_topic_prefix_then_marked_replayed(store: Store) -> None:
    letters = [
        DeadLetter(T0, "vigil/v1/s1/a1/d1/telemetry", b"x", "bad type", code="wrong_type"),
        DeadLetter(T0 + 1, "vigil/v1/s1/a1/d2/telemetry", b"y", "clock", code="ts_out_of_window"),
        DeadLetter(T0 + 2, "vigil/v1/s2.x/a1/d1/telemetry", b"z", "bad type", code="wrong_type"),
        DeadLetter(T0 + 3, "vigil/v1/s2x/a1/d1/telemetry", b"w", "old letter"),  # from before codes
    ]
    store.write_dead_letters(letters)
    assert store.dead_letters(10, code="wrong_type") == [letters[2], letters[0]]
    # A prefix matches literally: the "." of "s2.x" is no wildcard.
    assert store.dead_letters(10, topic_prefix="vigil/v1/s2.x/") == [letters[2]]
    assert store.dead_letters(10, code="wrong_type", topic_prefix="vigil/v1/s1/") == [letters[0]]
    assert store.dead_letters(10, code="nothing") == []
    got = store.dead_letters(10)
    assert got == letters[::-1] and len({d.id for d in got}) == 4 and all(d.replayed_ms is None for d in got)
    store.mark_replayed([got[1].id], T0 + 99)
    after = {d.topic: d for d in store.dead_letters(10)}
    assert after[letters[2].topic].replayed_ms == T0 + 99
    assert after[letters[2].topic] == letters[2]  # the rest of the letter unchanged
    assert [d.replayed_ms for d in store.dead_letters(10) if d.topic != letters[2].topic] == [None] * 3


def test_an_oversized_dead_letter_keeps_its_start_and_says_so(store: Store) -> None:
    payload = b"x" * (MAX_PAYLOAD_BYTES + 10)
    store.write_dead_letters([DeadLetter(T0, "t", payload, "payload too large")])
    [got] = store.dead_letters(1)
    assert got.payload == payload[:MAX_PAYLOAD_BYTES]
    assert got.reason.startswith("payload too large") and str(len(payload)) in got.reason


def test_unknown_device_has_nothing(store: Store) -> None:
    store.write([msg("d1", [(T0, "temp", 1.0)])])
    assert store.metrics("s1", "nobody") == []
    assert store.metrics("nowhere", "d1") == []
    assert store.readings("s1", "nobody", "temp", 0, FAR, 10) == []
    assert store.series("s1", "nobody", "temp", 0, FAR, 60_000) == []
    assert store.readings("s1", "d1", "no_such_metric", 0, FAR, 10) == []
    assert store.series("s1", "d1", "no_such_metric", 0, FAR, 60_000) == []


def test_strings_and_units_with_special_characters_survive(store: Store) -> None:
    values = [
        'he said "hi"',
        "back\\slash and trailing\\",
        "line1\nline2\r\nline3",
        "tab\tseparated, with = and spaces",
        "'single' \"double\" `back`",
        "\u00b0C \u00fc \U0001f600",
        "\\\"",
    ]
    unit = "unit with spaces, commas=equals"
    store.write([
        msg("d1", [(T0 + i, "note", v, unit, "good") for i, v in enumerate(values)]),
        # A backslash or newline cannot be kept in an InfluxDB tag: the reading must still land.
        msg("d1", [(T0, "flow", 2.5, "m\u00b3/h, avg", "good"),
                   (T0 + 1, "flow", 3.5, 'odd\\unit "x"\n', "good")]),
    ])
    assert [r.value for r in read_all(store, "d1", "note")] == values
    assert [r.value for r in read_all(store, "d1", "flow")] == [2.5, 3.5]
    assert store.metrics("s1", "d1") == ["flow", "note"]


def test_ids_are_used_verbatim(store: Store) -> None:
    site, device, agent = "Site-1.b_2", "AHU-3.fan_1", "edge.gw-7"
    store.write([msg(device, [(T0, "temp", 1.0)], site=site, agent=agent)])
    assert store.devices() == [DeviceSeen(site, device, agent, T0)]
    assert store.metrics(site, device) == ["temp"]
    assert read_all(store, device, "temp", site=site) == [RawReading(T0, 1.0, "good")]


def test_a_large_batch_lands_whole(store: Store) -> None:
    batch = [msg(f"d{k}", [(T0 + i * 1000, f"m{i % 5}", float(i)) for i in range(500)], seq=k)
             for k in range(20)]
    store.write(batch)  # 10,000 readings in one write: one request, one transaction
    assert sum(b.count for b in store.series("s1", "d7", "m3", T0, FAR, HOUR_MS)) == 100
    assert len(store.devices()) == 20


def test_a_clock_past_2262_is_refused_not_stored(store: Store) -> None:
    with pytest.raises(StoreError) as e:
        store.write([msg("d1", [(T0, "temp", 1.0)]), msg("d2", [(9_300_000_000_000, "temp", 1.0)])])
    assert not e.value.retryable
    assert "vigil/v1/s1/a1/d2/telemetry" in str(e.value)
    assert store.devices() == []


def test_written_data_is_there_for_another_store(store: Store, store_settings: StoreSettings) -> None:
    store.write([msg("d1", [(T0, "temp", 1.0)])])
    store.write_status(StatusTopic(site="s1", agent="a1"), Status(v=1, state="online", ts_ms=T0))
    store.close()
    other = open_store(store_settings)  # a restarted process, or the API beside ingest
    try:
        assert read_all(other, "d1", "temp") == [RawReading(T0, 1.0, "good")]
        assert other.agents() == [AgentState("s1", "a1", "online", T0, 0, "")]
        other.write([msg("d1", [(T0 + 1, "temp", 2.0)])])
        assert other.devices() == [DeviceSeen("s1", "d1", "a1", T0 + 1)]
    finally:
        other.close()


def test_readers_in_threads_while_a_writer_writes(store: Store) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                store.series("s1", "d0", "m0", T0, FAR, HOUR_MS)
                store.devices()
        except BaseException as e:
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for k in range(10):
            store.write([msg("d0", [(T0 + k * 100 + i, "m0", float(i)) for i in range(100)], seq=k)])
    finally:
        done.set()
        for t in readers:
            t.join()
    assert errors == []
    assert store.series("s1", "d0", "m0", T0, FAR, HOUR_MS)[0].count == 1000


def test_ping(store: Store) -> None:
    store.ping()


# -- InfluxDB: failures become StoreError, retryable or not ------------------------------------


def test_influx_closed_port_is_retryable_everywhere() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    store = InfluxStore(StoreSettings(influx_url=url, influx_bucket="vigil", timeout_s=2))  # opens anyway
    try:
        calls = {
            "write": lambda: store.write([msg("d1", [(T0, "temp", 1.0)])]),
            "write_status": lambda: store.write_status(StatusTopic(site="s1", agent="a1"),
                                                       Status(v=1, state="online", ts_ms=T0)),
            "write_dead_letters": lambda: store.write_dead_letters([DeadLetter(T0, "t", b"x", "r")]),
            "readings": lambda: store.readings("s1", "d1", "temp", 0, FAR, 10),
            "devices": store.devices,
            "ping": store.ping,
        }
        for name, call in calls.items():
            with pytest.raises(StoreError) as e:
                call()
            assert e.value.retryable, name
            assert url in str(e.value), name
    finally:
        store.close()


def test_influx_opens_while_the_server_is_away_and_creates_its_database_later(influxdb: InfluxServer) -> None:
    # A proxy answering 502: InfluxDB is down. Opening must not fail (ingest may start
    # first); the next operation tries CREATE DATABASE again and fails retryably.
    away = InfluxStore(StoreSettings(influx_url=f"{influxdb.url}/_answer_502", influx_bucket="x"))
    try:
        with pytest.raises(StoreError) as e:
            away.write([msg("d1", [(T0, "temp", 1.0)])])
        assert e.value.retryable
    finally:
        away.close()
    db = "t_" + uuid.uuid4().hex[:12]  # not created by any fixture: the store creates it
    store = InfluxStore(StoreSettings(influx_url=influxdb.url, influx_bucket=db))
    try:
        store.write([msg("d1", [(T0, "temp", 1.0)])])
        assert read_all(store, "d1", "temp") == [RawReading(T0, 1.0, "good")]
        assert [db] in influxdb.query("SHOW DATABASES")["results"][0]["series"][0]["values"]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("code", "retryable", "says"),
    [(429, True, "slow down"), (502, True, "influxd is not answering"), (503, True, "shutting down"),
     (413, False, "split the batch")],
)
def test_influx_proxy_answers_are_translated(
    influxdb: InfluxServer, code: int, retryable: bool, says: str
) -> None:
    store = InfluxStore(StoreSettings(influx_url=f"{influxdb.url}/_answer_{code}", influx_bucket="x"))
    try:
        with pytest.raises(StoreError) as e:
            store.write([msg("d1", [(T0, "temp", 1.0)])])
        assert e.value.retryable is retryable
        assert str(code) in str(e.value) and says in str(e.value)
    finally:
        store.close()


def test_influx_refusal_carries_the_server_message(
    influxdb: InfluxServer, influx_settings: StoreSettings
) -> None:
    store = InfluxStore(influx_settings)
    try:
        influxdb.query(f'DROP DATABASE "{influx_settings.influx_bucket}"', method="POST")
        with pytest.raises(StoreError) as e:
            store.write([msg("d1", [(T0, "temp", 1.0)])])
        # A setup fault, not the data's: retried (data kept unacked), never dead-lettered.
        assert e.value.retryable
        assert "database not found" in str(e.value) and "404" in str(e.value)
    finally:
        store.close()


def test_influx_schema_is_what_the_module_documents(
    influxdb: InfluxServer, influx_settings: StoreSettings
) -> None:
    store = InfluxStore(influx_settings)
    db = influx_settings.influx_bucket
    try:
        store.write([msg("d1", [(T0, "temp", 21.5, "degC", "bad"), (T0, "door", True),
                                (T0, "mode", "auto")])])
        rows = influxdb.query('SELECT * FROM "temp"', db=db)["results"][0]["series"][0]
        assert dict(zip(rows["columns"], rows["values"][0], strict=True)) == {
            "time": T0, "device": "d1", "site": "s1", "unit": "degC", "value": 21.5, "quality": "bad"
        }
        keys = influxdb.query('SHOW FIELD KEYS FROM "door", "mode"', db=db)["results"][0]["series"]
        assert {s["name"]: s["values"] for s in keys} == {"door": [["value_bool", "boolean"]],
                                                          "mode": [["value_text", "string"]]}
    finally:
        store.close()
