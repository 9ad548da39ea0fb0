"""Agents: their latest status message and their latest health report (wire.agent.AgentHealth).

The health report is what an agent says about itself (outbox depth, the age of its oldest
unacknowledged message, drops, per-device state); ingest stores the latest one per agent.
An agent that never sent one (older agents) has no ``health`` key; an agent that sent a
health report but no status yet is listed with state ``unknown``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.auth import PrincipalDep
from api.deps import StoreDep
from api.schemas import BAD_PARAM, AgentList, AgentOut
from api.timerange import iso
from ingest.store import AgentState
from wire import check_id
from wire.agent import AgentHealth

router = APIRouter(prefix="/api/v1", tags=["agents"])


class DeviceHealthOut(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    state: Literal["online", "offline"] = Field(description="offline: the device's last poll failed.")
    since_ms: int = Field(description="When it entered this state (edge clock).")
    poll_errors: int = Field(description="Failed polls since the agent started.")
    reason: str = Field(description="The last error, for an offline device.")


class AgentHealthOut(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    ts_ms: int = Field(description="When the agent sent this report (edge clock).")
    time: str
    boot: int
    outbox_depth: int = Field(description="Telemetry messages held, not yet acknowledged by ingest.")
    outbox_bytes: int
    oldest_unacked_age_s: float = Field(description="Age of the oldest unacknowledged message; 0 when empty.")
    dropped: int = Field(description="Messages dropped by the outbox bound since the agent started.")
    poll_errors: int
    publish_p99_s: float = Field(description="Queue-to-ack latency, p99 over the last interval.")
    version: str
    devices: dict[str, DeviceHealthOut]


class AgentWithHealth(AgentOut):
    health: AgentHealthOut | None = Field(None, description="The latest health report; absent if none.")


class AgentHealthList(AgentList):
    agents: list[AgentWithHealth]  # type: ignore[assignment]


def health_out(h: AgentHealth) -> AgentHealthOut:
    return AgentHealthOut(
        ts_ms=h.ts_ms, time=iso(h.ts_ms), boot=h.boot, outbox_depth=h.outbox_depth,
        outbox_bytes=h.outbox_bytes, oldest_unacked_age_s=h.oldest_unacked_age_s, dropped=h.dropped,
        poll_errors=h.poll_errors, publish_p99_s=h.publish_p99_s, version=h.version,
        devices={d: DeviceHealthOut(state=v.state, since_ms=v.since_ms, poll_errors=v.poll_errors,
                                    reason=v.reason) for d, v in sorted(h.devices.items())},
    )


def agent_out(a: AgentState) -> AgentOut:
    return AgentOut(
        site=a.site,
        agent=a.agent,
        state=a.state,
        boot=a.boot,
        ts_ms=a.ts_ms,
        time=iso(a.ts_ms),
        reason=a.reason,
    )


def agent_with_health(a: AgentState, health: AgentHealth | None) -> AgentWithHealth:
    return AgentWithHealth(**agent_out(a).model_dump(),
                           health=health_out(health) if health is not None else None)


@router.get(
    "/agents", summary="Agents with their latest status and health", response_model=AgentHealthList,
    responses=BAD_PARAM,
    # Agents without a health report (older agents) keep the reply's earlier shape: no key.
    response_model_exclude_none=True,
)
def list_agents(
    store: StoreDep,
    caller: PrincipalDep,
    site: Annotated[str | None, Query(description="Only agents of this site.")] = None,
) -> AgentHealthList:
    if site is not None:
        check_id("site", site)
    def wanted(s: str) -> bool:
        return (site is None or s == site) and caller.sees(s)  # other sites are left out, not refused

    health = {(r.site, r.agent): r.health for r in store.agent_health() if wanted(r.site)}
    agents = {(a.site, a.agent): a for a in store.agents() if wanted(a.site)}
    for key, h in health.items():
        if key not in agents:  # a health report but no status yet
            agents[key] = AgentState(site=key[0], agent=key[1], state="unknown", ts_ms=h.ts_ms, boot=h.boot,
                                     reason="no status message stored yet")
    return AgentHealthList(agents=[agent_with_health(a, health.get(k)) for k, a in sorted(agents.items())])
