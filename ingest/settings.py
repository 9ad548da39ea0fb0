"""Settings of the ingest role (``vigil ingest``), read once at start."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from ingest.store import StoreSettings
from wire import MqttSettings, RoleSettings, check_id
from wire.payloads import MAX_PAYLOAD_BYTES


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
    # Tell agents which telemetry messages are durably stored (wire.agent.Ack on
    # vigil/v1/{site}/{agent}/ack), so their outboxes can delete them. Off only for a broker
    # whose ACL forbids ingest to publish there.
    agent_acks: bool = True
    retry_initial_s: float = Field(0.5, gt=0, le=60)
    retry_max_s: float = Field(30.0, gt=0, le=3600)
    stats_interval_s: float = Field(30.0, ge=0, le=86400)  # 0: never log stats
    # -- what is accepted (ingest.validate) --
    max_payload_bytes: int = Field(MAX_PAYLOAD_BYTES, ge=64, le=MAX_PAYLOAD_BYTES)
    # Readings stamped further in the past or future than this (relative to ingest's clock)
    # are dead-lettered as a wrong clock; the rest of their message is stored. 30 days back
    # covers an edge that buffered through a long outage; 1 h ahead, clock skew. None: off.
    ts_max_age_s: float | None = Field(30 * 86400.0, gt=0)
    ts_max_ahead_s: float | None = Field(3600.0, gt=0)
    # -- accounting and alerting (ingest.accounting) --
    # A sequence gap still open after this long is published as an event alerting pages on
    # (wire.ingest_events); shorter gaps are reordering or another worker's share in flight.
    gap_open_after_s: float = Field(60.0, gt=0, le=86400)
    publish_gaps: bool = True
    # How often this worker writes its per-agent accounting to the store, where the API
    # reads it (GET /api/v1/ingest/accounting); /metrics is always current.
    accounting_interval_s: float = Field(10.0, gt=0, le=3600)
    # How often to tell the other workers of the group which sequence numbers arrived here.
    seen_interval_s: float = Field(0.5, gt=0, le=60)
    # While the store refuses the credentials (401/403), repeat the critical log this often.
    auth_alert_interval_s: float = Field(60.0, gt=0, le=86400)
    # /metrics (Prometheus) and /healthz of this worker; None: not served. Off by default
    # because two workers on one host would fight over one port: give each its own.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(None, ge=0, le=65535)

    @field_validator("share_group", mode="before")
    @classmethod
    def _empty_group_is_none(cls, v: object) -> object:
        # VIGIL_INGEST_SHARE_GROUP= (empty) subscribes plainly: an environment cannot say None.
        return None if v == "" else v

    @field_validator("sites")
    @classmethod
    def _valid_sites(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for site in v:
            check_id("site", site)  # WireError is a ValueError: pydantic reports it per item
        return v
