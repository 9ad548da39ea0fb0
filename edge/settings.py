"""Settings of the ``vigil edge`` role (env prefix ``VIGIL_EDGE_``, TOML table ``[edge]``).

What the agent polls lives in its own YAML file (``config``, see ``edge.config``); these
are the process's connection and tuning knobs, read once at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from wire import MqttSettings, RoleSettings
from wire.payloads import MAX_READINGS


class EdgeSettings(RoleSettings):
    section: ClassVar[str] = "edge"
    model_config = SettingsConfigDict(env_prefix="VIGIL_EDGE_")

    mqtt: MqttSettings = MqttSettings()
    config: Path = Path("edge.yaml")
    # A device with more points than this is split over several messages; wire caps a
    # message at MAX_READINGS, and smaller messages keep one slow PUBACK from holding much.
    max_readings_per_message: int = Field(500, ge=1, le=MAX_READINGS)
    # Messages paho keeps in memory while the broker is away; beyond it new ones are
    # dropped and counted. The disk buffer (store-and-forward) will replace this bound.
    max_queued_messages: int = Field(10_000, ge=1)
    max_inflight: int = Field(100, ge=1, le=65_535)
    # Where the boot counter is kept; unset, the boot number is the start time in ms.
    boot_file: Path | None = None
    # How long stop() waits for the broker to acknowledge what is still in flight.
    stop_timeout_s: float = Field(5.0, ge=0, le=300)
