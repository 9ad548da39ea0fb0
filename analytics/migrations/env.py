"""Alembic environment of the analytics tables: run by ``analytics.db.upgrade`` with a live
connection; the version table is analytics' own so other packages' histories never collide."""

from __future__ import annotations

from alembic import context

from analytics.db import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
