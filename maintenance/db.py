"""Opening the maintenance database and bringing its schema up to date: ``wire.database``
with maintenance's own Alembic history (``maintenance/migrations``, version table
``alembic_version_maintenance``)."""

from __future__ import annotations

from typing import Final

from sqlalchemy import Engine

from maintenance.errors import MaintenanceError
from wire import database
from wire.database import configure

VERSION_TABLE: Final = "alembic_version_maintenance"
MIGRATIONS: Final = database.Migrations(
    name="maintenance", script_location="maintenance:migrations", version_table=VERSION_TABLE,
    lock_key=0x7669_6D61,
)

__all__ = ["MIGRATIONS", "VERSION_TABLE", "configure", "open_engine", "upgrade"]


def open_engine(url: str) -> Engine:
    """An engine for ``url`` with the maintenance schema at head; a SQLite file's folder is created."""
    return database.open_engine(url, MIGRATIONS, MaintenanceError)


def upgrade(engine: Engine) -> None:
    """Bring the maintenance tables to the newest revision."""
    database.upgrade(engine, MIGRATIONS, MaintenanceError)
