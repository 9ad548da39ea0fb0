"""The alerting tables (SQLAlchemy Core), all named ``alerting_*``; the schema is created by
the Alembic history in ``alerting/migrations`` (version table ``alembic_version_alerting``).

- ``alerting_incident`` / ``alerting_alert``: what people are paged about, and its alerts;
- ``alerting_attempt``: every delivery attempt with its outcome;
- ``alerting_link``: the ack/resolve links sent, by the SHA-256 of their token (never the
  token itself), with expiry and the moment they were used;
- ``alerting_command``: acks and resolves from the API and links, for the service to apply;
- ``alerting_silence``, ``alerting_override``: run-time silences and rotation overrides;
- ``alerting_state``: the running service's on-call configuration, for the API to show;
- ``alerting_work_order``: the last applied state of each work order maintenance reported
  (``WorkOrderUpdate``), so the equipment it silences survives a restart.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

incident = Table(
    "alerting_incident", metadata,
    Column("id", String(64), primary_key=True),
    Column("key", String(300), nullable=False),
    Column("site", String(64), nullable=False),
    Column("building", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("title", String(1200), nullable=False),
    Column("route", String(64)),
    Column("policy", String(64)),
    Column("life_safety", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("page_at_ms", BigInteger),
    Column("paged_ms", BigInteger),
    Column("step", Integer, nullable=False, default=0),
    Column("round", Integer, nullable=False, default=0),
    Column("next_ms", BigInteger),
    Column("acked_ms", BigInteger),
    Column("acked_by", String(128)),
    Column("resolved_ms", BigInteger),
    Column("resolved_by", String(128)),
    Column("silenced_by", String(600)),
    Column("scope", String(200)),
    Column("folded", Integer, nullable=False, default=0),
    Column("alert_count", Integer, nullable=False, default=0),
    Column("version", Integer, nullable=False, default=0),
    Index("ix_alerting_incident_state", "state", "created_ms"),
    Index("ix_alerting_incident_site", "site", "created_ms"),
)

alert = Table(
    "alerting_alert", metadata,
    Column("incident_id", String(64), ForeignKey("alerting_incident.id", ondelete="CASCADE"),
           primary_key=True),
    Column("key", String(300), primary_key=True),
    Column("event_type", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("summary", String(1100), nullable=False),
    Column("site", String(64), nullable=False),
    Column("device", String(64)),
    Column("agent", String(64)),
    Column("kind", String(64)),
    Column("ts_ms", BigInteger, nullable=False),
    Column("count", Integer, nullable=False, default=1),
    Column("cleared", Boolean, nullable=False, default=False),
    Column("folded", Boolean, nullable=False, default=False),
)

attempt = Table(
    "alerting_attempt", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", String(64), nullable=False),
    Column("person", String(64), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("target", String(600), nullable=False),
    Column("number", Integer, nullable=False),
    Column("method_index", Integer, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("result", String(16), nullable=False),
    Column("error", String(600), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Index("ix_alerting_attempt_incident", "incident_id", "id"),
)

link = Table(
    "alerting_link", metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("incident_id", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("person", String(64), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("used_ms", BigInteger),
)

command = Table(
    "alerting_command", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("by", String(128), nullable=False),
    Column("source", String(16), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("done_ms", BigInteger),
    Index("ix_alerting_command_pending", "done_ms", "id"),
)

silence = Table(
    "alerting_silence", metadata,
    Column("id", String(64), primary_key=True),
    Column("match", JSON, nullable=False),
    Column("start_ms", BigInteger, nullable=False),
    Column("end_ms", BigInteger, nullable=False),
    Column("reason", String(512), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

override = Table(
    "alerting_override", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rotation", String(64), nullable=False),
    Column("person", String(64), nullable=False),
    Column("start_ms", BigInteger, nullable=False),
    Column("end_ms", BigInteger, nullable=False),
    Column("reason", String(512), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

state = Table(
    "alerting_state", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

work_order = Table(
    "alerting_work_order", metadata,
    Column("site", String(64), primary_key=True),
    Column("work_order", BigInteger, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("devices", JSON, nullable=False),
    Column("equipment", String(64)),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_alerting_work_order_state", "state", "site"),
)
