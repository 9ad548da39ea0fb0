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

from fastapi import FastAPI
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from alerting import db as alerting_db
from analytics import db as analytics_db
from api import errors
from api.routers import (
    agents,
    alerting_incidents,
    alerting_oncall,
    anomalies,
    dead_letters,
    devices,
    health,
    maint_assets,
    maint_common,
    maint_pm,
    maint_workorders,
)
from api.settings import ApiSettings
from ingest.store import Store, open_store
from maintenance import db as maintenance_db
from wire import database

log = logging.getLogger(__name__)

TAGS: list[dict[str, Any]] = [
    {"name": "health", "description": "Whether the API and its store are up."},
    {"name": "devices", "description": "Devices seen on the bus, their presence and their readings."},
    {"name": "agents", "description": "Edge agents and their latest status message."},
    {"name": "dead letters", "description": "Messages that could not be stored, with the reason."},
    {"name": "anomalies", "description": "Equipment anomalies found by analytics, with their history."},
    {"name": "assets", "description": "The asset ledger: sites, locations, equipment, devices, CSV."},
    {"name": "work orders", "description": "Work orders, their lifecycle and audit trail."},
    {"name": "preventive maintenance and inspections", "description": "PM schedules, routes and rounds."},
    {"name": "alerting", "description": "On-call pages: incidents, ack/resolve (API and phone links), "
                                        "who is on call, rotations, policies, routes, silences."},
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
    return engine


def create_app(settings: ApiSettings, store: Store | None = None) -> FastAPI:
    """The API app reading ``store``, or the store of ``settings.store`` opened at startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        engine = await run_in_threadpool(open_database, settings.database_url)
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
    )
    errors.install(app)
    for module in (health, devices, agents, dead_letters):
        app.include_router(module.router)
    app.include_router(anomalies.router)
    maint_common.install(app)
    for maint in (maint_assets, maint_workorders, maint_pm):
        app.include_router(maint.router)
    for alerting_router in (alerting_incidents, alerting_oncall):
        app.include_router(alerting_router.router)
    return app
