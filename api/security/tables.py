"""The security tables (SQLAlchemy 2 Core), owned by the API with its own Alembic history.

- ``api_users``: people who log in; ``password_hash`` is argon2id (argon2-cffi's encoded form,
  parameters included, so they can be raised later and old hashes still verify);
  ``sites`` is a JSON list, NULL for every site; ``failed_logins``/``locked_until_ms`` are the
  lockout state, kept here (not in memory) so every API process sees the same lock.
- ``api_tokens``: bearer tokens for integrations. Only the SHA-256 of the secret is kept:
  the secret has 256 random bits, so a slow hash adds nothing and would cost on every call.
- ``api_sessions``: dashboard sessions, keyed by the SHA-256 of the cookie value.
- ``api_audit``: security-relevant actions, append-only.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa
from sqlalchemy import Engine

from wire import database

VERSION_TABLE: Final = "alembic_version_api"

metadata = sa.MetaData()
users = sa.Table(
    "api_users", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("sites", sa.JSON),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("failed_logins", sa.Integer, nullable=False, default=0),
    sa.Column("locked_until_ms", sa.BigInteger),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)
tokens = sa.Table(
    "api_tokens", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("user", sa.String(64), sa.ForeignKey("api_users.name", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("sites", sa.JSON),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger),
    sa.Column("revoked_ms", sa.BigInteger),
    sa.Column("last_used_ms", sa.BigInteger),
    sa.Index("ix_api_tokens_user", "user"),
)
sessions = sa.Table(
    "api_sessions", metadata,
    sa.Column("id_sha256", sa.String(64), primary_key=True),
    sa.Column("user", sa.String(64), sa.ForeignKey("api_users.name", ondelete="CASCADE"), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_api_sessions_user", "user"),
)
audit = sa.Table(
    "api_audit", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(300), nullable=False, default=""),
    sa.Column("outcome", sa.String(16), nullable=False, default="ok"),
    sa.Column("client", sa.String(64), nullable=False, default=""),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Index("ix_api_audit_ts", "ts_ms"),
)

MIGRATIONS: Final = database.Migrations(
    name="api", script_location="api:migrations", version_table=VERSION_TABLE,
    lock_key=0x7669_6170, head="api@head",
)


def upgrade(engine: Engine) -> None:
    """Bring the security tables up to date (Alembic, the API's own version table)."""
    database.upgrade(engine, MIGRATIONS)
