"""alerting_work_order: work orders in progress silence their equipment's alarms

Revision ID: alerting_0002
Revises: alerting_0001
Create Date: 2026-11-28 04:50:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'alerting_0002'
down_revision: str | None = 'alerting_0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('alerting_work_order',
    sa.Column('site', sa.String(length=64), nullable=False),
    sa.Column('work_order', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('devices', sa.JSON(), nullable=False),
    sa.Column('equipment', sa.String(length=64), nullable=True),
    sa.Column('updated_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('site', 'work_order')
    )
    with op.batch_alter_table('alerting_work_order', schema=None) as batch_op:
        batch_op.create_index('ix_alerting_work_order_state', ['state', 'site'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('alerting_work_order', schema=None) as batch_op:
        batch_op.drop_index('ix_alerting_work_order_state')
    op.drop_table('alerting_work_order')
