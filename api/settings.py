"""Settings of the API role, read once at start with ``ApiSettings.load()`` and passed down.

Environment variables start with ``VIGIL_API_`` (nested values with ``__``, e.g.
``VIGIL_API_STORE__INFLUX_URL``); the config file's table is ``[api]`` (``[api.store]``).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ingest.store import StoreSettings
from wire import RoleSettings


class ApiSettings(RoleSettings):
    """Where the API listens, which store it reads, and the limits that keep one request cheap."""

    section: ClassVar[str] = "api"
    model_config = SettingsConfigDict(env_prefix="VIGIL_API_")

    host: str = "127.0.0.1"
    # 0 asks the OS for a free port; the port actually bound is logged at start.
    port: int = Field(8000, ge=0, le=65535)
    store: StoreSettings = Field(default_factory=StoreSettings)
    # The relational database (assets, work orders, anomalies, alerts): SQLite by default,
    # PostgreSQL in production, e.g. postgresql+psycopg://vigil@127.0.0.1/vigil.
    database_url: str = "sqlite:///var/vigil.db"
    # A device whose newest reading is older than this is shown "stale" even when its
    # agent says it is online: the agent is up but the device (or its driver) is silent.
    offline_after_s: float = Field(120.0, gt=0, le=30 * 86400)
    # A series request may ask for at most this many buckets; past it the reply is a 422
    # that suggests a step, not a slow query and a huge response.
    max_series_buckets: int = Field(10_000, ge=1, le=1_000_000)
    # With no step given, the step is chosen so the range gives at most about this many.
    target_series_buckets: int = Field(500, ge=1, le=100_000)
    max_readings: int = Field(100_000, ge=1, le=10_000_000)
    max_dead_letters: int = Field(1_000, ge=1, le=100_000)
    # Dead-letter payloads are shown up to this many bytes; the rest is cut and flagged.
    dead_letter_payload_bytes: int = Field(4_096, ge=16, le=1 << 20)
    access_log: bool = False
