"""The control-room dashboard: HTML pages, their JSON, and the live stream fed from the bus.

``install(app)`` adds the pages, the dashboard's API routes, the live stream, floor plans and
the static files; ``start_live`` / ``stop_live`` run the bus subscription for the app's
lifespan (only when ``ApiSettings.mqtt`` is set).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.dashboard.live import BusFeed, Hub
from api.settings import ApiSettings

log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    from api.dashboard import pages, routes
    from api.routers import floorplans, stream

    app.state.hub = Hub()
    app.include_router(pages.router)
    app.include_router(routes.router)
    app.include_router(stream.router)
    app.include_router(floorplans.router)
    app.add_middleware(pages.LoginRedirect)
    app.mount("/static/dashboard", StaticFiles(directory=pages.STATIC_DIR), name="dashboard-static")
    # check_dir=False: without `npm install` the pages still load; the trend chart says what is missing.
    app.mount("/static/vendor", StaticFiles(directory=pages.VENDOR_DIR, check_dir=False), name="vendor")


def start_live(app: FastAPI, settings: ApiSettings) -> BusFeed | None:
    """Start feeding the app's hub from the bus; call on the app's event loop."""
    if settings.mqtt is None:
        log.info("api: no [api.mqtt] broker set; dashboard pages update only on their own actions")
        return None
    feed = BusFeed(settings.mqtt, app.state.hub, asyncio.get_running_loop())
    feed.start()
    return feed


def stop_live(feed: BusFeed | None) -> None:
    if feed is not None:
        feed.stop()
