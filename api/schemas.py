"""The JSON shapes the API answers with; they are also what /docs shows.

Times are epoch milliseconds in ``*_ms`` fields (exact, what the edge stamped) and, where a
person reads them, the same instant as ISO-8601 UTC in a sibling field without the suffix.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorBody(_Out):
    detail: str = Field(description="What is wrong and what to do about it, in one or more sentences.")


# For the routes' ``responses=``: FastAPI would otherwise document its own 422 shape,
# which api.errors replaces with ErrorBody.
BAD_PARAM: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "A parameter is invalid; the detail says which."}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown device, or unknown metric of the device."}
}


class Health(_Out):
    status: Literal["ok"]


class Unhealthy(_Out):
    status: Literal["unavailable"]
    detail: str


class AgentOut(_Out):
    site: str
    agent: str
    state: str = Field(description="The agent's latest status: online or offline.")
    boot: int = Field(description="Grows on every agent start, so a restart is visible.")
    ts_ms: int = Field(description="Time of the status message (edge clock).")
    time: str
    reason: str


class DeviceOut(_Out):
    site: str
    device: str
    agent: str = Field(description="The agent the device last reported through.")
    last_seen_ms: int = Field(description="Newest reading's timestamp (edge clock).")
    last_seen: str
    online: bool
    state: Literal["online", "offline", "stale"]
    reason: str


class DeviceDetail(DeviceOut):
    agent_status: AgentOut | None = Field(description="The agent's latest status; null if it sent none.")
    metrics: list[str]


class BucketOut(_Out):
    ts_ms: int = Field(description="Start of the step; steps are aligned to multiples of step_ms.")
    time: str
    mean: float
    min: float
    max: float
    count: int


class SeriesOut(_Out):
    site: str
    device: str
    metric: str
    start_ms: int
    end_ms: int
    start: str
    end: str
    step_ms: int
    step: str
    buckets: list[BucketOut] = Field(description="Only steps with numeric readings, ascending.")


class ReadingOut(_Out):
    ts_ms: int
    value: float | bool | str
    quality: str


class ReadingsOut(_Out):
    site: str
    device: str
    metric: str
    start_ms: int
    end_ms: int
    start: str
    end: str
    limit: int
    truncated: bool = Field(description="True if more readings lie in the range after the last one.")
    next_start_ms: int | None = Field(description="When truncated, pass this as start for the next page.")
    readings: list[ReadingOut]


class DeadLetterOut(_Out):
    received_ms: int
    received: str
    topic: str
    reason: str
    payload: str = Field(
        description="The payload as UTF-8 text; bytes that are not UTF-8 appear as \\xNN escapes."
    )
    payload_bytes: int = Field(description="Size of the whole payload.")
    payload_truncated: bool


class AgentList(_Out):
    agents: list[AgentOut]


class DeviceList(_Out):
    devices: list[DeviceOut]


class DeadLetterList(_Out):
    dead_letters: list[DeadLetterOut] = Field(description="Newest first.")
