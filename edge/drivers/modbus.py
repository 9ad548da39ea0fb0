"""Modbus TCP driver (meters, pumps, chillers), on pymodbus's synchronous client.

``pymodbus`` does the protocol: framing, transaction ids, exception responses, the TCP
connection and its timeout. This module adds what a point map needs on top: which blocks
to request, and how to turn registers into numbers.

- ``plan_blocks`` (sans-IO) groups the due points of one table into as few requests as
  the protocol allows: points whose addresses are at most ``max_gap`` apart share one
  request, up to 125 registers / 2000 bits per request (Modbus application protocol
  v1.1b3, 6.1-6.4); reading a few unused registers costs less than another round trip;
- ``decode_registers`` (sans-IO) turns 16-bit registers into int16/uint16/int32/uint32/
  int64/uint64/float32/float64 with the point's byte and word order. pymodbus's own
  ``convert_from_registers`` knows word order but not byte-swapped devices, which exist
  (some meters send CDAB and BADC), so the few lines of ``struct`` live here.

The client is synchronous on purpose: ``read`` is called from one thread (the agent's
scheduler, or an ``IsolatedDriver`` worker) and blocks for at most ``timeout_s`` per
request, which keeps ``read`` a plain loop.

Invariants:
- a connection failure, or a request without an answer, fails the whole poll
  (``DriverError``) and closes the socket, so the next poll reconnects;
- an exception response (illegal address...) fails only the points of that block: they
  are logged once when they start failing and once when they recover; if every due point
  failed, the poll fails;
- a device that answers with fewer registers or bits than asked is a failed block, never
  a value read from the wrong address.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from edge.drivers.base import DeviceInfo, DriverSpec
from edge.drivers.points import PointBase, PointError, PointReporter, Raw, check_unique_metrics
from edge.errors import DriverError
from wire import Reading

log = logging.getLogger(__name__)

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool"]
Order = Literal["big", "little"]

# struct format and register count of each register data type.
_FORMATS: dict[str, tuple[str, int]] = {
    "int16": ("h", 1), "uint16": ("H", 1),
    "int32": ("i", 2), "uint32": ("I", 2), "float32": ("f", 2),
    "int64": ("q", 4), "uint64": ("Q", 4), "float64": ("d", 4),
}
MAX_REGISTERS = 125  # per read request, Modbus spec 6.3/6.4
MAX_BITS = 2000  # per read request, Modbus spec 6.1/6.2
_BIT_TABLES = ("coil", "discrete")


class ModbusPoint(PointBase):
    """One register (or register group) or bit mapped to a metric."""

    table: Table = "holding"
    address: int = Field(ge=0, le=65_535)  # 0-based protocol address (register 40001 is 0)
    type: DataType | None = None  # default: uint16 for registers, bool for coils/inputs
    bit: int | None = Field(None, ge=0, le=15)  # one bit of a 16-bit status register
    byte_order: Order | None = None  # default: the device's
    word_order: Order | None = None  # default: the device's

    @model_validator(mode="after")
    def _type_fits_table(self) -> ModbusPoint:
        if self.table in _BIT_TABLES:
            if self.type not in (None, "bool"):
                raise ValueError(f"a {self.table} point is a bit: type must be bool, not {self.type}")
            if self.bit is not None:
                raise ValueError(f"bit is for registers; a {self.table} point is already one bit")
        else:
            if self.type == "bool" and self.bit is None:
                raise ValueError("a bool register point needs bit: the bit number (0-15) to read")
            if self.bit is not None and self.type not in (None, "bool", "uint16", "int16"):
                raise ValueError(f"bit reads one 16-bit register, not a {self.type}")
            end = self.address + self.count
            if end > 65_536:
                raise ValueError(f"a {self.data_type} at address {self.address} runs past register 65535")
        return self

    @property
    def data_type(self) -> str:
        if self.table in _BIT_TABLES or self.bit is not None:
            return "bool"
        return self.type or "uint16"

    @property
    def count(self) -> int:
        """Registers (or bits) this point occupies."""
        if self.table in _BIT_TABLES or self.bit is not None:
            return 1
        return _FORMATS[self.type or "uint16"][1]


class ModbusOptions(BaseModel):
    """``options:`` of a ``driver: modbus`` device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65_535)
    unit: int = Field(1, ge=0, le=255)  # unit / slave / device id behind a gateway
    # timeout x (retries + 1) stays under the agent's driver_timeout_s (5 s by default), so a
    # silent device fails its poll with pymodbus's own error rather than the isolation's.
    timeout_s: float = Field(2.0, gt=0, le=60)
    retries: int = Field(1, ge=0, le=5)
    byte_order: Order = "big"
    word_order: Order = "big"
    max_gap: int = Field(16, ge=0, le=MAX_REGISTERS)  # unused registers read to save a request
    points: list[ModbusPoint] = Field(min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def _metrics_unique(self) -> ModbusOptions:
        check_unique_metrics(self.points)
        return self


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` registers or bits of ``table`` from ``address``."""

    table: Table
    address: int
    count: int
    points: tuple[int, ...]  # indexes into the device's points


def plan_blocks(points: Sequence[ModbusPoint], due: Sequence[int], max_gap: int) -> list[Block]:
    """Group the due points into as few requests as the protocol's limits allow."""
    blocks: list[Block] = []
    tables: tuple[Table, ...] = ("coil", "discrete", "holding", "input")
    for table in tables:
        limit = MAX_BITS if table in _BIT_TABLES else MAX_REGISTERS
        mine = sorted((i for i in due if points[i].table == table), key=lambda i: points[i].address)
        start = end = -1
        members: list[int] = []
        for i in mine:
            p = points[i]
            p_end = p.address + p.count
            if members and p.address - end <= max_gap and max(end, p_end) - start <= limit:
                end = max(end, p_end)
                members.append(i)
                continue
            if members:
                blocks.append(Block(table, start, end - start, tuple(members)))
            start, end, members = p.address, p_end, [i]
        if members:
            blocks.append(Block(table, start, end - start, tuple(members)))
    return blocks


def decode_registers(registers: Sequence[int], data_type: str, byte_order: Order, word_order: Order) -> float:
    """Registers (16-bit, as the device sent them) as a number of ``data_type``."""
    fmt, count = _FORMATS[data_type]
    if len(registers) != count:
        raise ValueError(f"{data_type} needs {count} register(s), got {len(registers)}")
    words = list(registers) if word_order == "big" else list(reversed(registers))
    raw = b"".join(w.to_bytes(2, "big" if byte_order == "big" else "little") for w in words)
    value: float = struct.unpack(">" + fmt, raw)[0]
    return value


def encode_registers(value: float, data_type: str, byte_order: Order, word_order: Order) -> list[int]:
    """The inverse of ``decode_registers`` (for tests and simulators)."""
    fmt, _ = _FORMATS[data_type]
    raw = struct.pack(">" + fmt, int(value) if fmt not in "fd" else value)
    words = [int.from_bytes(raw[i:i + 2], "big" if byte_order == "big" else "little")
             for i in range(0, len(raw), 2)]
    return words if word_order == "big" else list(reversed(words))


class ModbusDriver:
    """Polls one Modbus TCP unit through a pymodbus client."""

    def __init__(self, device: DeviceInfo, options: ModbusOptions) -> None:
        self.device = device
        self.options = options
        self.reporter = PointReporter(options.points)
        self._client: ModbusTcpClient | None = None

    @property
    def name(self) -> str:
        o = self.options
        return f"{self.device.device} (modbus {o.host}:{o.port} unit {o.unit})"

    def start(self) -> None:
        self._connect()

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated

    def read(self, now_ms: int) -> Sequence[Reading]:
        client = self._client or self._connect()
        due = self.reporter.due(now_ms)
        points = self.options.points
        out: list[Reading] = []
        failed = 0
        for block in plan_blocks(points, due, self.options.max_gap):
            try:
                values = self._request(client, block)
            except PointError as e:
                for i in block.points:
                    failed += 1
                    if self.reporter.failed(i, now_ms):
                        log.warning("device %s: point %s: %s (logged again when it recovers)",
                                    self.name, points[i].metric, e)
                continue
            for i in block.points:
                raw = partial(self._value, points[i], block, values)
                reading, ok = self.reporter.read_point(i, raw, now_ms, device=self.name)
                failed += not ok
                if reading is not None:
                    out.append(reading)
        if due and failed == len(due):
            raise DriverError(f"device {self.name}: none of its {len(due)} due point(s) could be read")
        return out

    def _connect(self) -> ModbusTcpClient:
        o = self.options
        client = ModbusTcpClient(o.host, port=o.port, timeout=o.timeout_s, retries=o.retries)
        if not client.connect():  # type: ignore[no-untyped-call]
            client.close()  # type: ignore[no-untyped-call]
            raise DriverError(f"device {self.name}: cannot connect")
        self._client = client
        return client

    def _request(self, client: ModbusTcpClient, block: Block) -> list[int] | list[bool]:
        read = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[block.table]
        try:
            response = read(block.address, count=block.count, device_id=self.options.unit)
        except ModbusException as e:
            # No answer or a broken connection: the device, not a point, is the problem.
            self.stop()
            raise DriverError(f"device {self.name}: {e}") from None
        where = f"{block.table} {block.address}..{block.address + block.count - 1}"
        if response.isError():
            raise PointError(f"{where}: the device answered with {response}")
        values: list[int] | list[bool] = (
            list(response.bits) if block.table in _BIT_TABLES else list(response.registers)
        )
        # Bits arrive padded to a whole byte; registers must be exactly what was asked.
        if len(values) < block.count:
            raise PointError(f"{where}: the device sent {len(values)} value(s) for {block.count}")
        return values

    def _value(self, p: ModbusPoint, block: Block, values: list[int] | list[bool]) -> Raw:
        at = p.address - block.address
        if p.table in _BIT_TABLES:
            return bool(values[at])
        if p.bit is not None:
            return bool((int(values[at]) >> p.bit) & 1)
        words = [int(v) for v in values[at:at + p.count]]
        o = self.options
        byte_order, word_order = p.byte_order or o.byte_order, p.word_order or o.word_order
        return decode_registers(words, p.data_type, byte_order, word_order)


SPEC: DriverSpec[ModbusOptions] = DriverSpec(
    options=ModbusOptions,
    create=ModbusDriver,
    summary="Modbus TCP registers, coils and discrete inputs (pymodbus)",
)

__all__ = ["SPEC", "Block", "ModbusDriver", "ModbusOptions", "ModbusPoint", "decode_registers",
           "encode_registers", "plan_blocks"]
