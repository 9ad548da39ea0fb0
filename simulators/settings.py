"""Settings of the ``vigil sim`` role (env prefix ``VIGIL_SIM_``, TOML table ``[sim]``).

Lists come from the environment as JSON, e.g. ``VIGIL_SIM_KINDS='["pump","door"]'``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from simulators.models import MODELS
from wire import MqttSettings, RoleSettings, check_id
from wire.payloads import MAX_READINGS


class SimSettings(RoleSettings):
    section: ClassVar[str] = "sim"
    model_config = SettingsConfigDict(env_prefix="VIGIL_SIM_")

    mqtt: MqttSettings = MqttSettings()
    seed: int = 1
    devices: int = Field(60, ge=1, le=1_000_000)
    sites: int = Field(2, ge=1, le=10_000)
    # Override the default site names (tower-a, mall-b, ...); must give exactly ``sites``.
    site_ids: tuple[str, ...] | None = None
    agents_per_site: int = Field(5, ge=1, le=10_000)
    interval_s: float = Field(1.0, gt=0, le=86_400)
    kinds: tuple[str, ...] = Field(default=tuple(MODELS), min_length=1)
    duration_s: float = Field(0.0, ge=0)  # 0 = until stopped
    max_readings_per_message: int = Field(500, ge=1, le=MAX_READINGS)
    stop_timeout_s: float = Field(5.0, ge=0, le=300)
    # Simulated time runs this many times faster than the wall clock (60: an hour a minute);
    # readings are stamped, and polls scheduled, in simulated time.
    speed: float = Field(1.0, gt=0, le=100_000)
    # When simulated time starts (ISO-8601 with an offset); unset, now, or, sped up with a
    # duration, early enough that the run ends now (ingest refuses readings from the future).
    start: datetime | None = None
    # Faults: a scenario file (YAML, see simulators.scenario), and/or random ones.
    scenario: Path | None = None
    fault_rate_per_day: float = Field(0.0, ge=0, le=1000)  # per device, simulated days
    fault_seed: int | None = None  # unset: the fleet seed
    fault_horizon_h: float = Field(168.0, gt=0, le=87_600)  # random faults are drawn this far ahead
    # Where the injected faults are written: .json, or .csv for any other suffix.
    ground_truth: Path | None = None
    progress_s: float = Field(10.0, ge=0)  # 0: no progress lines
    tick_s: float = Field(0.02, ge=0, le=1)  # devices due within a tick are read together
    check_readings: bool = True  # False: skip the edge's contract check (load generation)
    max_inflight: int = Field(100, ge=1, le=65_535)
    max_queued_messages: int = Field(10_000, ge=1)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [k for k in v if k not in MODELS]
        if unknown:
            raise ValueError(f"unknown device kinds {unknown}; known: {', '.join(MODELS)}")
        return v

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError(f"start {v.isoformat()} has no UTC offset; add one (e.g. Z)")
        return v

    @field_validator("site_ids")
    @classmethod
    def _valid_site_ids(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            for s in v:
                check_id("site", s)
        return v
