"""work order state_seq: the count of state changes, the seq of WorkOrderUpdate events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 04:45:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing orders start at 1: their creation counts as their first change.
    with op.batch_alter_table('maint_work_orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('state_seq', sa.Integer(), nullable=False, server_default='1'))


def downgrade() -> None:
    with op.batch_alter_table('maint_work_orders', schema=None) as batch_op:
        batch_op.drop_column('state_seq')
