"""Settings of the ingest role (``vigil ingest``), read once at start."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from ingest.store import StoreSettings
from wire import MqttSettings, RoleSettings, check_id


class IngestSettings(RoleSettings):
    section: ClassVar[str] = "ingest"
    model_config = SettingsConfigDict(env_prefix="VIGIL_INGEST_")

    mqtt: MqttSettings = MqttSettings()
    store: StoreSettings = StoreSettings()
    # Stable per worker: a restarted worker reconnects with the same id and gets the
    # messages the broker queued for it (persistent session).
    client_id: str = Field("vigil-ingest-1", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    # Workers in one group split the load ($share); None subscribes plainly (the demo's
    # embedded broker has no shared subscriptions).
    share_group: str | None = Field("ingest", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    # Only these sites' topics (e.g. one worker group per region); empty takes every site.
    sites: tuple[str, ...] = ()
    batch_max_readings: int = Field(5000, ge=1, le=1_000_000)
    # Keep at or below the broker's inflight window for this client (Mosquitto's
    # max_inflight_messages, 20 by default): acks wait for the write, so a larger value
    # only makes every batch wait for max_age_s.
    batch_max_messages: int = Field(20, ge=1, le=100_000)
    batch_max_age_s: float = Field(0.1, gt=0, le=60)
    retry_initial_s: float = Field(0.5, gt=0, le=60)
    retry_max_s: float = Field(30.0, gt=0, le=3600)
    stats_interval_s: float = Field(30.0, ge=0, le=86400)  # 0: never log stats

    @field_validator("sites")
    @classmethod
    def _valid_sites(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for site in v:
            check_id("site", site)  # WireError is a ValueError: pydantic reports it per item
        return v
