"""The shared point map: conversion, per-point intervals, deadband, and the isolation wrapper."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edge.drivers.base import DeviceInfo
from edge.drivers.isolated import DriverHungError, DriverTimeoutError, IsolatedDriver
from edge.drivers.points import PointBase, PointError, PointReporter, convert
from edge.errors import DriverError
from wire import Reading

T0 = 1_700_000_000_000


def point(**kw: object) -> PointBase:
    return PointBase.model_validate({"metric": "m", **kw})


def test_scale_offset_decimals_give_floats() -> None:
    assert convert(point(scale=0.1, offset=-40, decimals=1), 653) == 25.3
    v = convert(point(), 7)
    assert v == 7.0 and isinstance(v, float)
    assert convert(point(), True) is True
    assert convert(point(), b" recording \n") == "recording"


def test_states_map_raw_values() -> None:
    p = point(states={1: "up", 2: "down"})
    assert convert(p, 1) == "up" and convert(p, 2.0) == "down"
    with pytest.raises(PointError, match=r"raw value '7' is not in its states \(1, 2\)"):
        convert(p, 7)
    assert convert(point(states={"recording": True, "idle": False}), "recording ") is True


def test_value_types() -> None:
    assert convert(point(value_type="number", scale=2), "0.15") == 0.3
    with pytest.raises(PointError, match="'n/a' is not a number"):
        convert(point(value_type="number"), "n/a")
    assert convert(point(value_type="bool"), 3) is True
    assert convert(point(value_type="text"), 42) == "42"


def test_not_finite_is_a_point_error() -> None:
    with pytest.raises(PointError, match="not finite"):
        convert(point(), float("nan"))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"states": {}}, "states is empty"),
        ({"states": {1: "up", 2: True}}, "same type"),
        ({"states": {1: "up"}, "scale": 2}, "cannot also have scale"),
        ({"value_type": "text", "offset": 1}, "cannot have scale or offset"),
        ({"deadband": -1}, "greater than or equal to 0"),
        ({"metric": "9bad"}, "should match pattern"),
        ({"poll_interval_s": 0}, "greater than 0"),
    ],
)
def test_bad_points_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        point(**kw)


def test_deadband_and_max_silence() -> None:
    r = PointReporter([point(deadband=0.5, max_silence_s=60)])
    assert r.report(0, 20.0, T0) is not None
    assert r.report(0, 20.3, T0 + 1000) is None  # moved 0.3 < 0.5
    assert r.report(0, 20.4, T0 + 2000) is None
    # Drift is measured from the last *reported* value: 20.5 is 0.5 away from 20.0.
    reading = r.report(0, 20.5, T0 + 3000)
    assert reading is not None and reading.value == 20.5
    assert r.report(0, 20.6, T0 + 4000) is None
    # Nothing moved enough, but a minute of silence passed: reported again.
    assert r.report(0, 20.6, T0 + 63_000) is not None


def test_on_change_for_states_and_recovery() -> None:
    r = PointReporter([point(states={1: "up", 2: "down"}, deadband=0)])
    assert r.report(0, 1, T0) is not None
    assert r.report(0, 1, T0 + 1000) is None
    assert r.report(0, 2, T0 + 2000) is not None
    assert r.failed(0, T0 + 3000) is True
    assert r.failed(0, T0 + 4000) is False  # logged once per episode
    # After an outage the value is reported again, even though it did not change.
    assert r.report(0, 2, T0 + 5000) is not None
    assert not r.is_failing(0)


def test_without_deadband_every_read_is_reported() -> None:
    r = PointReporter([point()])
    assert all(r.report(0, 1.0, T0 + i * 1000) is not None for i in range(5))


def test_per_point_poll_interval() -> None:
    r = PointReporter([point(metric="fast"), point(metric="slow", poll_interval_s=60)])
    polled_slow = []
    for k in range(13):  # a device polled every 10 s with a little jitter
        now = T0 + k * 10_000 - (k % 3) * 50
        due = r.due(now)
        assert 0 in due
        if 1 in due:
            polled_slow.append(k)
            r.report(1, 1.0, now)
        r.report(0, 1.0, now)
    assert polled_slow == [0, 6, 12]


# -- IsolatedDriver ----------------------------------------------------------------------------

DEVICE = DeviceInfo(site="s", agent="a", device="d1", kind="meter")


class Hanging:
    """A driver whose read blocks until released, like a device that never answers."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.hang = True
        self.calls = 0

    def start(self) -> None:
        return None

    def read(self, now_ms: int) -> Sequence[Reading]:
        self.calls += 1
        if self.hang:
            self.release.wait(30)
        return [Reading(ts_ms=now_ms, metric="x", value=1.0)]

    def stop(self) -> None:
        return None


class Failing(Hanging):
    def read(self, now_ms: int) -> Sequence[Reading]:
        raise DriverError("no route to device")


def test_hanging_driver_times_out_fails_fast_and_recovers() -> None:
    inner = Hanging()
    d = IsolatedDriver(inner, DEVICE, timeout_s=0.2)
    d.start()
    t = time.monotonic()
    with pytest.raises(DriverTimeoutError, match=r"read did not finish within 0.2 s") as e:
        d.read(T0)
    assert isinstance(e.value, TimeoutError) and isinstance(e.value, DriverError)
    assert 0.15 < time.monotonic() - t < 1.0
    t = time.monotonic()
    with pytest.raises(DriverHungError, match=r"read has hung for 0\.\d s"):
        d.read(T0 + 1000)
    assert time.monotonic() - t < 0.05  # fails fast, nothing queued behind the hung call
    assert inner.calls == 1
    inner.hang = False
    inner.release.set()
    deadline = time.monotonic() + 2
    while d.hung_for_s() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    readings = d.read(T0 + 2000)
    assert [r.ts_ms for r in readings] == [T0 + 2000]  # the late result was discarded
    d.stop()


def test_hanging_device_does_not_stall_a_healthy_one() -> None:
    hanging, healthy = Hanging(), Hanging()
    healthy.hang = False
    drivers = [IsolatedDriver(hanging, DEVICE, timeout_s=0.1), IsolatedDriver(healthy, DEVICE, timeout_s=0.1)]
    ok = errors = 0
    t = time.monotonic()
    for k in range(20):  # one scheduler thread, polling both in turn
        for d in drivers:
            try:
                d.read(T0 + k)
                ok += 1
            except DriverTimeoutError:
                errors += 1
    assert ok == 20 and errors == 20
    assert time.monotonic() - t < 1.0  # one timeout, then fail-fast: not 20 x 0.1 s
    hanging.release.set()
    for d in drivers:
        d.stop()


def test_errors_of_the_inner_driver_pass_through() -> None:
    d = IsolatedDriver(Failing(), DEVICE, timeout_s=1)
    with pytest.raises(DriverError, match="no route to device"):
        d.read(T0)
    with pytest.raises(DriverError, match="no route to device"):
        d.read(T0)  # not hung: the worker is free again
    d.stop()


# -- properties -------------------------------------------------------------------------------

RAWS = st.one_of(st.integers(-(2**64), 2**64), st.floats(allow_nan=True, allow_infinity=True),
                 st.booleans(), st.text(max_size=50), st.binary(max_size=50))
POINTS_ = st.sampled_from([
    point(), point(scale=1e300, offset=-3), point(decimals=2), point(value_type="number"),
    point(value_type="bool"), point(value_type="text"), point(states={1: "up", "x": "down"}),
])


@given(POINTS_, RAWS)
def test_convert_returns_a_wire_value_or_a_point_error(
    p: PointBase, raw: int | float | bool | str | bytes
) -> None:
    try:
        value = convert(p, raw)
    except PointError:
        return
    assert isinstance(value, float | bool | str)
    if isinstance(value, float):
        assert math.isfinite(value)
    if isinstance(value, str):
        assert len(value) <= 1024
    Reading(ts_ms=T0, metric=p.metric, value=value)  # the contract accepts it
