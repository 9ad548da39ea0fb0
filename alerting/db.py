"""Opening the alerting database and bringing its schema up to date: ``wire.database`` with
alerting's own Alembic history (``alerting/migrations``, version table ``alembic_version_alerting``)."""

from __future__ import annotations

from typing import Final

from sqlalchemy import Engine

from alerting.errors import AlertingError
from wire import database
from wire.database import configure

VERSION_TABLE: Final = "alembic_version_alerting"
MIGRATIONS: Final = database.Migrations(
    name="alerting", script_location="alerting:migrations", version_table=VERSION_TABLE,
    lock_key=0x7669_616C,
)

__all__ = ["MIGRATIONS", "VERSION_TABLE", "configure", "open_engine", "upgrade"]


def open_engine(url: str) -> Engine:
    """An engine for ``url`` with the alerting schema at head; a SQLite file's folder is created."""
    return database.open_engine(url, MIGRATIONS, AlertingError)


def upgrade(engine: Engine) -> None:
    """Bring the alerting tables to the newest revision."""
    database.upgrade(engine, MIGRATIONS, AlertingError)
