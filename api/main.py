"""The FastAPI application, built by ``create_app`` — nothing is created at import time.

Invariants:
- ``create_app(settings, store)`` is the only way an app is made; ``vigil api``, the demo
  and the tests all call it, so they serve the same routes and error handling;
- the store reaches handlers through the lifespan state (``api.deps.StoreDep``). A store
  passed in belongs to the caller and is not closed; a store opened here from
  ``settings.store`` is closed at shutdown, even if startup fails after opening it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from alerting import db as alerting_db
from analytics import db as analytics_db
from api import dashboard, errors
from api.routers import (
    agents,
    alerting_incidents,
    alerting_oncall,
    anomalies,
    audit,
    auth,
    dead_letters,
    devices,
    health,
    ingest,
    maint_assets,
    maint_common,
    maint_pm,
    maint_workorders,
    users,
)
from api.security import policy
from api.security import setup as security_setup
from api.security import tables as security_tables
from api.settings import ApiSettings
from ingest.store import Store, open_store
from maintenance import db as maintenance_db
from wire import database

log = logging.getLogger(__name__)

TAGS: list[dict[str, Any]] = [
    {"name": "health", "description": "Whether the API and its store are up."},
    {"name": "auth", "description": "Log in and out (session cookie); who the caller is."},
    {"name": "users", "description": "Users, roles, site scopes and API tokens (administrators)."},
    {"name": "audit", "description": "The security audit log (administrators)."},
    {"name": "devices", "description": "Devices seen on the bus, their presence and their readings."},
    {"name": "agents", "description": "Edge agents and their latest status message."},
    {"name": "dead letters", "description": "Messages that could not be stored, with the reason."},
    {"name": "ingest", "description": "Per-agent ingest accounting: received, stored, gaps, dead letters."},
    {"name": "anomalies", "description": "Equipment anomalies found by analytics, with their history."},
    {"name": "assets", "description": "The asset ledger: sites, locations, equipment, devices, CSV."},
    {"name": "work orders", "description": "Work orders, their lifecycle and audit trail."},
    {"name": "preventive maintenance and inspections", "description": "PM schedules, routes and rounds."},
    {"name": "alerting", "description": "On-call pages: incidents, ack/resolve (API and phone links), "
                                        "who is on call, rotations, policies, routes, silences."},
    {"name": "dashboard", "description": "What the control-room pages fetch: overview, alarm console and its "
                                         "actions, board, fleet, on call, rounds, trends; the live stream."},
]


def open_database(url: str) -> Engine:
    """The relational database's engine, its schema brought up to date.

    Each package that owns tables (maintenance, analytics, alerting) brings its own schema
    up to date here with its own Alembic history (own version table), so packages never
    share migrations."""
    engine = database.create(url)
    maintenance_db.upgrade(engine)  # the asset ledger and work orders
    analytics_db.upgrade(engine)  # anomalies
    alerting_db.upgrade(engine)  # incidents, delivery attempts, silences, on-call overrides
    security_tables.upgrade(engine)  # users, API tokens, sessions, the security audit log
    return engine


def create_app(settings: ApiSettings, store: Store | None = None) -> FastAPI:
    """The API app reading ``store``, or the store of ``settings.store`` opened at startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        engine = await run_in_threadpool(open_database, settings.database_url)
        await run_in_threadpool(security_setup.bootstrap_admin, engine, settings)
        feed = dashboard.start_live(app, settings)  # live dashboard events from the bus
        try:
            if store is not None:
                yield {"store": store, "settings": settings, "engine": engine}
                return
            # Opening may touch disk or the network; keep it off the event loop.
            opened = await run_in_threadpool(open_store, settings.store)
            log.info("api: store opened (%s)", settings.store.influx_url or settings.store.path)
            try:
                yield {"store": opened, "settings": settings, "engine": engine}
            finally:
                await run_in_threadpool(opened.close)
        finally:
            dashboard.stop_live(feed)
            engine.dispose()

    app = FastAPI(
        title="Vigil API",
        version="1",
        summary="Devices, agents, readings and dead letters of the Vigil bus.",
        description=(
            "Times in requests: epoch milliseconds or ISO-8601 with an offset. Times in replies: "
            '`*_ms` epoch milliseconds plus ISO-8601 UTC. Every error is `{"detail": "..."}`: '
            "422 for a bad parameter, 404 for an unknown device or metric, 503 when the store "
            "does not answer."
        ),
        openapi_tags=TAGS,
        lifespan=lifespan,
        # Every route passes the guard: authentication, rate limit, permission, site scope,
        # audit (api.security.policy); public routes are listed there.
        dependencies=[Depends(policy.guard)],
        max_body_size=settings.max_body_bytes,  # larger bodies: 413 before they are read
        # The docs are served by security_setup.install: open in demo mode, behind a login otherwise.
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    errors.install(app)
    security_setup.install(app, settings)
    for security_router in (auth, users, audit):
        app.include_router(security_router.router)
    for module in (health, devices, agents, dead_letters, ingest):
        app.include_router(module.router)
    app.include_router(anomalies.router)
    maint_common.install(app)
    for maint in (maint_assets, maint_workorders, maint_pm):
        app.include_router(maint.router)
    for alerting_router in (alerting_incidents, alerting_oncall):
        app.include_router(alerting_router.router)
    dashboard.install(app)  # pages, their JSON, the live stream, floor plans
    return app
