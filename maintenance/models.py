"""The maintenance tables (SQLAlchemy 2). Every table name starts with ``maint_`` so other
packages' tables in the same database never collide; times are epoch milliseconds (BigInteger)
so SQLite and PostgreSQL store and compare them the same way.

Invariants:
- equipment is identified by (site, code); a bus device (site, device) is bound to at most
  one equipment item (``maint_devices``);
- ``maint_work_orders.open_key`` is unique and set only while the order is open, so one
  (equipment, fault) has at most one open order; ``fault_key`` keeps the key after closing
  so a returning fault can find and reopen it;
- ``maint_anomaly_events`` holds each (anomaly id, state, ts) once: a replayed event is a no-op;
- ``maint_audit`` rows are only ever inserted.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID = String(64)


class Base(DeclarativeBase):
    pass


class Site(Base):
    __tablename__ = "maint_sites"
    id: Mapped[str] = mapped_column(ID, primary_key=True)  # the wire site id
    name: Mapped[str] = mapped_column(String(200), default="")


class Building(Base):
    __tablename__ = "maint_buildings"
    __table_args__ = (UniqueConstraint("site_id", "code"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("maint_sites.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(ID)
    name: Mapped[str] = mapped_column(String(200), default="")


class Floor(Base):
    __tablename__ = "maint_floors"
    __table_args__ = (UniqueConstraint("building_id", "code"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    building_id: Mapped[int] = mapped_column(ForeignKey("maint_buildings.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(ID)
    name: Mapped[str] = mapped_column(String(200), default="")
    level: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Space(Base):
    __tablename__ = "maint_spaces"
    __table_args__ = (UniqueConstraint("floor_id", "code"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    floor_id: Mapped[int] = mapped_column(ForeignKey("maint_floors.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(ID)
    name: Mapped[str] = mapped_column(String(200), default="")


class Equipment(Base):
    __tablename__ = "maint_equipment"
    __table_args__ = (UniqueConstraint("site_id", "code"), Index("ix_maint_equipment_kind", "kind"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("maint_sites.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(ID)
    name: Mapped[str] = mapped_column(String(200), default="")
    kind: Mapped[str] = mapped_column(String(64))
    brick_class: Mapped[str] = mapped_column(String(128))
    space_id: Mapped[int | None] = mapped_column(ForeignKey("maint_spaces.id", ondelete="SET NULL"),
                                                 nullable=True)
    manufacturer: Mapped[str] = mapped_column(String(200), default="")
    model: Mapped[str] = mapped_column(String(200), default="")
    serial: Mapped[str] = mapped_column(String(200), default="")
    install_date: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    warranty_end: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    criticality: Mapped[str] = mapped_column(String(16), default="medium")
    responsible: Mapped[str] = mapped_column(String(200), default="")  # crew or contractor


class Relation(Base):
    """equipment --predicate--> equipment or space (``feeds``, ``serves``, ``part_of``)."""

    __tablename__ = "maint_relations"
    __table_args__ = (UniqueConstraint("subject_id", "predicate", "object_equipment_id", "object_space_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("maint_equipment.id", ondelete="CASCADE"), index=True)
    predicate: Mapped[str] = mapped_column(String(32))
    object_equipment_id: Mapped[int | None] = mapped_column(
        ForeignKey("maint_equipment.id", ondelete="CASCADE"), nullable=True)
    object_space_id: Mapped[int | None] = mapped_column(
        ForeignKey("maint_spaces.id", ondelete="CASCADE"), nullable=True)


class Device(Base):
    """A bus device (site, device id) bound to an equipment item."""

    __tablename__ = "maint_devices"
    __table_args__ = (UniqueConstraint("site_id", "device"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ID)
    device: Mapped[str] = mapped_column(ID)
    equipment_id: Mapped[int] = mapped_column(ForeignKey("maint_equipment.id", ondelete="CASCADE"),
                                              index=True)


class Point(Base):
    """A metric of a bound device, with its Brick point class (e.g. ``brick:Vibration_Sensor``)."""

    __tablename__ = "maint_points"
    __table_args__ = (UniqueConstraint("device_id", "metric"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("maint_devices.id", ondelete="CASCADE"))
    metric: Mapped[str] = mapped_column(String(64))
    brick_class: Mapped[str] = mapped_column(String(128), default="brick:Point")
    unit: Mapped[str] = mapped_column(String(32), default="")


class WorkOrder(Base):
    __tablename__ = "maint_work_orders"
    __table_args__ = (
        UniqueConstraint("pm_schedule_id", "pm_due"),  # never twice for one due date
        # One (column, id) index per list filter: an equality filter then reads its rows
        # newest first straight off the index, and a page stops after `limit` rows.
        Index("ix_maint_wo_state", "state", "id"),
        Index("ix_maint_wo_priority", "priority", "id"),
        Index("ix_maint_wo_site", "site_id", "id"),
        Index("ix_maint_wo_assignee", "assignee", "id"),
        Index("ix_maint_wo_crew", "crew", "id"),
        Index("ix_maint_wo_source", "source", "id"),
        Index("ix_maint_wo_equipment", "equipment_id", "id"),
        Index("ix_maint_wo_fault_key", "fault_key", "closed_ms"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(16))  # anomaly | manual | tenant | pm | inspection
    state: Mapped[str] = mapped_column(String(16), default="new")
    priority: Mapped[str] = mapped_column(String(2))
    site_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    equipment_id: Mapped[int | None] = mapped_column(
        ForeignKey("maint_equipment.id", ondelete="SET NULL"), nullable=True)
    device: Mapped[str | None] = mapped_column(ID, nullable=True)
    fault: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fault_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    open_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    occurrences: Mapped[int] = mapped_column(Integer, default=0)
    anomaly_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    anomaly_active: Mapped[bool] = mapped_column(Boolean, default=False)
    anomaly_ts_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    anomaly_cleared_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    crew: Mapped[str | None] = mapped_column(String(100), nullable=True)
    assignee: Mapped[str | None] = mapped_column(String(100), nullable=True)
    requested_by: Mapped[str] = mapped_column(String(100), default="")
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
    responded_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    resolved_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    closed_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    respond_due_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    resolve_due_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    respond_breached_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    resolve_breached_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reopened: Mapped[int] = mapped_column(Integer, default=0)
    # State changes so far (1 = created): the ``seq`` of the WorkOrderUpdate events.
    state_seq: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    pm_schedule_id: Mapped[int | None] = mapped_column(
        ForeignKey("maint_pm_schedules.id", ondelete="SET NULL"), nullable=True)
    pm_due: Mapped[str | None] = mapped_column(String(32), nullable=True)
    due_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AnomalyEvent(Base):
    """Each anomaly event seen, once: (anomaly id, state, ts) is the idempotency key."""

    __tablename__ = "maint_anomaly_events"
    __table_args__ = (UniqueConstraint("anomaly_id", "state", "ts_ms"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    anomaly_id: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    site_id: Mapped[str] = mapped_column(ID)
    device: Mapped[str] = mapped_column(ID)
    fault: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(Text, default="")
    work_order_id: Mapped[int | None] = mapped_column(
        ForeignKey("maint_work_orders.id", ondelete="SET NULL"), nullable=True, index=True)
    received_ms: Mapped[int] = mapped_column(BigInteger)


class RejectedEvent(Base):
    """A bus message maintenance could not take, with the reason (acked so it does not block)."""

    __tablename__ = "maint_rejected_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_ms: Mapped[int] = mapped_column(BigInteger)
    topic: Mapped[str] = mapped_column(String(300))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(Text)


class Audit(Base):
    """Who changed what, when, from which state to which. Insert-only."""

    __tablename__ = "maint_audit"
    __table_args__ = (Index("ix_maint_audit_entity", "entity", "entity_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(100))
    entity: Mapped[str] = mapped_column(String(32))  # work_order | equipment | site | ...
    entity_id: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32))  # create | update | transition | comment | ...
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    detail: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)


class Comment(Base):
    __tablename__ = "maint_comments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("maint_work_orders.id", ondelete="CASCADE"),
                                               index=True)
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    author: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)


class Labour(Base):
    __tablename__ = "maint_labour"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("maint_work_orders.id", ondelete="CASCADE"),
                                               index=True)
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    technician: Mapped[str] = mapped_column(String(100))
    minutes: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(Text, default="")


class Part(Base):
    __tablename__ = "maint_parts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("maint_work_orders.id", ondelete="CASCADE"),
                                               index=True)
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    part_number: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(String(300), default="")
    quantity: Mapped[float] = mapped_column(Float)
    unit_cost: Mapped[float | None] = mapped_column(Float, nullable=True)


class Outbox(Base):
    """Events to publish on the bus (SLA breaches, work order updates), written in the same transaction as the
    change that caused them and marked sent once the broker acknowledged them."""

    __tablename__ = "maint_outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    topic: Mapped[str] = mapped_column(String(300))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    sent_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)


class PmSchedule(Base):
    __tablename__ = "maint_pm_schedules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    equipment_id: Mapped[int] = mapped_column(ForeignKey("maint_equipment.id", ondelete="CASCADE"),
                                              index=True)
    kind: Mapped[str] = mapped_column(String(16))  # calendar | meter
    priority: Mapped[str] = mapped_column(String(2), default="P3")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # calendar: first/next due date, repeat every N units (None: once), generate lead_days ahead
    next_due: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    every: Mapped[int | None] = mapped_column(Integer, nullable=True)
    unit: Mapped[str | None] = mapped_column(String(8), nullable=True)
    lead_days: Mapped[int] = mapped_column(Integer, default=7)
    # meter: every `meter_every` units of `meter_metric` (e.g. running hours from `running`)
    device: Mapped[str | None] = mapped_column(ID, nullable=True)
    meter_metric: Mapped[str | None] = mapped_column(String(64), nullable=True)
    meter_every: Mapped[float | None] = mapped_column(Float, nullable=True)
    meter_lead: Mapped[float] = mapped_column(Float, default=0.0)
    meter_value: Mapped[float] = mapped_column(Float, default=0.0)
    meter_next_due: Mapped[float | None] = mapped_column(Float, nullable=True)
    meter_last_ts_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    meter_last_running: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class Route(Base):
    __tablename__ = "maint_routes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("maint_sites.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    # Shift start times "HH:MM" (UTC), e.g. ["06:00", "14:00", "22:00"], and how long a round may take.
    shifts: Mapped[list[str]] = mapped_column(JSON, default=list)
    window_minutes: Mapped[int] = mapped_column(Integer, default=120)


class Checkpoint(Base):
    __tablename__ = "maint_checkpoints"
    __table_args__ = (UniqueConstraint("route_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    route_id: Mapped[int] = mapped_column(ForeignKey("maint_routes.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(64), unique=True)  # printed as a QR code on site
    equipment_id: Mapped[int | None] = mapped_column(
        ForeignKey("maint_equipment.id", ondelete="SET NULL"), nullable=True)
    # [{"key": "pressure", "type": "number", "label": ..., "min": 1.0, "max": 3.0, "unit": "bar"},
    #  {"key": "leaks", "type": "pass_fail"}, {"key": "remarks", "type": "note"}]
    checklist: Mapped[list[dict[str, object]]] = mapped_column(JSON, default=list)


class Round(Base):
    __tablename__ = "maint_rounds"
    __table_args__ = (UniqueConstraint("route_id", "scheduled_ms"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    route_id: Mapped[int] = mapped_column(ForeignKey("maint_routes.id", ondelete="CASCADE"))
    scheduled_ms: Mapped[int] = mapped_column(BigInteger)
    due_ms: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="scheduled")  # scheduled|done|missed|partial
    technician: Mapped[str | None] = mapped_column(String(100), nullable=True)
    missed_checkpoints: Mapped[list[int]] = mapped_column(JSON, default=list)


class CheckIn(Base):
    __tablename__ = "maint_checkins"
    __table_args__ = (UniqueConstraint("round_id", "checkpoint_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("maint_rounds.id", ondelete="CASCADE"))
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("maint_checkpoints.id", ondelete="CASCADE"))
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    technician: Mapped[str] = mapped_column(String(100))
    code: Mapped[str] = mapped_column(String(64))  # the code scanned: proof of presence
    results: Mapped[list[dict[str, object]]] = mapped_column(JSON, default=list)
    work_order_id: Mapped[int | None] = mapped_column(
        ForeignKey("maint_work_orders.id", ondelete="SET NULL"), nullable=True)
