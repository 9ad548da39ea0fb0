"""Settings of the ``vigil edge`` role (env prefix ``VIGIL_EDGE_``, TOML table ``[edge]``).

What the agent polls lives in its own YAML file (``config``, see ``edge.config``); these
are the process's connection, outbox and tuning knobs, read once at start. Broker
credentials and TLS are in ``mqtt`` (``wire.config.MqttSettings``): there are no default
credentials; set ``VIGIL_EDGE_MQTT__USERNAME`` / ``__PASSWORD`` and ``__TLS`` /
``__CA_FILE`` for a broker that asks for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from edge.outbox import OutboxLimits
from wire import MqttSettings, RoleSettings
from wire.payloads import MAX_READINGS


class OutboxSettings(BaseModel):
    """The disk outbox (``edge.outbox``): where, how big, how fast it replays."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # One SQLite file (WAL mode) per agent; unset, next to the agent's config file
    # (edge.yaml -> edge.yaml.outbox). in_memory: nothing survives a restart (tests, demos).
    path: Path | None = None
    in_memory: bool = False
    # Bounds: beyond any of them the oldest messages are dropped, counted and reported.
    max_messages: int = Field(2_000_000, ge=1)
    max_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    max_age_s: float = Field(7 * 86_400.0, gt=0)
    # A message sent and not acknowledged by ingest within this is sent again.
    resend_after_s: float = Field(30.0, gt=0)
    # Replayed (historical) messages awaiting ingest's ack at most; per scheduler tick at most.
    replay_window: int = Field(5_000, ge=1)
    replay_batch: int = Field(1_000, ge=1)
    # "normal": a commit survives a crash of the agent (kill -9); "full": also a power cut,
    # at the cost of an fsync per poll round.
    synchronous: Literal["normal", "full"] = "normal"

    def file(self, config: Path) -> Path | None:
        """Where the outbox of the agent configured by ``config`` lives; None: in memory."""
        if self.in_memory:
            return None
        return self.path if self.path is not None else config.with_name(config.name + ".outbox")

    def limits(self) -> OutboxLimits:
        return OutboxLimits(
            max_messages=self.max_messages, max_bytes=self.max_bytes, max_age_s=self.max_age_s,
            resend_after_s=self.resend_after_s, replay_window=self.replay_window,
            replay_batch=self.replay_batch,
        )


class EdgeSettings(RoleSettings):
    section: ClassVar[str] = "edge"
    model_config = SettingsConfigDict(env_prefix="VIGIL_EDGE_")

    mqtt: MqttSettings = MqttSettings()
    config: Path = Path("edge.yaml")
    outbox: OutboxSettings = OutboxSettings()
    # The MQTT client id; unset, vigil-edge-<site>-<agent>.
    client_id: str | None = Field(None, min_length=1, max_length=128)
    # A device with more points than this is split over several messages; wire caps a
    # message at MAX_READINGS, and smaller messages keep one slow PUBACK from holding much.
    max_readings_per_message: int = Field(500, ge=1, le=MAX_READINGS)
    # Messages paho keeps in memory for a slow broker; beyond it a message waits in the
    # outbox and is replayed later.
    max_queued_messages: int = Field(20_000, ge=1)
    max_inflight: int = Field(100, ge=1, le=65_535)
    # Retained health report (wire.agent.AgentHealth) every this many seconds; 0: off.
    health_interval_s: float = Field(10.0, ge=0)
    # The longest one call of a (non-simulated) driver may take before its poll fails; a
    # driver that hangs then fails fast until it returns, and other devices keep their polls.
    driver_timeout_s: float = Field(5.0, gt=0, le=300)
    # An extra boot counter file; the outbox keeps the boot epoch anyway.
    boot_file: Path | None = None
    # How long stop() waits for the broker to acknowledge what is still in flight.
    stop_timeout_s: float = Field(5.0, ge=0, le=300)
