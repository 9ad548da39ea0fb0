"""Opening the maintenance database and bringing its schema up to date (Alembic).

Invariants:
- ``upgrade(engine)`` is idempotent and safe to call from several processes at once (the
  API and the maintenance consumer both call it at start): PostgreSQL serialises it with an
  advisory lock; on SQLite a loser of the race retries and finds the schema at head;
- SQLite connections get foreign keys on, WAL and a busy timeout, so the API and the
  consumer can share one file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError

from maintenance.errors import MaintenanceError

log = logging.getLogger(__name__)

VERSION_TABLE: Final = "alembic_version_maintenance"
_LOCK_KEY: Final = 0x7669_6D61  # "vima": the advisory lock id of maintenance migrations
_CONFIGURED: Final = "_vigil_maintenance_sqlite"


def alembic_config(connection: Any = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "maintenance:migrations")
    cfg.attributes["connection"] = connection
    return cfg


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
    cur.execute("PRAGMA busy_timeout=15000")
    cur.close()


def configure(engine: Engine) -> Engine:
    """Install the SQLite connection settings on ``engine`` (once); other dialects unchanged."""
    if engine.dialect.name == "sqlite" and not getattr(engine, _CONFIGURED, False):
        event.listen(engine, "connect", _sqlite_pragmas)
        setattr(engine, _CONFIGURED, True)
        engine.dispose()  # connections made before this lack the pragmas
    return engine


def open_engine(url: str) -> Engine:
    """An engine for ``url`` with the schema at head; a SQLite file's folder is created."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except Exception as e:  # bad URL, missing driver
        raise MaintenanceError(f"cannot use database_url {url!r}: {e}") from None
    upgrade(engine)
    return engine


def upgrade(engine: Engine, attempts: int = 5) -> None:
    """Bring the maintenance tables to the newest revision."""
    configure(engine)
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
                command.upgrade(alembic_config(conn), "head")
            return
        except DBAPIError as e:
            if attempt == attempts or e.connection_invalidated:
                raise MaintenanceError(f"cannot bring the maintenance schema up to date: {e}") from None
            # Another process was migrating the same SQLite file at the same moment.
            log.info("maintenance: schema upgrade raced another process (%s); retrying", e.orig)
            time.sleep(0.2 * attempt)
