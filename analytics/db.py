"""Anomalies in the relational database (SQLAlchemy 2 Core; SQLite or PostgreSQL).

``analytics_anomalies`` holds each anomaly's current state (one row per id);
``analytics_anomaly_events`` every lifecycle event, keyed (id, state, ts_ms);
``analytics_models`` every multivariate model fitted, keyed (kind, version). The schema
is Alembic's (``analytics/migrations``) with analytics' own version table, brought up to
date by ``upgrade(engine)`` — called by the analytics worker and by the API at start.

Invariants:
- ``save`` is idempotent and order-tolerant: an event seen twice is stored once, and an
  event older than the row's latest never overwrites it (delivery is at least once);
- a cleared anomaly stays cleared: a late ``updated`` does not reopen it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy import Engine

from analytics import AnalyticsError
from analytics.models import KindModel
from wire import database
from wire.anomaly import Anomaly

VERSION_TABLE: Final = "alembic_version_analytics"
SEVERITIES: Final = ("info", "warning", "minor", "major", "critical")
STATES: Final = ("open", "updated", "cleared")

metadata = sa.MetaData()
anomalies = sa.Table(
    "analytics_anomalies", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(64)),
    sa.Column("agent", sa.String(64)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("severity_rank", sa.SmallInteger, nullable=False),
    sa.Column("fault", sa.String(64), nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("started_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Column("cleared_ms", sa.BigInteger),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Index("ix_analytics_anomalies_site_device", "site", "device"),
    sa.Index("ix_analytics_anomalies_updated", "updated_ms"),
)
events = sa.Table(
    "analytics_anomaly_events", metadata,
    sa.Column("anomaly_id", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.PrimaryKeyConstraint("anomaly_id", "state", "ts_ms"),
)

# Multivariate models, one row per (kind, version): plain JSON arrays (no pickle), kept so
# a restart scores with the latest and an engineer can compare versions.
models = sa.Table(
    "analytics_models", metadata,
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("trained_ms", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.PrimaryKeyConstraint("kind", "version"),
)


MIGRATIONS: Final = database.Migrations(
    name="analytics", script_location="analytics:migrations", version_table=VERSION_TABLE,
    lock_key=0x7669_616E, head="analytics@head",
)


def upgrade(engine: Engine) -> None:
    """Bring the analytics tables up to date (Alembic, own version table)."""
    database.upgrade(engine, MIGRATIONS, AnalyticsError)


def _payload(a: Anomaly) -> dict[str, Any]:
    return msgspec.to_builtins(a)  # type: ignore[no-any-return]


def save(engine: Engine, site: str, device: str, a: Anomaly) -> bool:
    """Store one lifecycle event; False if it was already stored (a redelivery)."""
    row = {
        "site": site, "device": device, "kind": a.kind, "agent": a.agent, "state": a.state,
        "severity": a.severity, "severity_rank": SEVERITIES.index(a.severity), "fault": a.fault,
        "summary": a.summary, "started_ms": a.started_ms, "updated_ms": a.ts_ms,
        "cleared_ms": a.cleared_ms, "payload": _payload(a),
    }
    with engine.begin() as conn:
        seen = conn.execute(sa.select(events.c.anomaly_id).where(
            events.c.anomaly_id == a.id, events.c.state == a.state, events.c.ts_ms == a.ts_ms)).first()
        if seen is not None:
            return False
        conn.execute(events.insert().values(anomaly_id=a.id, state=a.state, ts_ms=a.ts_ms,
                                            payload=row["payload"]))
        current = conn.execute(sa.select(anomalies.c.state, anomalies.c.updated_ms)
                               .where(anomalies.c.id == a.id)).first()
        if current is None:
            conn.execute(anomalies.insert().values(id=a.id, **row))
        elif current.state != "cleared" and (a.ts_ms >= current.updated_ms or a.state == "cleared"):
            conn.execute(anomalies.update().where(anomalies.c.id == a.id).values(**row))
    return True


@dataclass(frozen=True, slots=True)
class Query:
    site: str | None = None
    device: str | None = None
    states: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Stored:
    id: str
    site: str
    device: str
    state: str
    anomaly: Anomaly


def _stored(r: Any) -> Stored:
    return Stored(r.id, r.site, r.device, r.state, msgspec.convert(r.payload, Anomaly))


def list_anomalies(engine: Engine, q: Query) -> list[Stored]:
    """Newest change first; anomalies whose life overlaps [since, until)."""
    stmt = sa.select(anomalies.c.id, anomalies.c.site, anomalies.c.device, anomalies.c.state,
                     anomalies.c.payload)
    c = anomalies.c
    if q.site is not None:
        stmt = stmt.where(c.site == q.site)
    if q.device is not None:
        stmt = stmt.where(c.device == q.device)
    if q.states:
        stmt = stmt.where(c.state.in_(q.states))
    if q.severities:
        stmt = stmt.where(c.severity.in_(q.severities))
    if q.until_ms is not None:
        stmt = stmt.where(c.started_ms < q.until_ms)
    if q.since_ms is not None:
        stmt = stmt.where(sa.or_(c.cleared_ms.is_(None), c.cleared_ms >= q.since_ms))
    stmt = stmt.order_by(c.updated_ms.desc(), c.id).limit(q.limit).offset(q.offset)
    with engine.connect() as conn:
        return [_stored(r) for r in conn.execute(stmt)]


def get_anomaly(engine: Engine, anomaly_id: str) -> tuple[Stored, list[Anomaly]] | None:
    """The anomaly and its lifecycle events, oldest first; None if unknown."""
    with engine.connect() as conn:
        r = conn.execute(sa.select(anomalies.c.id, anomalies.c.site, anomalies.c.device, anomalies.c.state,
                                   anomalies.c.payload).where(anomalies.c.id == anomaly_id)).first()
        if r is None:
            return None
        history = conn.execute(sa.select(events.c.payload).where(events.c.anomaly_id == anomaly_id)
                               .order_by(events.c.ts_ms, events.c.state)).all()
    return _stored(r), [msgspec.convert(h.payload, Anomaly) for h in history]


# -- multivariate models ----------------------------------------------------------------------


def next_model_version(engine: Engine, kind: str) -> int:
    with engine.connect() as conn:
        top = conn.execute(sa.select(sa.func.max(models.c.version)).where(models.c.kind == kind)).scalar()
    return int(top or 0) + 1


def save_model(engine: Engine, model: KindModel) -> None:
    """Store a fitted model; a version already stored is left as it is (a retried save)."""
    with engine.begin() as conn:
        seen = conn.execute(sa.select(models.c.version).where(
            models.c.kind == model.kind, models.c.version == model.version)).first()
        if seen is None:
            conn.execute(models.insert().values(kind=model.kind, version=model.version,
                                                trained_ms=model.trained_ms, rows=model.rows,
                                                source=model.source, payload=model.to_json()))


def latest_models(engine: Engine) -> tuple[list[KindModel], list[str]]:
    """The newest version of each kind's model, and a reason for each row that was unusable."""
    top = (sa.select(models.c.kind, sa.func.max(models.c.version).label("v"))
           .group_by(models.c.kind).subquery())
    stmt = sa.select(models.c.kind, models.c.version, models.c.payload).join(
        top, sa.and_(models.c.kind == top.c.kind, models.c.version == top.c.v))
    out: list[KindModel] = []
    problems: list[str] = []
    with engine.connect() as conn:
        for r in conn.execute(stmt):
            try:
                out.append(KindModel.from_json(r.payload))
            except (KeyError, TypeError, ValueError) as e:
                problems.append(f"model {r.kind} v{r.version} is unreadable ({e}); it will be retrained")
    return out, problems


Windows = dict[tuple[str, str], list[tuple[int, int]]]


def unhealthy_windows(engine: Engine, since_ms: int, now_ms: int) -> Windows:
    """(site, device) -> [(started, cleared or now)] of every anomaly alive since ``since_ms``:
    the periods that do not count as healthy history."""
    c = anomalies.c
    stmt = sa.select(c.site, c.device, c.started_ms, c.cleared_ms).where(
        sa.or_(c.cleared_ms.is_(None), c.cleared_ms >= since_ms))
    out: Windows = {}
    with engine.connect() as conn:
        for r in conn.execute(stmt):
            out.setdefault((r.site, r.device), []).append(
                (int(r.started_ms), int(r.cleared_ms) if r.cleared_ms is not None else now_ms))
    return out
