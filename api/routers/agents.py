"""Agents and their latest status message."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import StoreDep
from api.schemas import BAD_PARAM, AgentList, AgentOut
from api.timerange import iso
from ingest.store import AgentState
from wire import check_id

router = APIRouter(prefix="/api/v1", tags=["agents"])


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


@router.get(
    "/agents", summary="Agents with their latest status", response_model=AgentList, responses=BAD_PARAM
)
def list_agents(
    store: StoreDep,
    site: Annotated[str | None, Query(description="Only agents of this site.")] = None,
) -> AgentList:
    if site is not None:
        check_id("site", site)
    agents = [a for a in store.agents() if site is None or a.site == site]
    agents.sort(key=lambda a: (a.site, a.agent))
    return AgentList(agents=[agent_out(a) for a in agents])
