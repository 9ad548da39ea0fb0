"""The relational database as every package that owns tables opens it (SQLAlchemy 2 + Alembic).

Analytics, maintenance and alerting each own their tables and their own Alembic history
(own version table), so no package's migrations ever wait for another's. What they share
is how a database is opened and how a schema is brought up to date, defined once here as
the broker connection is in ``wire.mqtt``.

Invariants:
- ``upgrade`` is idempotent and safe to call from several processes at once (the API and
  a package's worker both call it at start): PostgreSQL serialises it with an advisory lock
  per package; on SQLite a loser of the race retries and finds the schema at head;
- SQLite connections get foreign keys on, WAL and a busy timeout, so the API and the
  workers can share one file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

log = logging.getLogger(__name__)

_CONFIGURED: Final = "_vigil_sqlite_configured"


class DatabaseError(RuntimeError):
    """The database cannot be used; the message says which URL or schema and why."""


@dataclass(frozen=True, slots=True)
class Migrations:
    """One package's Alembic history."""

    name: str  # for messages: "maintenance"
    script_location: str  # "maintenance:migrations"
    version_table: str  # "alembic_version_maintenance"
    lock_key: int  # the PostgreSQL advisory lock id of this package's migrations
    head: str = "head"

    def config(self, connection: Any = None) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", self.script_location)
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


def create(url: str) -> Engine:
    """An engine for ``url``, configured; a SQLite file's folder is created."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return configure(create_engine(url, pool_pre_ping=True))
    except Exception as e:  # bad URL, missing driver
        raise DatabaseError(f"cannot use database_url {url!r}: {e}") from None


def open_engine(url: str, migrations: Migrations, error: type[Exception] = DatabaseError) -> Engine:
    """An engine for ``url`` with one package's schema at head; a failure raises ``error``
    (the package's own root error) saying why."""
    try:
        engine = create(url)
        _upgrade(engine, migrations)
    except DatabaseError as e:
        raise error(str(e)) from None
    return engine


def upgrade(engine: Engine, migrations: Migrations, error: type[Exception] = DatabaseError) -> None:
    """Bring one package's tables to the newest revision; a failure raises ``error``."""
    try:
        _upgrade(engine, migrations)
    except DatabaseError as e:
        raise error(str(e)) from None


def _upgrade(engine: Engine, migrations: Migrations, attempts: int = 5) -> None:
    configure(engine)
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": migrations.lock_key})
                command.upgrade(migrations.config(conn), migrations.head)
            return
        except DBAPIError as e:
            if attempt == attempts or e.connection_invalidated:
                raise DatabaseError(
                    f"cannot bring the {migrations.name} schema up to date at {engine.url!r}: {e}") from None
            # Another process was migrating the same SQLite file at the same moment.
            log.info("%s: schema upgrade raced another process (%s); retrying", migrations.name, e.orig)
            time.sleep(0.2 * attempt)
        except SQLAlchemyError as e:
            raise DatabaseError(f"cannot bring the {migrations.name} schema up to date at "
                                f"{engine.url!r}: {str(e).splitlines()[0][:300]}") from None
