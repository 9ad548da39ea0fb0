"""Alembic environment of the API's security tables: run by ``api.security.tables.upgrade``
with a live connection; the version table is the API's own so histories never collide."""

from __future__ import annotations

from alembic import context

from api.security.tables import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
