"""The BACnet/IP driver against a real bacpypes3 device application on its own loopback UDP port."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from bacpypes3.app import Application
from bacpypes3.local.analog import AnalogInputObject, AnalogValueObject
from bacpypes3.local.binary import BinaryValueObject
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.multistate import MultiStateValueObject
from bacpypes3.local.networkport import NetworkPortObject

from edge.config import parse_config
from edge.drivers import DRIVERS
from edge.drivers.bacnet import BacnetOptions
from edge.drivers.base import DeviceInfo, Driver
from edge.errors import DriverError, EdgeConfigError

T0 = 1_700_000_000_000
DEVICE = DeviceInfo(site="s", agent="a", device="ahu-1", kind="ahu")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AirHandler:
    """A BACnet device (an air handler's controller) on its own loop and UDP port."""

    def __init__(self) -> None:
        self.port = free_udp_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.objects: dict[str, Any] = {}
        self.app: Any = None
        self.error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._build())
        except BaseException as e:
            self.error = e
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()

    async def _build(self) -> None:
        self.objects = {
            "supply_temp": AnalogValueObject(objectIdentifier=("analog-value", 1), objectName="supply-temp",
                                             presentValue=18.5, units="degreesCelsius", covIncrement=0.5),
            "outside_temp": AnalogInputObject(objectIdentifier=("analog-input", 2), objectName="oat",
                                              presentValue=7.25, units="degreesCelsius"),
            "fan": BinaryValueObject(objectIdentifier=("binary-value", 3), objectName="fan",
                                     presentValue="active"),
            "mode": MultiStateValueObject(objectIdentifier=("multi-state-value", 4), objectName="mode",
                                          presentValue=2, numberOfStates=3,
                                          stateText=["off", "auto", "manual"]),
        }
        device = DeviceObject(objectIdentifier=("device", 1001), objectName="ahu-1", vendorIdentifier=999)
        port = NetworkPortObject(f"127.0.0.1/32:{self.port}", objectIdentifier=("network-port", 1),
                                 objectName="NetworkPort-1", networkNumberQuality="unknown")
        self.app = Application.from_object_list([device, port, *self.objects.values()])

    def start(self) -> AirHandler:
        self.thread.start()
        assert self.ready.wait(10), "the BACnet device did not start"
        if self.error is not None:
            raise self.error
        return self

    def set(self, name: str, value: Any) -> None:
        async def _set() -> None:
            self.objects[name].presentValue = value

        asyncio.run_coroutine_threadsafe(_set(), self.loop).result(5)

    def stop(self) -> None:
        async def _close() -> None:
            self.app.close()

        asyncio.run_coroutine_threadsafe(_close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def ahu() -> Iterator[AirHandler]:
    device = AirHandler().start()
    yield device
    device.stop()


def options(port: int, points: list[dict[str, Any]], **kw: Any) -> BacnetOptions:
    return BacnetOptions.model_validate({"address": f"127.0.0.1:{port}", "local_address": "127.0.0.1/32:0",
                                         "timeout_s": 1, "points": points, **kw})


POINTS: list[dict[str, Any]] = [
    {"metric": "supply_temp", "object": "analog-value,1", "unit": "degC"},
    {"metric": "outside_temp", "object": "analog-input:2", "unit": "degC"},
    {"metric": "fan_on", "object": "binary-value,3"},
    {"metric": "mode", "object": "multi-state-value,4", "states": {1: "off", 2: "auto", 3: "manual"}},
]


def test_reads_present_values_with_rpm(ahu: AirHandler) -> None:
    driver: Driver = DRIVERS["bacnet"].build(DEVICE, options(ahu.port, POINTS, max_objects_per_request=3))
    driver.start()
    try:
        got = {r.metric: r.value for r in driver.read(T0)}
        ahu.set("fan", "inactive")
        ahu.set("mode", 3)
        again = {r.metric: r.value for r in driver.read(T0 + 1000)}
    finally:
        driver.stop()
    assert got == {"supply_temp": 18.5, "outside_temp": 7.25, "fan_on": True, "mode": "auto"}
    assert again["fan_on"] is False and again["mode"] == "manual"


def test_unknown_object_fails_only_its_point(ahu: AirHandler, caplog: pytest.LogCaptureFixture) -> None:
    points: list[dict[str, Any]] = [*POINTS[:1], {"metric": "ghost", "object": "analog-value,99"}]
    driver = DRIVERS["bacnet"].build(DEVICE, options(ahu.port, points))
    try:
        for k in range(3):
            assert [r.metric for r in driver.read(T0 + k)] == ["supply_temp"]
    finally:
        driver.stop()
    logged = [r.getMessage() for r in caplog.records if "ghost" in r.getMessage()]
    assert len(logged) == 1 and "the device answered object: unknown-object" in logged[0]  # once
    only_ghost = DRIVERS["bacnet"].build(DEVICE, options(ahu.port, points[1:]))
    try:
        with pytest.raises(DriverError, match="none of its 1 due point"):
            only_ghost.read(T0)
    finally:
        only_ghost.stop()


def test_cov_readings_arrive_between_polls(ahu: AirHandler) -> None:
    points: list[dict[str, Any]] = [{"metric": "supply_temp", "object": "analog-value,1", "cov": True},
              {"metric": "fan_on", "object": "binary-value,3", "cov": True},
              {"metric": "outside_temp", "object": "analog-input,2"}]
    driver = DRIVERS["bacnet"].build(DEVICE, options(ahu.port, points))
    driver.start()
    try:
        first = _read_until(driver, {"supply_temp", "fan_on", "outside_temp"})
        assert first["supply_temp"] == [18.5] and first["fan_on"] == [True]
        ahu.set("supply_temp", 18.7)  # under the device's COV increment of 0.5: not notified
        ahu.set("supply_temp", 19.5)
        ahu.set("fan", "inactive")
        later = _read_until(driver, {"supply_temp", "fan_on"})
    finally:
        driver.stop()
    assert later["supply_temp"] == [19.5] and later["fan_on"] == [False]
    assert later["outside_temp"]  # the polled point is still polled


def _read_until(driver: Driver, metrics: set[str], timeout_s: float = 5) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {}
    deadline = time.monotonic() + timeout_s
    k = 0
    while time.monotonic() < deadline:
        for r in driver.read(T0 + k):
            seen.setdefault(r.metric, []).append(r.value)
        if metrics <= seen.keys():
            return seen
        k += 1
        time.sleep(0.05)
    raise AssertionError(f"got only {sorted(seen)} of {sorted(metrics)} within {timeout_s} s")


def test_refused_subscription_falls_back_to_polling(
    ahu: AirHandler, caplog: pytest.LogCaptureFixture
) -> None:
    points: list[dict[str, Any]] = [{"metric": "supply_temp", "object": "analog-value,1"},
              {"metric": "ghost", "object": "analog-value,77", "cov": True}]
    driver = DRIVERS["bacnet"].build(DEVICE, options(ahu.port, points))
    try:
        assert [r.metric for r in driver.read(T0)] == ["supply_temp"]
    finally:
        driver.stop()
    assert any("COV subscription refused" in r.getMessage() for r in caplog.records)


def test_a_silent_device_times_out() -> None:
    driver = DRIVERS["bacnet"].build(DEVICE, options(free_udp_port(), POINTS[:1], timeout_s=0.3))
    t = time.monotonic()
    with pytest.raises(DriverError, match=r"no answer within 0\.3 s"):
        driver.read(T0)
    assert time.monotonic() - t < 3
    driver.stop()


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ({"metric": "m", "object": "analog-value"}, "object must look like 'analog-value,1'"),
        ({"metric": "m", "object": "trend-log,1"}, "unsupported object type 'trend-log'"),
        ({"metric": "m", "object": "analog-value,4194304"}, "over the BACnet maximum"),
        ({"metric": "m", "object": "analog-value,1", "cov": "sometimes"},
         "cov: Input should be a valid boolean"),
    ],
)
def test_config_mistakes_name_the_key(point: dict[str, Any], message: str) -> None:
    config = {"site": "s", "agent": "a", "devices": [{
        "id": "ahu-1", "kind": "ahu", "driver": "bacnet",
        "options": {"address": "10.0.4.21", "points": [point]},
    }]}
    with pytest.raises(EdgeConfigError) as e:
        parse_config(config, source="/etc/vigil/edge.yaml")
    assert "/etc/vigil/edge.yaml" in str(e.value)
    assert "devices[0] (ahu-1).options.points[0]" in str(e.value)
    assert message in str(e.value)
