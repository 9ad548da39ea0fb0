"""Alembic environment of the alerting tables; run through ``alerting.db.upgrade``.

The connection comes in ``config.attributes["connection"]``; the version table is
``alembic_version_alerting`` so other packages' histories in the same database never collide.
"""

from alembic import context

from alerting.db import VERSION_TABLE
from alerting.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite can only alter tables by copying them
    include_name=lambda name, type_, _parent: type_ != "table" or str(name).startswith("alerting_"),
)
with context.begin_transaction():
    context.run_migrations()
