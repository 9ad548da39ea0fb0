"""The Modbus TCP driver against a real pymodbus server on loopback, with a known register map."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.config import parse_config
from edge.drivers import DRIVERS
from edge.drivers.base import DeviceInfo
from edge.drivers.modbus import ModbusOptions, ModbusPoint, decode_registers, encode_registers, plan_blocks
from edge.errors import DriverError, EdgeConfigError
from tests.services import free_port

T0 = 1_700_000_000_000
DEVICE = DeviceInfo(site="s", agent="a", device="meter-1", kind="meter")
UNIT = 3


def _words(fmt: str, value: float, *, swap_words: bool = False, swap_bytes: bool = False) -> list[int]:
    """Registers of a value as a device with that byte/word order sends them (independent of the driver)."""
    raw = struct.pack(">" + fmt, value)
    words = [raw[i:i + 2] for i in range(0, len(raw), 2)]
    if swap_bytes:
        words = [w[::-1] for w in words]
    if swap_words:
        words.reverse()
    return [int.from_bytes(w, "big") for w in words]


# The register map of the test meter (holding registers, input registers, coils, discrete inputs).
HOLDING = [
    SimData(address=0, values=230, datatype=DataType.UINT16),  # voltage
    SimData(address=1, values=-125, datatype=DataType.INT16),  # power factor x1000
    SimData(address=2, values=123_456, datatype=DataType.UINT32),  # energy, Wh (big-endian words)
    SimData(address=4, values=-70_000, datatype=DataType.INT32),
    SimData(address=6, values=49.95, datatype=DataType.FLOAT32),  # frequency
    SimData(address=8, values=[0] * 22, datatype=DataType.REGISTERS),  # reserved
    # 30: a float32 sent low word first (CDAB), 32: byte-swapped words (BADC)
    SimData(address=30, values=_words("f", 21.5, swap_words=True), datatype=DataType.REGISTERS),
    SimData(address=32, values=_words("f", -3.25, swap_bytes=True), datatype=DataType.REGISTERS),
    SimData(address=34, values=_words("d", 1234.5678), datatype=DataType.REGISTERS),
    SimData(address=38, values=0b0000_0000_0010_0100, datatype=DataType.REGISTERS),  # status word
    # 39 .. 199 do not exist: reading them is an exception response
    SimData(address=200, values=1, datatype=DataType.UINT16),  # run mode
]
INPUT = [SimData(address=0, values=[215, 216], datatype=DataType.REGISTERS)]
COILS = [SimData(address=0, values=[True, False, True], datatype=DataType.BITS)]
DISCRETE = [SimData(address=0, values=[False, True], datatype=DataType.BITS)]


class Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.server: ModbusTcpServer | None = None

    def _count(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.requests += 1
        return pdu

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        device = SimDevice(id=UNIT, simdata=(COILS, DISCRETE, HOLDING, INPUT))
        self.server = ModbusTcpServer(device, address=("127.0.0.1", self.port), trace_pdu=self._count)
        self.ready.set()
        await self.server.serve_forever()

    def start(self) -> Server:
        self.thread.start()
        assert self.ready.wait(10), "pymodbus server did not start"
        # serve_forever binds asynchronously: wait until the port accepts.
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                threading.Event().wait(0.05)
        else:
            raise AssertionError(f"pymodbus server is not listening on {self.port}")
        self.requests = 0
        return self

    def stop(self) -> None:
        if self.server is not None:
            shutdown = self.server.shutdown()  # type: ignore[no-untyped-call]
            asyncio.run_coroutine_threadsafe(shutdown, self.loop).result(10)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server().start()
    yield s
    s.stop()


def options(port: int, points: list[dict[str, Any]], **kw: Any) -> ModbusOptions:
    return ModbusOptions.model_validate({"host": "127.0.0.1", "port": port, "unit": UNIT,
                                         "timeout_s": 1, "retries": 0, "points": points, **kw})


METER = [
    {"metric": "voltage", "address": 0, "unit": "V"},
    {"metric": "power_factor", "address": 1, "type": "int16", "scale": 0.001},
    {"metric": "energy_kwh", "address": 2, "type": "uint32", "scale": 0.001, "unit": "kWh"},
    {"metric": "balance", "address": 4, "type": "int32"},
    {"metric": "frequency", "address": 6, "type": "float32", "unit": "Hz", "decimals": 2},
    {"metric": "temp_cdab", "address": 30, "type": "float32", "word_order": "little"},
    {"metric": "temp_badc", "address": 32, "type": "float32", "byte_order": "little"},
    {"metric": "total", "address": 34, "type": "float64"},
    {"metric": "alarm", "address": 38, "bit": 2},
    {"metric": "overheat", "address": 38, "bit": 5, "states": {"true": "hot", "false": "ok"}},
    {"metric": "mode", "address": 200, "states": {0: "off", 1: "auto", 2: "manual"}},
    {"metric": "l1_volts", "table": "input", "address": 0, "scale": 1.0},
    {"metric": "l2_volts", "table": "input", "address": 1},
    {"metric": "pump_on", "table": "coil", "address": 0},
    {"metric": "valve_open", "table": "coil", "address": 2},
    {"metric": "door", "table": "discrete", "address": 1},
]


def test_reads_the_register_map(server: Server) -> None:
    driver = DRIVERS["modbus"].build(DEVICE, options(server.port, METER))
    driver.start()
    try:
        server.requests = 0
        got = {r.metric: r.value for r in driver.read(T0)}
    finally:
        driver.stop()
    assert got == {
        "voltage": 230.0, "power_factor": -0.125, "energy_kwh": 123.456, "balance": -70000.0,
        "frequency": 49.95, "temp_cdab": 21.5, "temp_badc": -3.25, "total": 1234.5678,
        "alarm": True, "overheat": "hot", "mode": "auto", "l1_volts": 215.0, "l2_volts": 216.0,
        "pump_on": True, "valve_open": True, "door": True,
    }
    assert all(isinstance(v, float) for k, v in got.items() if k not in ("alarm", "overheat", "mode",
                                                                        "pump_on", "valve_open", "door"))
    # Holding 0..7 and 30..39 (22 unused registers between them are more than max_gap 16)
    # and 200; one request each for input registers, coils and discrete inputs.
    assert server.requests == 6


def test_an_exception_response_fails_only_its_points(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    points = [{"metric": "voltage", "address": 0}, {"metric": "ghost", "address": 120}]
    driver = DRIVERS["modbus"].build(DEVICE, options(server.port, points, max_gap=4))
    try:
        for k in range(3):
            assert [r.metric for r in driver.read(T0 + k)] == ["voltage"]
    finally:
        driver.stop()
    logged = [r.getMessage() for r in caplog.records if "ghost" in r.getMessage()]
    assert len(logged) == 1 and "holding 120..120" in logged[0]  # once per episode


def test_every_point_failing_fails_the_poll(server: Server) -> None:
    driver = DRIVERS["modbus"].build(DEVICE, options(server.port, [{"metric": "ghost", "address": 120}]))
    with pytest.raises(DriverError, match="none of its 1 due point"):
        driver.read(T0)
    driver.stop()


def test_wrong_unit_id_is_a_failed_poll(server: Server) -> None:
    driver = DRIVERS["modbus"].build(DEVICE, options(server.port, METER[:1], unit=9))
    with pytest.raises(DriverError):
        driver.read(T0)
    driver.stop()


def test_no_server_is_a_driver_error() -> None:
    driver = DRIVERS["modbus"].build(DEVICE, options(free_port(), METER[:1]))
    with pytest.raises(DriverError, match="cannot connect"):
        driver.start()


def test_a_silent_device_times_out_and_the_next_poll_reconnects(server: Server) -> None:
    # A TCP peer that accepts and never answers (a wedged gateway).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        opts = options(silent.getsockname()[1], METER[:1], timeout_s=0.3)
        driver = DRIVERS["modbus"].build(DEVICE, opts)
        with pytest.raises(DriverError):
            driver.read(T0)
        driver.stop()


def test_deadband_and_slow_points_reduce_requests(server: Server) -> None:
    points = [{"metric": "voltage", "address": 0, "deadband": 1},
              {"metric": "mode", "address": 200, "poll_interval_s": 60, "states": {1: "auto"}}]
    driver = DRIVERS["modbus"].build(DEVICE, options(server.port, points))
    try:
        server.requests = 0
        first = driver.read(T0)
        second = driver.read(T0 + 10_000)
    finally:
        driver.stop()
    assert [r.metric for r in first] == ["voltage", "mode"]
    assert second == []  # voltage unchanged (deadband), mode not due
    assert server.requests == 3


def test_plan_blocks_respects_gaps_and_limits() -> None:
    pts = [ModbusPoint(metric=f"p{a}", address=a, type="uint32") for a in (0, 2, 10, 40, 200)]
    pts.append(ModbusPoint(metric="big", address=300, type="float64"))
    pts += [ModbusPoint(metric=f"r{a}", address=a) for a in range(1000, 1130)]
    blocks = plan_blocks(pts, range(len(pts)), max_gap=8)
    spans = [(b.table, b.address, b.count) for b in blocks]
    assert spans == [("holding", 0, 12), ("holding", 40, 2), ("holding", 200, 2), ("holding", 300, 4),
                     ("holding", 1000, 125), ("holding", 1125, 5)]


@pytest.mark.parametrize("data_type", ["int16", "uint16", "int32", "uint32", "int64", "uint64",
                                       "float32", "float64"])
@pytest.mark.parametrize("byte_order", ["big", "little"])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_codec_round_trips(data_type: str, byte_order: Any, word_order: Any) -> None:
    value = {"int16": -2, "uint16": 65535, "int32": -100_000, "uint32": 4_000_000_000,
             "int64": -(2**40), "uint64": 2**63, "float32": 1.5, "float64": -2.25e10}[data_type]
    regs = encode_registers(value, data_type, byte_order, word_order)
    assert decode_registers(regs, data_type, byte_order, word_order) == value


def test_point_map_mistakes_stop_the_agent_at_start() -> None:
    bad = {
        "site": "s", "agent": "a",
        "devices": [{"id": "meter-1", "kind": "meter", "driver": "modbus", "options": {
            "host": "10.0.0.5",
            "points": [
                {"metric": "voltage", "address": 0},
                {"metric": "pump", "table": "coil", "address": 3, "type": "float32"},
                {"metric": "voltage", "address": 70_000},
                {"metric": "x", "address": 1, "kind": "float"},
            ],
        }}],
    }
    with pytest.raises(EdgeConfigError) as e:
        parse_config(bad, source="/etc/vigil/edge.yaml")
    text = str(e.value)
    assert "/etc/vigil/edge.yaml" in text
    assert "devices[0] (meter-1).options.points[1]: Value error, a coil point is a bit" in text
    assert ("devices[0] (meter-1).options.points[2].address: "
            "Input should be less than or equal to 65535") in text
    assert "devices[0] (meter-1).options.points[3].kind: Extra inputs are not permitted" in text


def test_the_simulated_energy_meter_reads_through_the_driver() -> None:
    from simulators.modbus_meter import POINTS as METER_POINTS
    from simulators.modbus_meter import UNIT as METER_UNIT
    from simulators.modbus_meter import EnergyMeter

    meter = EnergyMeter(seed=3).start()
    driver = DRIVERS["modbus"].build(DEVICE, ModbusOptions.model_validate(
        {"host": "127.0.0.1", "port": meter.port, "unit": METER_UNIT, "points": METER_POINTS}))
    try:
        first = {r.metric: r.value for r in driver.read(T0)}
        second = {r.metric: r.value for r in driver.read(T0 + 1000)}
    finally:
        driver.stop()
        meter.stop()
    assert set(first) == {p["metric"] for p in METER_POINTS}
    assert isinstance(first["voltage_l1"], float) and 220 < first["voltage_l1"] < 240
    assert isinstance(first["power_kw"], float) and first["power_kw"] > 0
    pf, e1, e2 = first["power_factor"], first["energy_kwh"], second["energy_kwh"]
    assert isinstance(pf, float) and pf == round(pf, 3) and first["breaker_closed"] is True
    assert isinstance(e1, float) and isinstance(e2, float) and e2 >= e1
