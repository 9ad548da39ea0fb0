"""Settings of the maintenance role, read once at start with ``MaintenanceSettings.load()``.

Environment variables start with ``VIGIL_MAINTENANCE_`` (nested with ``__``, e.g.
``VIGIL_MAINTENANCE_MQTT__PORT``); the config file's table is ``[maintenance]``.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from wire import MqttSettings, RoleSettings


class MaintenanceSettings(RoleSettings):
    section: ClassVar[str] = "maintenance"
    model_config = SettingsConfigDict(env_prefix="VIGIL_MAINTENANCE_")

    # The relational database, shared with the API: SQLite by default, PostgreSQL in
    # production, e.g. postgresql+psycopg://vigil@127.0.0.1/vigil.
    database_url: str = "sqlite:///var/vigil.db"
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    # A stable id keeps a persistent session: anomaly events published while the consumer
    # is down are delivered when it comes back.
    client_id: str = "vigil-maintenance"
    sites: tuple[str, ...] = ()  # empty: every site
    batch_max_messages: int = Field(200, ge=1, le=10_000)
    batch_max_age_s: float = Field(0.05, gt=0, le=10)
    # How often SLA timers, the closed loop and preventive maintenance are checked.
    sweep_interval_s: float = Field(30.0, gt=0, le=3600)
    # How often the outbox (SLA breaches, work order updates, also those the API wrote) is
    # checked for events to publish; the consumer's own are published after each batch.
    outbox_interval_s: float = Field(1.0, gt=0, le=3600)
    # A resolved order whose anomaly stays cleared this long is verified and closed.
    verify_hold_s: float = Field(3600.0, ge=0, le=90 * 86400)
    # A fault that returns within this many days reopens its closed order instead of a new one.
    reopen_days: float = Field(7.0, ge=0, le=365)
