"""Run one device's driver on its own thread, so a driver that hangs stalls only itself.

The agent's scheduler reads every device from one thread. A Modbus gateway that accepts
the connection and never answers, or a library that blocks past its own timeout, would
hold that thread and with it every other device. ``IsolatedDriver`` wraps any driver: its
calls run on a dedicated worker thread and the caller waits at most ``timeout_s``.

Invariants:
- a call that does not finish within ``timeout_s`` raises ``DriverTimeoutError`` (a
  ``DriverError`` and a ``TimeoutError``); its result, if it ever comes, is discarded
  (the readings would be stamped with a poll time the runtime already counted as failed);
- while a call still hangs, every further ``start``/``read`` fails at once with a
  ``DriverHungError`` saying how long it has hung; nothing queues up behind it, so a
  device that hangs for an hour holds one thread, not 360 pending polls;
- when the hung call returns (or raises) the worker is free again and the next call goes
  through: the device recovers without a restart of the agent;
- any other exception of the wrapped driver is re-raised unchanged on the caller's thread
  (the runtime counts it as that device's failed poll);
- the worker is a daemon thread: a driver that never returns cannot keep the agent's
  process from exiting; ``stop`` waits at most ``timeout_s`` for the inner ``stop``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.drivers.base import DeviceInfo, Driver
from edge.errors import DriverError
from wire import Reading

log = logging.getLogger(__name__)


class DriverTimeoutError(DriverError, TimeoutError):
    """A driver call did not finish within its timeout (it may still be running)."""


class DriverHungError(DriverTimeoutError):
    """A previous call of the driver is still running; this one was not attempted."""


@dataclass(slots=True)
class _Call:
    what: str
    fn: Callable[[], Any]
    started: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class IsolatedDriver:
    """A ``Driver`` whose calls run on their own thread, each bounded by ``timeout_s``."""

    def __init__(self, inner: Driver, device: DeviceInfo, *, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.inner = inner
        self.device = device
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._busy: _Call | None = None  # the call the worker is running, if any
        # Each worker has its own queue: a stop's sentinel must reach the worker it was
        # meant for, not a fresh one started after a hung worker was abandoned.
        self._worker: tuple[threading.Thread, queue.SimpleQueue[_Call | None]] | None = None

    @property
    def name(self) -> str:
        d = self.device
        return f"{d.site}/{d.agent}/{d.device}"

    def start(self) -> None:
        self._call("start", self.inner.start)

    def read(self, now_ms: int) -> Sequence[Reading]:
        result: Sequence[Reading] = self._call("read", lambda: self.inner.read(now_ms))
        return result

    def stop(self) -> None:
        try:
            self._call("stop", self.inner.stop)
        except DriverTimeoutError as e:
            # Stopping must not fail the agent's shutdown; the daemon worker is abandoned.
            log.warning("device %s: %s; abandoning its worker thread", self.name, e)
        finally:
            if self._worker is not None:
                self._worker[1].put(None)
                self._worker = None

    def hung_for_s(self) -> float | None:
        """How long the current call has been running, or None if the worker is idle."""
        with self._lock:
            busy = self._busy
        return None if busy is None else time.monotonic() - busy.started

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        call = _Call(what, fn)
        with self._lock:
            busy = self._busy
            if busy is None:
                call.started = time.monotonic()
                self._busy = call
        if busy is not None:
            hung = time.monotonic() - busy.started
            raise DriverHungError(
                f"device {self.name}: its driver's {busy.what} has hung for {hung:.1f} s "
                f"(timeout {self.timeout_s:g} s); not calling {what} until it returns"
            )
        self._ensure_worker().put(call)
        if not call.done.wait(self.timeout_s):
            raise DriverTimeoutError(
                f"device {self.name}: its driver's {what} did not finish within {self.timeout_s:g} s"
            )
        if call.error is not None:
            raise call.error
        return call.result

    def _ensure_worker(self) -> queue.SimpleQueue[_Call | None]:
        if self._worker is None or not self._worker[0].is_alive():
            jobs: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
            thread = threading.Thread(
                target=self._run, args=(jobs,), name=f"driver-{self.device.device}", daemon=True
            )
            thread.start()
            self._worker = (thread, jobs)
        return self._worker[1]

    def _run(self, jobs: queue.SimpleQueue[_Call | None]) -> None:
        while True:
            call = jobs.get()
            if call is None:
                return
            try:
                call.result = call.fn()
            except BaseException as e:  # handed to the caller, whatever it is
                call.error = e
            finally:
                late = time.monotonic() - call.started
                with self._lock:
                    self._busy = None
                call.done.set()
            if late > self.timeout_s:
                log.info(
                    "device %s: its driver's %s returned after %.1f s (over the %g s timeout); "
                    "the device is polled again",
                    self.name, call.what, late, self.timeout_s,
                )


__all__ = ["DriverHungError", "DriverTimeoutError", "IsolatedDriver"]
