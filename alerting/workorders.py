"""Which work orders are in progress on which devices: maintenance's ``WorkOrderUpdate``
events in, the engine's (site, device) -> work order map out. Sans-IO: no clock, no socket,
no database; the service persists what ``take_dirty`` returns and restores it at start.

A work order *silences* the alarms of its devices while it is ``in_progress``: a technician
has their hands on the equipment, and what they do (isolating a pump, opening a panel)
trips its alarms. ``on_hold`` does not silence: the work has stopped (waiting for parts,
for access), nobody is at the equipment, so a new alarm from it is news and must page.
``new``/``assigned`` (work not started) and ``resolved``/``closed``/``cancelled`` do not
silence either.

Invariants:
- updates are applied per (site, work order) in ``seq`` order: one whose ``seq`` is not above
  the last applied is stale (a redelivery, or an older event arriving late) and changes
  nothing, so a late ``in_progress`` can never re-silence a resolved order's equipment;
- a device is silenced while at least one of the site's work orders in progress lists it
  (the one named is the lowest id); the devices are those in the event, i.e. maintenance's
  ledger binding of the order's equipment, the same mapping anomalies are filed under;
- every applied update marks its order dirty, so the service persists exactly what changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from wire.workorder import WorkOrderUpdate

SILENCING_STATES: Final = frozenset({"in_progress"})
Key = tuple[str, int]  # (site, work order id)
Device = tuple[str, str]  # (site, device)


@dataclass(frozen=True, slots=True)
class OrderState:
    """What alerting keeps of one work order (a row of ``alerting_work_order``)."""

    site: str
    work_order: int
    seq: int
    state: str
    devices: tuple[str, ...]
    equipment: str | None
    updated_ms: int

    @property
    def silencing(self) -> bool:
        return self.state in SILENCING_STATES


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """(site, device) is now silenced by ``work_order`` (its id as text), or by none (None)."""

    site: str
    device: str
    work_order: str | None


Outcome = Literal["applied", "stale"]


class WorkOrderBoard:
    def __init__(self) -> None:
        self.orders: dict[Key, OrderState] = {}
        self._by_device: dict[Device, set[int]] = {}
        self._dirty: dict[Key, OrderState] = {}

    def knows(self, site: str, work_order: int) -> bool:
        return (site, work_order) in self.orders

    def restore(self, order: OrderState) -> list[DeviceChange]:
        """Put back an order loaded from the database (not marked dirty)."""
        return self._set(order)

    def apply(self, update: WorkOrderUpdate) -> tuple[Outcome, list[DeviceChange]]:
        old = self.orders.get((update.site, update.work_order))
        if old is not None and update.seq <= old.seq:
            return "stale", []
        order = OrderState(update.site, update.work_order, update.seq, update.state, tuple(update.devices),
                           update.equipment, update.ts_ms)
        self._dirty[(order.site, order.work_order)] = order
        return "applied", self._set(order)

    def silencer(self, site: str, device: str) -> str | None:
        ids = self._by_device.get((site, device))
        return str(min(ids)) if ids else None

    def take_dirty(self) -> list[OrderState]:
        out, self._dirty = list(self._dirty.values()), {}
        return out

    def mark_dirty(self, orders: list[OrderState]) -> None:
        """Report orders changed again (their write failed and must be retried)."""
        for o in orders:
            self._dirty.setdefault((o.site, o.work_order), o)

    def _set(self, order: OrderState) -> list[DeviceChange]:
        key = (order.site, order.work_order)
        old = self.orders.get(key)
        self.orders[key] = order
        before = set(old.devices) if old is not None and old.silencing else set()
        after = set(order.devices) if order.silencing else set()
        touched: list[str] = []
        for device in sorted(before - after):
            ids = self._by_device.get((order.site, device), set())
            ids.discard(order.work_order)
            if not ids:
                self._by_device.pop((order.site, device), None)
            touched.append(device)
        for device in sorted(after - before):
            self._by_device.setdefault((order.site, device), set()).add(order.work_order)
            touched.append(device)
        return [DeviceChange(order.site, d, self.silencer(order.site, d)) for d in touched]
