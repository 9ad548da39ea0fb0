"""The dashboard's tables, created by maintenance's Alembic revision 0003 (floors live in the
ledger, so their plans do too). Declared here with SQLAlchemy Core, not as ORM models, so the
maintenance package's models stay exactly what maintenance itself uses."""

from __future__ import annotations

from typing import Final

from sqlalchemy import BigInteger, Column, Float, Integer, LargeBinary, MetaData, String, Table

metadata: Final = MetaData()

floor_plans: Final = Table(
    "maint_floor_plans",
    metadata,
    Column("floor_id", Integer, primary_key=True),
    Column("content_type", String(32), nullable=False),
    Column("image", LargeBinary, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("updated_by", String(100), nullable=False),
)

placements: Final = Table(
    "maint_device_placements",
    metadata,
    Column("site_id", String(64), primary_key=True),
    Column("device", String(64), primary_key=True),
    Column("floor_id", Integer, nullable=False),
    Column("x", Float, nullable=False),
    Column("y", Float, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("updated_by", String(100), nullable=False),
)

alarm_handling: Final = Table(
    "maint_alarm_handling",
    metadata,
    Column("anomaly_id", String(128), primary_key=True),
    Column("site_id", String(64), nullable=False),
    Column("acked_by", String(100)),
    Column("acked_ms", BigInteger),
    Column("assignee", String(100)),
    Column("silenced_until_ms", BigInteger),
    Column("work_order_id", Integer),
    Column("updated_ms", BigInteger, nullable=False),
    Column("updated_by", String(100), nullable=False),
)
