"""A three-phase energy meter on Modbus TCP: a real pymodbus server with a known register map.

The demo runs one so its edge agent reads a real protocol path (``driver: modbus``), and
the Modbus driver's tests read it too. The values are computed when a request arrives,
from the wall clock and a seed: a voltage wandering around 230 V, a load following a
daily curve, and an energy counter that integrates the power since start.

Register map (0-based protocol addresses; float32 big-endian, high word first):

=====================  =========  =======  ==================
point                  table      address  type
=====================  =========  =======  ==================
voltage_l1 (V)         input      0        float32
current_l1 (A)         input      2        float32
power_kw (kW)          input      4        float32
frequency_hz (Hz)      input      6        float32
power_factor           input      8        int16, x1000
energy_kwh (Wh)        holding    100      uint32 (scale 0.001 -> kWh)
breaker_closed         coil       0        bit
=====================  =========  =======  ==================
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import struct
import threading
import time
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

UNIT = 1

# The point map an edge agent uses to read this meter (YAML-shaped, for ``driver: modbus``).
POINTS: list[dict[str, Any]] = [
    {"metric": "voltage_l1", "table": "input", "address": 0, "type": "float32", "unit": "V", "decimals": 1},
    {"metric": "current_l1", "table": "input", "address": 2, "type": "float32", "unit": "A", "decimals": 2},
    {"metric": "power_kw", "table": "input", "address": 4, "type": "float32", "unit": "kW", "decimals": 3},
    {"metric": "frequency_hz", "table": "input", "address": 6, "type": "float32", "unit": "Hz",
     "decimals": 2, "deadband": 0.05, "max_silence_s": 60},
    {"metric": "power_factor", "table": "input", "address": 8, "type": "int16", "scale": 0.001,
     "decimals": 3},
    {"metric": "energy_kwh", "table": "holding", "address": 100, "type": "uint32", "scale": 0.001,
     "unit": "kWh", "decimals": 3},
    {"metric": "breaker_closed", "table": "coil", "address": 0},
]


def _f32(value: float) -> list[int]:
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


def _u32(value: int) -> list[int]:
    return [(value >> 16) & 0xFFFF, value & 0xFFFF]


class EnergyMeter:
    """The meter's model (sans-IO: ``registers(now_s)``) and its pymodbus server."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, seed: int = 1) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self._rng = random.Random(seed)
        self._phase = self._rng.uniform(0, 3600)
        self._last_s: float | None = None
        self._energy_wh = 1_234_567.0 + self._rng.uniform(0, 100_000)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ModbusTcpServer | None = None
        self._error: BaseException | None = None

    # -- the model -----------------------------------------------------------------------

    def registers(self, now_s: float) -> dict[tuple[str, int], list[int]]:
        """Register values at ``now_s`` by (table, address); advances the energy counter."""
        with self._lock:
            t = now_s + self._phase
            volts = 230.0 + 3.0 * math.sin(2 * math.pi * t / 600) + self._rng.gauss(0, 0.3)
            # A building's day: low at night, a peak in the afternoon.
            day = 0.5 - 0.5 * math.cos(2 * math.pi * ((now_s % 86_400) / 86_400 - 0.1))
            amps = max(0.0, 12.0 + 40.0 * day + self._rng.gauss(0, 0.8))
            pf = 0.92 + 0.03 * math.sin(2 * math.pi * t / 1800)
            kw = volts * amps * pf / 1000.0
            if self._last_s is not None and now_s > self._last_s:
                self._energy_wh += kw * 1000.0 * (now_s - self._last_s) / 3600.0
            self._last_s = now_s
            hz = 50.0 + self._rng.gauss(0, 0.02)
            return {
                ("input", 0): _f32(volts), ("input", 2): _f32(amps), ("input", 4): _f32(kw),
                ("input", 6): _f32(hz), ("input", 8): [round(pf * 1000) & 0xFFFF],
                ("holding", 100): _u32(int(self._energy_wh) & 0xFFFFFFFF),
            }

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values: Any) -> None:
        # pymodbus calls this before answering: fill in the registers the request reads.
        table = {3: "holding", 4: "input"}.get(function_code)
        if table is None:
            return
        for (tab, at), words in self.registers(time.time()).items():
            if tab != table:
                continue
            for k, word in enumerate(words):
                i = at + k - start_address
                if 0 <= i < len(current_registers):
                    current_registers[i] = word

    # -- the server ----------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> EnergyMeter:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="modbus-meter", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s) or self._error is not None:
            raise RuntimeError(f"the Modbus meter could not start on {self.host}:{self.port}: {self._error}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # serve_forever binds asynchronously
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the Modbus meter is not listening on {self.host}:{self.port}")

    def _main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as e:  # reported by start()
            self._error = e
            ready.set()
        finally:
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        holding = [SimData(address=100, values=[0, 0], datatype=DataType.REGISTERS)]
        inputs = [SimData(address=0, values=[0] * 9, datatype=DataType.REGISTERS)]
        coils = [SimData(address=0, values=[True], datatype=DataType.BITS)]
        discrete = [SimData(address=0, values=[False], datatype=DataType.BITS)]
        device = SimDevice(id=UNIT, simdata=(coils, discrete, holding, inputs), action=self._action)
        self._server = ModbusTcpServer(device, address=(self.host, self.port))
        ready.set()
        await self._server.serve_forever()

    def stop(self) -> None:
        loop, server, thread = self._loop, self._server, self._thread
        if loop is None or server is None or thread is None or loop.is_closed():
            return
        shutdown = server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
        try:
            asyncio.run_coroutine_threadsafe(shutdown, loop).result(10)
        except RuntimeError:
            shutdown.close()  # the loop ended on its own
        thread.join(10)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


__all__ = ["POINTS", "UNIT", "EnergyMeter"]
