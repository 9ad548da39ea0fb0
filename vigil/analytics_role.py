"""``vigil analytics``: the analytics worker with the time-series store as its history.

Analytics imports no sibling but ``wire``; its models train on a ``HistorySource``. This
composition root adds the store's settings to the role's (``VIGIL_ANALYTICS_STORE__*``,
the same fields as ingest's ``store``) and passes the opened store in. Without a store the
worker still runs, and its models are trained from the live stream instead.
"""

from __future__ import annotations

import logging
import threading

from analytics.service import run as run_service
from analytics.settings import AnalyticsSettings
from ingest.store import StoreSettings, open_store

log = logging.getLogger("vigil.analytics")


class AnalyticsRoleSettings(AnalyticsSettings):
    # where the models' training history is read from; None: no store, models learn from the stream
    store: StoreSettings | None = None


def run(settings: AnalyticsRoleSettings, stop_event: threading.Event) -> None:
    if settings.store is None:
        log.info("analytics: no store configured (VIGIL_ANALYTICS_STORE__PATH or __INFLUX_URL); "
                 "models are trained from the live stream")
        run_service(settings, stop_event)
        return
    store = open_store(settings.store)
    try:
        run_service(settings, stop_event, history=store)
    finally:
        store.close()
