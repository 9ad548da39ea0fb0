"""The bad-input catalogue (ingest.validate) and per-agent accounting (ingest.accounting): sans-IO."""

from __future__ import annotations

import json
import time

import pytest

from ingest.accounting import Accounting, ranges
from ingest.store.influx import named_lines, retry_after
from ingest.validate import Code, InputError, Policy, check_message, nesting_depth
from wire import Reading, Status, StatusTopic, Telemetry, TelemetryTopic, encode
from wire.ingest_events import GapEvent, decode_gap, encode_event, gap_anomaly

NOW_MS = int(time.time() * 1000)
DAY_MS = 86_400_000


def good_payload(seq: int, n: int = 3, ts_ms: int = NOW_MS, metric: str = "flow_lps") -> bytes:
    return encode(Telemetry(v=1, seq=seq, readings=tuple(
        Reading(ts_ms=ts_ms + i, metric=metric, value=float(i), unit="l/s") for i in range(n))))


def bad_messages(site: str, now_ms: int = NOW_MS, oversize: int = 5000) -> list[tuple[str, bytes, Code]]:
    """One message of every kind of bad input ingest must explain: (topic, payload, expected code).

    ``oversize`` is the payload size used for the oversize case (give ingest a
    ``max_payload_bytes`` below it)."""
    t = TelemetryTopic(site, "gw1", "pump-1").format()
    good = good_payload(1, ts_ms=now_ms).decode()
    r = f'{{"ts_ms":{now_ms},"metric":"flow_lps","value":1.5}}'
    deep = "[" * 60 + "1" + "]" * 60
    return [
        (t, b"\xff\xfe{\"v\":1}", Code.INVALID_UTF8),
        (t, '{"v":1,"seq":1,"readings":[{"ts_ms":1,"metric":"caf\xe9"'.encode("latin-1"), Code.INVALID_UTF8),
        (t, good[: len(good) // 2].encode(), Code.INVALID_JSON),
        (t, b"not json at all", Code.INVALID_JSON),
        (t, f'{{"v":1,"seq":"seven","readings":[{r}]}}'.encode(), Code.WRONG_TYPE),
        (t, f'{{"v":1,"seq":1,"readings":[{{"ts_ms":"{now_ms}","metric":"x","value":1}}]}}'.encode(),
         Code.WRONG_TYPE),
        (t, b'{"v":1,"seq":1,"readings":[]}', Code.WRONG_TYPE),
        (t, f'{{"v":1,"seq":1,"readings":[{{"ts_ms":{now_ms},"metric":"x","value":NaN}}]}}'.encode(),
         Code.NON_FINITE),
        (t, f'{{"v":1,"seq":1,"readings":[{{"ts_ms":{now_ms},"metric":"x","value":-Infinity}}]}}'.encode(),
         Code.NON_FINITE),
        (t, f'{{"v":1,"seq":1,"readings":[{{"ts_ms":{now_ms},"metric":"x","value":1e999}}]}}'.encode(),
         Code.NON_FINITE),
        (t, b'{"v":1,"seq":1,"readings":[' + b" " * oversize + f"{r}]}}".encode(), Code.OVERSIZE),
        (t, b"", Code.EMPTY_PAYLOAD),
        (f"vigil/v1/{site}/gw1/bad device/telemetry", good.encode(), Code.BAD_TOPIC),
        (f"vigil/v1/{site}/gw1/_hidden/telemetry", good.encode(), Code.BAD_TOPIC),
        (f"vigil/v1/{site}/gw1/pump-1/telemetry/extra", good.encode(), Code.BAD_TOPIC),
        (t, encode(Status(v=1, state="online", ts_ms=now_ms, boot=1)), Code.TOPIC_MISMATCH),
        (t, f'{{"v":1,"seq":1,"device":"pump-2","readings":[{r}]}}'.encode(), Code.TOPIC_MISMATCH),
        (StatusTopic(site, "gw1").format(), good.encode(), Code.TOPIC_MISMATCH),
        (t, good_payload(1, ts_ms=now_ms - 60 * DAY_MS), Code.TS_OUT_OF_WINDOW),
        (t, good_payload(1, ts_ms=now_ms + 2 * DAY_MS), Code.TS_OUT_OF_WINDOW),
        (t, b'{"v":1,"seq":1,"readings":[{"ts_ms":5,"metric":"x","value":1}]}',
         Code.TS_OUT_OF_WINDOW),
        (t, f'{{"v":1,"seq":1,"seq":2,"readings":[{r}]}}'.encode(), Code.DUPLICATE_KEY),
        (t, f'{{"v":1,"seq":1,"readings":[{{"ts_ms":{now_ms},"metric":"x","value":1,"value":2}}]}}'.encode(),
         Code.DUPLICATE_KEY),
        (t, f'{{"v":1,"seq":1,"readings":[{{"ts_ms":{now_ms},"metric":"x","val\\u0075e":1,"value":2}}]}}'
         .encode(), Code.DUPLICATE_KEY),
        (t, f'{{"v":1,"seq":1,"readings":[{{"ts_ms":{now_ms},"metric":"x","value":{deep}}}]}}'.encode(),
         Code.TOO_DEEP),
        (t, ("{" + '"a":{' * 40 + "}" * 41).encode(), Code.TOO_DEEP),
        (t, f'{{"v":1,"seq":1,"readings":[{{"ts_ms":{now_ms},"metric":"temp value","value":1}}]}}'.encode(),
         Code.BAD_NAME),
        (t, f'{{"v":1,"seq":1,"readings":[{{"ts_ms":{now_ms},"metric":"a,b=c","value":1}}]}}'.encode(),
         Code.BAD_NAME),
        (t, f'{{"v":1,"seq":1,"readings":[{{"ts_ms":{now_ms},"metric":"t\\n","value":1}}]}}'.encode(),
         Code.BAD_NAME),
        (t, f'{{"v":1,"seq":1,"readings":[{{"ts_ms":{now_ms},"metric":"x","value":1,"unit":""}}]}}'.encode(),
         Code.BAD_NAME),
    ]


POLICY = Policy(max_payload_bytes=4096, max_age_ms=30 * DAY_MS, max_ahead_ms=3_600_000)


@pytest.mark.parametrize(("index"), range(len(bad_messages("s1"))))
def test_every_kind_of_bad_input_gets_its_code_and_a_reason(index: int) -> None:
    topic, payload, code = bad_messages("s1")[index]
    with pytest.raises(InputError) as caught:
        check_message(topic.encode(), payload, NOW_MS, POLICY)
    assert caught.value.code == code, caught.value.reason
    assert len(caught.value.reason) > 15


def test_good_messages_pass_and_key_names_inside_strings_are_not_duplicates() -> None:
    topic = TelemetryTopic("s1", "gw1", "pump-1")
    accepted = check_message(topic.format().encode(), good_payload(4), NOW_MS, POLICY)
    assert accepted.topic == topic and not accepted.rejected
    tricky = encode(Telemetry(v=1, seq=5, readings=(
        Reading(ts_ms=NOW_MS, metric="mode", value='"value": "ts_ms" \\u0041'),)))
    assert check_message(topic.format().encode(), tricky, NOW_MS, POLICY).message.seq == 5  # type: ignore[union-attr]
    status = encode(Status(v=1, state="online", ts_ms=NOW_MS, boot=2))
    accepted = check_message(StatusTopic("s1", "gw1").format().encode(), status, NOW_MS, POLICY)
    assert accepted.message == Status(v=1, state="online", ts_ms=NOW_MS, boot=2)


def test_readings_outside_the_window_are_split_off_and_the_rest_kept() -> None:
    topic = TelemetryTopic("s1", "gw1", "pump-1")
    readings = (Reading(ts_ms=NOW_MS - 1000, metric="a", value=1.0),
                Reading(ts_ms=NOW_MS + 5 * DAY_MS, metric="a", value=2.0),
                Reading(ts_ms=NOW_MS, metric="b", value=3.0))
    payload = encode(Telemetry(v=1, seq=9, readings=readings))
    accepted = check_message(topic.format().encode(), payload, NOW_MS, POLICY)
    assert accepted.message == Telemetry(v=1, seq=9, readings=(readings[0], readings[2]))
    [(code, reason, part)] = accepted.rejected
    assert code == Code.TS_OUT_OF_WINDOW and part == Telemetry(v=1, seq=9, readings=(readings[1],))
    assert "ahead of now" in reason
    wide = Policy(max_age_ms=None, max_ahead_ms=None)
    assert not check_message(topic.format().encode(), payload, NOW_MS, wide).rejected


def test_unknown_site_is_named() -> None:
    with pytest.raises(InputError) as caught:
        check_message(b"vigil/v1/other/gw1/d1/telemetry", good_payload(1), NOW_MS,
                      Policy(sites=frozenset({"s1"})))
    assert caught.value.code == Code.UNKNOWN_SITE and "'other'" in caught.value.reason


def test_nesting_depth_ignores_brackets_in_strings() -> None:
    assert nesting_depth(b'{"a":"[[[[\\"[[[","b":[{}]}') == 3
    assert json.loads(b'{"a":"[[[[\\"[[[","b":[{}]}')  # the sample is JSON


# -- InfluxDB error parsing ---------------------------------------------------------------------


def test_influx_refusals_are_read() -> None:
    message = ("partial write: unable to parse 'flow_lps,device=d,site=s value=1 x': bad timestamp\n"
               "unable to parse 'b value=': missing field value dropped=2")
    assert named_lines(message) == ["flow_lps,device=d,site=s value=1 x", "b value="]
    assert retry_after("7") == 7.0 and retry_after(None) is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None


# -- accounting --------------------------------------------------------------------------------


def test_gaps_duplicates_and_an_agent_restart() -> None:
    acc = Accounting(gap_open_after_s=10)
    for seq in (0, 1, 2, 5, 6):
        assert not acc.received("s", "a", seq, 10, now=100)
    acct = acc.agents[("s", "a")]
    assert [(g.first, g.last) for g in acct.gaps] == [(3, 4)] and acct.missing == 2
    assert acc.received("s", "a", 1, 10, now=101)  # a redelivery
    assert acc.due_events(now=105) == []
    [event] = acc.due_events(now=111)
    assert (event.first, event.last, event.state) == (3, 4, "open")
    assert acc.due_events(now=200) == []  # reported once
    acc.seen_elsewhere("s", "a", 3, now=201)  # another worker had it
    acc.received("s", "a", 4, 10, now=202)  # late
    [closed] = acc.due_events(now=203)
    assert (closed.first, closed.last, closed.state) == (3, 4, "closed")
    assert acct.duplicates == 1 and acct.received_messages == 7 and not acct.gaps
    acc.received("s", "a", 9, 10, now=250)
    assert [(g.first, g.last) for g in acct.gaps] == [(7, 8)]
    # The agent restarts: its numbers continue, and its outbox replays what was unacked.
    assert acc.received("s", "a", 0, 10, now=300)  # 0 again is a redelivery, not a new session
    assert not acc.received("s", "a", 8, 10, now=300) and not acc.received("s", "a", 10, 10, now=300)
    assert [(g.first, g.last) for g in acct.gaps] == [(7, 7)] and acct.gaps_dropped == 0
    assert not acc.received("s", "a", 7, 10, now=301) and not acct.gaps
    assert acc.drain_seen() == [("s", "a", [(0, 2), (4, 10)])]
    assert acc.drain_seen() == []
    [tally] = acc.tallies("w1", 1_700_000_000_000)
    assert (tally.received_messages, tally.duplicates) == (12, 2)
    assert (tally.missing_messages, tally.open_gaps) == (0, ())


def test_a_late_start_is_no_duplicate_and_no_gap() -> None:
    acc = Accounting(gap_open_after_s=10)
    for seq in (120, 121, 118, 119, 0):  # joined mid-stream; older numbers arrive late
        assert not acc.received("s", "a", seq, 1, now=0)
    acct = acc.agents[("s", "a")]
    assert acct.duplicates == 0 and not acct.open_gaps and (acct.low, acct.high) == (0, 121)
    assert acc.due_events(now=100) == []
    assert acc.received("s", "a", 119, 1, now=1)  # a real redelivery


def test_a_gap_filled_before_it_is_due_is_never_reported_and_gaps_stay_bounded() -> None:
    acc = Accounting(gap_open_after_s=10, max_gaps=3)
    acc.received("s", "a", 0, 1, now=0)
    acc.received("s", "a", 2, 1, now=0)
    acc.seen_elsewhere("s", "a", 1, now=1)
    assert acc.due_events(now=100) == []
    for seq in range(4, 20, 2):
        acc.received("s", "a", seq, 1, now=0)
    acct = acc.agents[("s", "a")]
    assert len(acct.gaps) == 3 and acct.gaps_dropped == 5
    assert ranges([5, 1, 2, 3, 9, 9]) == [(1, 3), (5, 5), (9, 9)]


def test_gap_event_round_trip_and_its_anomaly() -> None:
    event = GapEvent(v=1, site="s1", agent="gw1", first_seq=3, last_seq=7, state="open", opened_ms=NOW_MS,
                     ts_ms=NOW_MS + 60_000, worker="w1")
    assert decode_gap(encode_event(event)) == event
    topic, anomaly = gap_anomaly(event)
    assert topic.format() == "vigil/v1/s1/_alarm/gw1"
    assert anomaly.id == "gap:s1:gw1:3" and anomaly.fault == "telemetry_gap" and anomaly.state == "open"
    assert "5 telemetry message(s)" in anomaly.summary
