"""Anomalies: the current state of each, and every lifecycle event.

Revision ID: a0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a0001"
down_revision = None
branch_labels = ("analytics",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analytics_anomalies",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64)),
        sa.Column("agent", sa.String(64)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("severity_rank", sa.SmallInteger, nullable=False),
        sa.Column("fault", sa.String(64), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("started_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("cleared_ms", sa.BigInteger),
        sa.Column("payload", sa.JSON, nullable=False),
    )
    op.create_index("ix_analytics_anomalies_site_device", "analytics_anomalies", ["site", "device"])
    op.create_index("ix_analytics_anomalies_updated", "analytics_anomalies", ["updated_ms"])
    op.create_table(
        "analytics_anomaly_events",
        sa.Column("anomaly_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("anomaly_id", "state", "ts_ms"),
    )


def downgrade() -> None:
    op.drop_table("analytics_anomaly_events")
    op.drop_table("analytics_anomalies")
