"""floor plans, device placements and alarm handling, for the dashboard

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 06:10:00

Floors live in the ledger (``maint_floors``), so their plans and the devices placed on them
do too. Alarm handling (who acknowledged an anomaly, who it is assigned to, until when it is
silenced in the console, which work order was opened from it) is kept per anomaly id here
rather than in analytics' tables: analytics owns what was detected, people own what was done.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'maint_floor_plans',
        sa.Column('floor_id', sa.Integer(), sa.ForeignKey('maint_floors.id', ondelete='CASCADE'),
                  primary_key=True),
        sa.Column('content_type', sa.String(length=32), nullable=False),
        sa.Column('image', sa.LargeBinary(), nullable=False),
        sa.Column('width', sa.Integer(), nullable=False),
        sa.Column('height', sa.Integer(), nullable=False),
        sa.Column('updated_ms', sa.BigInteger(), nullable=False),
        sa.Column('updated_by', sa.String(length=100), nullable=False),
    )
    op.create_table(
        'maint_device_placements',
        sa.Column('site_id', sa.String(length=64), primary_key=True),
        sa.Column('device', sa.String(length=64), primary_key=True),
        sa.Column('floor_id', sa.Integer(), sa.ForeignKey('maint_floors.id', ondelete='CASCADE'),
                  nullable=False, index=True),
        # Fractions of the plan's width and height, so a re-uploaded plan of another size keeps them.
        sa.Column('x', sa.Float(), nullable=False),
        sa.Column('y', sa.Float(), nullable=False),
        sa.Column('updated_ms', sa.BigInteger(), nullable=False),
        sa.Column('updated_by', sa.String(length=100), nullable=False),
    )
    op.create_table(
        'maint_alarm_handling',
        sa.Column('anomaly_id', sa.String(length=128), primary_key=True),
        sa.Column('site_id', sa.String(length=64), nullable=False),
        sa.Column('acked_by', sa.String(length=100), nullable=True),
        sa.Column('acked_ms', sa.BigInteger(), nullable=True),
        sa.Column('assignee', sa.String(length=100), nullable=True),
        sa.Column('silenced_until_ms', sa.BigInteger(), nullable=True),
        sa.Column('work_order_id', sa.Integer(), nullable=True),
        sa.Column('updated_ms', sa.BigInteger(), nullable=False),
        sa.Column('updated_by', sa.String(length=100), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('maint_alarm_handling')
    op.drop_table('maint_device_placements')
    op.drop_table('maint_floor_plans')
