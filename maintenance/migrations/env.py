"""Alembic environment of the maintenance tables; run through ``maintenance.db.upgrade``.

The connection comes in ``config.attributes["connection"]``; the version table is
``alembic_version_maintenance`` so other packages' histories in the same database never collide.
"""

from alembic import context

from maintenance.db import VERSION_TABLE
from maintenance.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite can only alter tables by copying them
    include_name=lambda name, type_, _parent: type_ != "table" or str(name).startswith("maint_"),
)
with context.begin_transaction():
    context.run_migrations()
