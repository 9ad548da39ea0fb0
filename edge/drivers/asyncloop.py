"""A private asyncio event loop on its own thread, for drivers built on asyncio libraries.

pysnmp 7 and bacpypes3 are asyncio-only, while a ``Driver`` is called synchronously from
the agent's scheduler. Each such driver owns one ``LoopThread``: its library objects
(SNMP engine, BACnet application) live on that loop for the driver's lifetime, so engine
state (SNMPv3 engine discovery, BACnet COV subscriptions) survives between polls and
unsolicited datagrams (COV notifications) are handled while no poll is running.

Invariants:
- ``run`` waits at most ``timeout_s`` and then cancels the coroutine on the loop, so a
  poll never leaves work running behind the caller's back;
- ``stop`` is idempotent and ends the thread; the thread is a daemon so a loop stuck in
  a library call cannot keep the process alive.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from edge.errors import DriverError

T = TypeVar("T")


class LoopThread:
    """One event loop running on a daemon thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._main, args=(loop,), name=self.name, daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coro`` on the loop and wait for its result; DriverError after ``timeout_s``."""
        if self._loop is None:
            coro.close()
            raise DriverError(f"{self.name}: the driver's event loop is not running")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DriverError(f"{self.name}: no result within {timeout_s:g} s") from None

    def stop(self, timeout_s: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)


__all__ = ["LoopThread"]
