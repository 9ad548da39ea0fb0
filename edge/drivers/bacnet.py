"""BACnet/IP driver (air handlers, VAVs, chillers), on bacpypes3.

``bacpypes3`` does the protocol: BVLL/NPDU/APDU encoding, invoke ids, segmentation, and
the ReadProperty, ReadPropertyMultiple and SubscribeCOV services. This module maps
objects to metrics, runs bacpypes3's asyncio application on the driver's own event loop
(``LoopThread``) and turns what it returns into readings.

- Polled points: the present-value of every due point, in ReadPropertyMultiple requests of
  at most ``max_objects_per_request`` objects (a device that rejects RPM is read with one
  ReadProperty per point from then on).
- COV points (``cov: true``): the driver subscribes (SubscribeCOV, unconfirmed
  notifications, renewed by bacpypes3 before ``cov_lifetime_s`` runs out) and buffers each
  notified present-value with the edge time it arrived; ``read`` returns the buffer. A
  device that refuses the subscription (no COV support for that object) is polled instead,
  logged once, and the subscription is tried again after ``cov_retry_s``. A renewal that
  fails drops the subscription and the point is polled until it is re-established. (So a
  device whose points are all COV is seen failing only when a renewal fails, within
  ``cov_lifetime_s``: give it one polled point to notice an outage at the next poll.)

Values: Real/Unsigned/Integer present-values become floats (a multi-state object's
present-value is its 1-based state number: map it with ``states``), binary ``active`` /
``inactive`` become true / false, other enumerations their name.

Invariants:
- every device has its own bacpypes3 application on its own UDP port (``local_address``,
  port 0 = any free one): replies and COV notifications come back to the port the
  request left from, so several devices never share a socket's state;
- a request without an answer within ``timeout_s`` fails the poll (``DriverError``); a
  property error (unknown object) fails only that point, logged once per episode; if
  every due point failed, the poll fails;
- COV readings are returned once, oldest first, stamped when they arrived; the buffer is
  bounded (``max_buffered``), the oldest dropped first and the drops logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.drivers.asyncloop import LoopThread
from edge.drivers.base import DeviceInfo, DriverSpec
from edge.drivers.points import PointBase, PointError, PointReporter, Raw, check_unique_metrics
from edge.errors import DriverError
from wire import Reading

log = logging.getLogger(__name__)

# Object types whose present-value is a plain reading; others (schedules, trend logs) are
# not points. Names as BACnet (and bacpypes3) spell them.
OBJECT_TYPES = (
    "analog-input", "analog-output", "analog-value",
    "binary-input", "binary-output", "binary-value",
    "multi-state-input", "multi-state-output", "multi-state-value",
    "large-analog-value", "integer-value", "positive-integer-value",
    "accumulator", "pulse-converter",
)
_OBJECT = re.compile(r"^\s*([a-z-]+)\s*[,:]\s*([0-9]{1,7})\s*$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-]+(/[0-9]{1,2})?(:[0-9]{1,5})?$")
MAX_INSTANCE = 4_194_303  # 22-bit object instance (ASHRAE 135 20.2.14)


class BacnetPoint(PointBase):
    """One object's present-value mapped to a metric."""

    object: str  # "analog-value,1"
    cov: bool = False

    @field_validator("object")
    @classmethod
    def _object_id(cls, v: str) -> str:
        m = _OBJECT.match(v)
        if not m:
            raise ValueError(f"object must look like 'analog-value,1' (type,instance), got {v!r}")
        kind, instance = m.group(1), int(m.group(2))
        if kind not in OBJECT_TYPES:
            raise ValueError(f"unsupported object type {kind!r} (known: {', '.join(OBJECT_TYPES)})")
        if instance > MAX_INSTANCE:
            raise ValueError(f"object instance {instance} is over the BACnet maximum {MAX_INSTANCE}")
        return f"{kind},{instance}"


class BacnetOptions(BaseModel):
    """``options:`` of a ``driver: bacnet`` device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(pattern=_ADDRESS.pattern)  # the device: "10.0.4.21" or "10.0.4.21:47808"
    # Where this driver's application binds, as bacpypes3 writes it ("10.0.4.2/24:0");
    # "host" is the gateway's primary address. Port 0 lets the kernel choose a free one.
    local_address: str = Field("host:0", pattern=r"^(host|[0-9.]+(/[0-9]{1,2})?)(:[0-9]{1,5})?$")
    local_device_instance: int = Field(4_194_000, ge=0, le=MAX_INSTANCE - 1)
    timeout_s: float = Field(3.0, gt=0, le=60)
    max_objects_per_request: int = Field(16, ge=1, le=100)
    cov_lifetime_s: int = Field(300, ge=60, le=86_400)
    cov_retry_s: float = Field(300.0, ge=1, le=86_400)
    max_buffered: int = Field(10_000, ge=10, le=1_000_000)
    points: list[BacnetPoint] = Field(min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def _checks(self) -> BacnetOptions:
        check_unique_metrics(self.points)
        seen: dict[str, str] = {}
        for p in self.points:
            if p.cov and p.object in seen:
                # One subscription per object: two COV points on one object would need two.
                raise ValueError(f"object {p.object} is subscribed twice ({seen[p.object]}, {p.metric})")
            if p.cov:
                seen[p.object] = p.metric
        return self


class _Failed:
    """A per-point failure of a ReadProperty, turned into a PointError by ``_raw``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _raw(value: Any) -> Raw:
    """A bacpypes3 present-value as a plain value; PointError for a property error."""
    # bacpypes3 is imported where it is used: it takes about a second to import (it builds
    # its type tables), which agents without a BACnet device and config checks never need.
    from bacpypes3.basetypes import BinaryPV, ErrorType
    from bacpypes3.primitivedata import CharacterString, Double, Enumerated, Integer, Real, Unsigned

    if value is None:
        raise PointError("the device left the object out of its answer")
    if isinstance(value, _Failed):
        raise PointError(value.reason)
    if isinstance(value, ErrorType):
        raise PointError(f"the device answered {value.errorClass}: {value.errorCode}")
    if isinstance(value, BinaryPV):
        return str(value) == "active" or int(value) == 1
    if isinstance(value, Enumerated):
        return str(value)
    if isinstance(value, Real | Double):
        return float(value)
    if isinstance(value, Unsigned | Integer):
        return int(value)
    if isinstance(value, CharacterString):
        return str(value)
    if isinstance(value, bool | int | float | str):
        return value
    raise PointError(f"unsupported present-value type {type(value).__name__}")


@dataclass(slots=True)
class _Subscription:
    task: asyncio.Task[None]
    context: Any = None  # bacpypes3's SubscriptionContextManager once subscribed


class BacnetDriver:
    """Reads one BACnet/IP device; COV points arrive by subscription."""

    def __init__(self, device: DeviceInfo, options: BacnetOptions) -> None:
        self.device = device
        self.options = options
        self.reporter = PointReporter(options.points)
        self._loop = LoopThread(f"bacnet-{device.device}")
        self._app: Any = None
        self._rpm = True
        self._subs: dict[int, _Subscription] = {}
        self._cov_refused_until: dict[int, float] = {}  # monotonic time of the next attempt
        # Notifications land here from the loop thread; read() drains it from the caller's.
        self._lock = threading.Lock()
        self._buffer: collections.deque[tuple[int, Any, int]] = collections.deque()
        self._dropped = 0

    @property
    def name(self) -> str:
        return f"{self.device.device} (bacnet {self.options.address})"

    # -- lifecycle (caller's thread) -------------------------------------------------------

    def start(self) -> None:
        self._loop.start()
        if self._app is None:
            self._loop.run(self._open(), self.options.timeout_s + 2)

    def stop(self) -> None:
        if self._app is not None and self._loop.running:
            try:
                self._loop.run(self._close(), self.options.timeout_s + 2)
            except Exception as e:  # stopping anyway; never fail the agent's shutdown
                log.warning("device %s: closing the BACnet application failed: %s", self.name, e)
        self._app = None
        self._subs.clear()
        self._loop.stop()

    def read(self, now_ms: int) -> Sequence[Reading]:
        if self._app is None:
            self.start()
        budget = self.options.timeout_s * 2 + 2
        subscribed: set[int] = self._loop.run(self._maintain_subscriptions(), budget)
        out = self._drain()
        due = [i for i in self.reporter.due(now_ms) if i not in subscribed]
        if not due:
            return out
        failed = 0
        step = self.options.max_objects_per_request
        for first in range(0, len(due), step):
            chunk = due[first:first + step]
            values = self._loop.run(self._read_present_values(chunk), budget * 2)
            for i, value in zip(chunk, values, strict=True):
                reading, ok = self._report(i, value, now_ms)
                failed += not ok
                if reading is not None:
                    out.append(reading)
        if failed == len(due):
            raise DriverError(f"device {self.name}: none of its {len(due)} due point(s) could be read")
        return out

    def _report(self, i: int, value: Any, now_ms: int) -> tuple[Reading | None, bool]:
        where = str(self.options.points[i].object)
        return self.reporter.read_point(i, partial(_raw, value), now_ms, device=self.name, where=where)

    def _drain(self) -> list[Reading]:
        with self._lock:
            items = list(self._buffer)
            self._buffer.clear()
            dropped, self._dropped = self._dropped, 0
        if dropped:
            log.warning("device %s: %d COV notification(s) dropped: the buffer of %d was full",
                        self.name, dropped, self.options.max_buffered)
        out = []
        for i, value, at_ms in items:
            reading, _ = self._report(i, value, at_ms)
            if reading is not None:
                out.append(reading)
        return out

    # -- on the driver's loop --------------------------------------------------------------

    async def _open(self) -> None:
        from bacpypes3.app import Application
        from bacpypes3.local.device import DeviceObject
        from bacpypes3.local.networkport import NetworkPortObject

        o = self.options
        device = DeviceObject(
            objectIdentifier=("device", o.local_device_instance),
            objectName=f"vigil-{self.device.agent}-{self.device.device}"[:64],
            vendorIdentifier=999,  # ASHRAE's "unregistered vendor"; we are a client only
        )
        port = NetworkPortObject(
            o.local_address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1",
            networkNumberQuality="unknown",
        )
        try:
            self._app = Application.from_object_list([device, port])
        except OSError as e:
            raise DriverError(f"device {self.name}: cannot bind {o.local_address}: {e}") from None

    async def _close(self) -> None:
        for sub in self._subs.values():
            sub.task.cancel()
        if self._subs:
            await asyncio.gather(*(s.task for s in self._subs.values()), return_exceptions=True)
        app, self._app = self._app, None
        if app is not None:
            app.close()

    def _address(self) -> Any:
        from bacpypes3.pdu import Address

        return Address(self.options.address)

    async def _request(self, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, self.options.timeout_s)
        except TimeoutError:
            raise DriverError(f"device {self.name}: no answer within {self.options.timeout_s:g} s") from None

    async def _read_present_values(self, indexes: list[int]) -> list[Any]:
        from bacpypes3.apdu import ErrorRejectAbortNack
        from bacpypes3.primitivedata import ObjectIdentifier

        points = self.options.points
        address = self._address()
        if self._rpm:
            spec: list[Any] = []
            for i in indexes:
                spec += [ObjectIdentifier(points[i].object), ["present-value"]]
            try:
                response = await self._request(self._app.read_property_multiple(address, spec))
            except ErrorRejectAbortNack as e:
                response = e
            if isinstance(response, list):
                by_object = {str(ObjectIdentifier(oid)): value for oid, _prop, _index, value in response}
                return [by_object.get(str(ObjectIdentifier(points[i].object))) for i in indexes]
            if _unsupported(response):
                log.info("device %s: it does not support ReadPropertyMultiple; reading one property "
                         "at a time", self.name)
                self._rpm = False
            elif str(getattr(response, "errorClass", "")) not in ("object", "property"):
                raise DriverError(f"device {self.name}: ReadPropertyMultiple failed: {response}")
            # else: a device answers an RPM in which no object could be read with one error
            # for the whole request (ASHRAE 135 15.7.1.3.1): read them one by one below, so
            # each point gets its own error.
        values = []
        for i in indexes:
            try:
                value = await self._request(
                    self._app.read_property(address, ObjectIdentifier(points[i].object), "present-value"))
            except ErrorRejectAbortNack as e:
                value = _Failed(f"the device answered {e}")
            values.append(value)
        return values

    async def _maintain_subscriptions(self) -> set[int]:
        """Start missing subscriptions; return the indexes of points served by COV."""
        now = time.monotonic()
        active: set[int] = set()
        starting: dict[int, asyncio.Future[bool]] = {}
        for i, p in enumerate(self.options.points):
            if not p.cov:
                continue
            sub = self._subs.get(i)
            if sub is not None and sub.context is not None:
                # bacpypes3 renews in a task of its own and keeps a failure there: a
                # renewal that failed means the device will stop notifying.
                refresh = sub.context.refresh_subscription_task
                if refresh is not None and refresh.done() and not refresh.cancelled() \
                        and refresh.exception() is not None:
                    log.warning("device %s: point %s: renewing its COV subscription failed (%s); "
                                "polling it until it is back", self.name, p.metric, refresh.exception())
                    sub.task.cancel()
            if sub is not None and sub.task.done():
                self._subs.pop(i)
                sub = None
            if sub is None:
                if self._cov_refused_until.get(i, 0.0) > now:
                    continue
                started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self._subs[i] = _Subscription(asyncio.create_task(self._subscribe(i, started)))
                starting[i] = started
                continue
            active.add(i)
        # Subscribed together: a device that does not answer costs one timeout, not one each.
        for i, started in starting.items():
            if await started:
                active.add(i)
        return active

    async def _subscribe(self, i: int, started: asyncio.Future[bool]) -> None:
        # bacpypes3 raises error, reject and abort PDUs as exceptions that derive from
        # BaseException, not Exception, so they are caught by name: a plain `except
        # Exception` would let a refused subscription end this task silently.
        from bacpypes3.apdu import ErrorRejectAbortNack
        from bacpypes3.primitivedata import ObjectIdentifier

        p = self.options.points[i]
        o = self.options
        try:
            manager = self._app.change_of_value(
                self._address(), ObjectIdentifier(p.object),
                issue_confirmed_notifications=False, lifetime=o.cov_lifetime_s,
            )
            async with asyncio.timeout(o.timeout_s):
                context = await manager.__aenter__()
        except (Exception, ErrorRejectAbortNack) as e:
            self._cov_refused_until[i] = time.monotonic() + o.cov_retry_s
            log.warning("device %s: point %s (%s): COV subscription refused (%s: %s); polling it, "
                        "trying again in %g s", self.name, p.metric, p.object, type(e).__name__, e,
                        o.cov_retry_s)
            started.set_result(False)
            return
        self._subs[i].context = context
        started.set_result(True)
        try:
            while True:
                prop, value = await context.get_value()
                if str(prop) == "present-value":
                    self._buffered(i, value)
        except asyncio.CancelledError:
            raise
        except (Exception, ErrorRejectAbortNack) as e:
            log.warning("device %s: point %s: COV subscription lost (%s); polling it until it is back",
                        self.name, p.metric, e)
        finally:
            # The device forgets the subscription when its lifetime ends anyway.
            with contextlib.suppress(Exception, ErrorRejectAbortNack):
                await asyncio.wait_for(manager.__aexit__(None, None, None), o.timeout_s)

    def _buffered(self, i: int, value: Any) -> None:
        at_ms = time.time_ns() // 1_000_000
        with self._lock:
            if len(self._buffer) >= self.options.max_buffered:
                self._buffer.popleft()
                self._dropped += 1
            self._buffer.append((i, value, at_ms))


def _unsupported(response: Any) -> bool:
    text = str(getattr(response, "apduAbortRejectReason", "")) + str(getattr(response, "errorCode", ""))
    return any(k in text for k in ("unrecognized-service", "service-request-denied", "unsupported"))


SPEC: DriverSpec[BacnetOptions] = DriverSpec(
    options=BacnetOptions,
    create=BacnetDriver,
    summary="BACnet/IP present-values by ReadPropertyMultiple and COV (bacpypes3)",
)

__all__ = ["SPEC", "BacnetDriver", "BacnetOptions", "BacnetPoint"]
