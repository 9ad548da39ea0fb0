"""Time-series stores behind one interface: InfluxDB when configured, else the embedded file."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ingest.store.base import (
    AgentHealthRecord,
    AgentState,
    AgentTally,
    Bucket,
    DeadLetter,
    DeviceSeen,
    RawReading,
    Store,
    StoreError,
)


class StoreSettings(BaseModel):
    """Which store to use. With ``influx_url`` unset, the embedded file at ``path`` is used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Path("var/vigil-ts.db")
    influx_url: str | None = None  # e.g. http://127.0.0.1:8086
    influx_bucket: str = "vigil"  # the database on InfluxDB 1.x
    influx_org: str = "-"
    influx_token: SecretStr | None = None
    timeout_s: float = Field(10.0, gt=0, le=300)


def open_store(settings: StoreSettings) -> Store:
    """Open the configured store; raise StoreError if it cannot be opened."""
    if settings.influx_url:
        from ingest.store.influx import InfluxStore

        return InfluxStore(settings)
    from ingest.store.embedded import EmbeddedStore

    return EmbeddedStore(settings.path)


__all__ = [
    "AgentHealthRecord",
    "AgentState",
    "AgentTally",
    "Bucket",
    "DeadLetter",
    "DeviceSeen",
    "RawReading",
    "Store",
    "StoreError",
    "StoreSettings",
    "open_store",
]
